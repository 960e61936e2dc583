import ChildProcess
import Foundation
import XCTest

/// The servers (`relay`, `dht-server`, `perf-server`) and the chat run their
/// host and services in a `ServiceGroup`: SIGINT or SIGTERM shuts them down
/// gracefully (each service stopped, the host closed) and the process exits
/// 0, not killed by the signal.
final class ServerShutdownTests: XCTestCase {
    func shutsDownCleanly(_ arguments: [String], signal: Int32, listening: @escaping (String) -> Bool) async throws {
        let server = try ChatProcess(namespace: nil, arguments: arguments, network: nil)
        try await server.waitFor("\(arguments[0]) listening", within: 30, listening)
        server.process.send(signal: signal)
        let status = try await server.waitForExit(within: 15)
        XCTAssertEqual(server.process.termination, .exited(0), "\(arguments[0]): \(server.process.stderrText)")
        XCTAssertEqual(status, 0)
        XCTAssertFalse(server.process.stderrText.contains("error:"), server.process.stderrText)
    }

    func testRelayShutsDownOnSIGTERM() async throws {
        try await shutsDownCleanly(
            ["relay", "--json", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0"], signal: SIGTERM
        ) { $0.contains("\"event\":\"listening\"") }
    }

    func testDHTServerShutsDownOnSIGINT() async throws {
        try await shutsDownCleanly(
            ["dht-server", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0"], signal: SIGINT
        ) { $0.hasPrefix("Listening on /ip4/127.0.0.1") }
    }

    func testPerfServerShutsDownOnSIGTERM() async throws {
        try await shutsDownCleanly(["perf-server", "--listen", "/ip4/127.0.0.1/tcp/0"], signal: SIGTERM) {
            $0.hasPrefix("Listening on ")
        }
    }

    /// The chat with its input still open (the end of input and SIGTERM are
    /// `ChatCLITests.testJSONEventsAndCleanExits`'s).
    func testChatShutsDownOnSIGINT() async throws {
        try await shutsDownCleanly(["chat", "--no-mdns", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0"], signal: SIGINT) {
            $0.hasPrefix("Listening on /ip4/127.0.0.1")
        }
    }
}
