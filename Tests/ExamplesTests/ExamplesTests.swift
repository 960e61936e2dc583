import ChildProcess
import Foundation
import Host
import Multiformats
import NIOPosix
import PubSub
import TestSupport
import XCTest

/// The programs in Examples/ run as a user would run them, on loopback, and exchange data.
final class ExamplesTests: XCTestCase {
    static func binary(_ name: String) -> String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent(name).path
    }

    /// Waits until the process prints a line that satisfies `predicate`; returns it.
    func waitForLine(_ process: ChildProcess, _ what: String, within seconds: Double, _ predicate: (String) -> Bool)
        async throws -> String
    {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let line = process.outputLines.first(where: predicate) { return line }
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTFail("timed out waiting for \(what); output:\n\(process.outputLines.joined(separator: "\n"))\n\(process.stderrText)")
        throw CancellationError()
    }

    /// echo-example serves /echo/1.0.0; a second echo-example dials it and gets its text back.
    func testEchoExample() async throws {
        let server = try ChildProcess(Self.binary("echo-example"), [], stdinPipe: true)
        defer { server.stop() }
        let listening = try await waitForLine(server, "listening", within: 20) { $0.hasPrefix("Listening on ") }
        let address = String(listening.dropFirst("Listening on ".count))
        let text = "hello echo \(UUID())"
        let client = try ChildProcess(Self.binary("echo-example"), [address, text])
        defer { client.stop() }
        let status = try await client.waitForExit(within: 30)
        XCTAssertEqual(status, 0, client.stderrText)
        XCTAssertEqual(client.outputLines, ["echo: \(text)"])
        server.closeInput()
        let serverStatus = try await server.waitForExit(within: 10)
        XCTAssertEqual(serverStatus, 0)
    }

    /// pubsub-example subscribes to a topic; a node of the test publishes there once
    /// the example is on the topic, and the example prints the message with its author.
    func testPubSubExample() async throws {
        let subscriber = try ChildProcess(Self.binary("pubsub-example"), ["news"])
        defer { subscriber.stop() }
        let listening = try await waitForLine(subscriber, "listening", within: 20) { $0.hasPrefix("Listening on ") }
        let address = try Multiaddr(String(listening.dropFirst("Listening on ".count)))
        let subscriberPeer = try XCTUnwrap(address.peerID)
        let (host, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        let pubsub = try PubSubService(host: host)
        pubsub.start()
        _ = try await host.connect(address)
        let subscribed = try await withDeadline(10) { await pubsub.waitUntilSubscribed(subscriberPeer, to: "news") }
        XCTAssertTrue(subscribed)
        let text = "headline \(UUID())"
        let reached = try await pubsub.publish("news", data: Array(text.utf8))
        XCTAssertEqual(reached, 1)
        _ = try await waitForLine(subscriber, "the message", within: 10) { $0 == "\(host.localPeer): \(text)" }
        await pubsub.stop()
        await host.close()
    }
}
