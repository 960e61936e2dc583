import ChildProcess
import Foundation
import XCTest

/// The binary to hand a friend (scripts/static-binary, issue 27 part 3). The
/// static release build takes half an hour here, so the suite does not make it:
/// it checks the script (its syntax, and that its ldd check refuses a binary
/// linked against the Swift runtime and accepts one that is not), and, when
/// P2PCHAT_STATIC_BINARY names a built static p2pchat, that this binary needs
/// no Swift library and two of it meet in network namespaces and chat.
final class StaticBinaryTests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let script = repository.appendingPathComponent("scripts/static-binary").path

    /// Runs the script with `arguments`; its exit status, stdout and stderr.
    func runScript(_ arguments: [String]) async throws -> (status: Int32, output: String, errors: String) {
        let process = try ChildProcess("/bin/bash", [Self.script] + arguments)
        defer { process.stop() }
        let status = try await process.waitForExit(within: 60)
        // The readers may still hold the last bytes for a moment after the exit.
        let expected = status == 0 ? "ldd: " : "FAIL: "
        let deadline = Date().addingTimeInterval(5)
        while !(process.outputLines.joined() + process.stderrText).contains(expected) && Date() < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        return (status, process.outputLines.joined(separator: "\n"), process.stderrText)
    }

    func testScriptIsValidBash() throws {
        let result = try ChildProcess.run("/bin/bash", ["-n", Self.script])
        XCTAssertEqual(result.status, 0, "bash -n \(Self.script) found a syntax error")
    }

    /// The debug p2pchat the suite runs is linked against libswiftCore and
    /// Foundation: the check must refuse it and name what it needs.
    func testLddCheckRefusesABinaryLinkedAgainstTheSwiftRuntime() async throws {
        let result = try await runScript(["--check-ldd", ChatProcess.binary])
        XCTAssertEqual(result.status, 1, result.output + result.errors)
        XCTAssertTrue(
            result.errors.contains("\(ChatProcess.binary) is linked against the Swift runtime's shared libraries"),
            result.errors)
        XCTAssertTrue(result.errors.contains("libswiftCore.so"), result.errors)
        XCTAssertTrue(result.errors.contains("libFoundation"), result.errors)
        XCTAssertTrue(result.errors.contains("build it with --static-swift-stdlib"), result.errors)
    }

    /// A program without Swift (the shell) passes the same check.
    func testLddCheckAcceptsABinaryWithoutSwift() async throws {
        let result = try await runScript(["--check-ldd", "/bin/sh"])
        XCTAssertEqual(result.status, 0, result.output + result.errors)
        XCTAssertTrue(result.output.contains("/bin/sh needs no Swift library"), result.output)
    }

    /// P2PCHAT_STATIC_BINARY (scripts/static-binary leaves one at
    /// .build-static/p2pchat-stripped): it needs no Swift library, and two of it
    /// in network namespaces find each other with mDNS and exchange a line.
    func testStaticBinaryChatsInNamespaces() async throws {
        guard let binary = ProcessInfo.processInfo.environment["P2PCHAT_STATIC_BINARY"] else {
            throw XCTSkip(
                "SKIPPED: set P2PCHAT_STATIC_BINARY to a p2pchat built by scripts/static-binary (the suite does not build it)")
        }
        let check = try await runScript(["--check-ldd", binary])
        XCTAssertEqual(check.status, 0, check.output + check.errors)
        let network = try TestNetwork()
        defer { network.tearDown() }
        var chats: [ChatProcess] = []
        for index in 1...2 {
            let namespace = try network.addHost(index)
            let chat = try ChatProcess(
                namespace: namespace, executable: binary,
                arguments: ["--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/0", "--mdns-interval", "1"], network: network)
            try await chat.waitFor("startup", within: 20) { $0.hasPrefix("Listening on /ip4/192.0.2.\(index)/tcp/") }
            chats.append(chat)
        }
        let (a, b) = (chats[0], chats[1])
        let bID = try XCTUnwrap(b.peerID)
        try await a.waitFor("the connection to b", within: 20) { $0.hasPrefix("Connected: \(bID)") }
        // Until b has a's subscription a line may go nowhere: type one each 200 ms.
        let deadline = Date().addingTimeInterval(20)
        while !a.output.contains(where: { $0.hasSuffix(": hello from the static binary") }) && Date() < deadline {
            b.send("hello from the static binary")
            try await Task.sleep(for: .milliseconds(200))
        }
        try await a.waitFor("b's line", within: 1) {
            $0.contains(bID) && $0.hasSuffix(": hello from the static binary")
        }
        a.closeInput()
        b.closeInput()
        let aStatus = try await a.waitForExit(within: 10)
        let bStatus = try await b.waitForExit(within: 10)
        XCTAssertEqual([aStatus, bStatus], [0, 0])
    }
}
