import ChildProcess
import Foundation
import XCTest

/// Issue 22's first run, as the README has a user do it: chats on one machine
/// (loopback, no mDNS) sharing one HOME.
final class FirstRunCLITests: XCTestCase {
    private var home: URL!

    override func setUpWithError() throws {
        home = FileManager.default.temporaryDirectory.appendingPathComponent("p2pchat-home-\(UUID())")
        try FileManager.default.createDirectory(at: home, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: home)
    }

    /// A chat with HOME set to this test's directory (so its default identity file is there).
    private func chat(_ arguments: [String]) throws -> ChatProcess {
        try ChatProcess(
            namespace: nil, executable: "/usr/bin/env",
            arguments: ["HOME=\(home.path)", "XDG_CONFIG_HOME=", ChatProcess.binary, "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"]
                + arguments,
            network: nil)
    }

    /// Two chats started one after the other with the same default identity
    /// file: the second runs with a temporary identity and says why on its
    /// first line (human and JSON); they meet; once the first is gone, the
    /// file's identity is free again.
    func testSecondChatOnTheSameIdentityFileUsesATemporaryOne() async throws {
        let keyPath = home.appendingPathComponent(".config/p2pchat/identity.key").path
        let first = try chat([])
        let firstID = try await first.waitFor("the first chat's id", within: 20) { $0.hasPrefix("Local peer id: ") }
            .dropFirst("Local peer id: ".count)
        let listening = try await first.waitFor("the first chat's address", within: 20) { $0.hasPrefix("Listening on ") }
        XCTAssertEqual(first.output.first, "Local peer id: \(firstID)", "the file's owner says nothing about it")

        let second = try chat(["--connect", "\(listening.dropFirst("Listening on ".count))/p2p/\(firstID)"])
        try await second.waitFor("the second chat's id", within: 20) { $0.hasPrefix("Local peer id: ") }
        let pid = first.process.pid
        XCTAssertEqual(
            second.output.first,
            "identity file \(keyPath) is in use by another p2pchat (pid \(pid)); "
                + "using a temporary identity for this run (--identity PATH picks another)")
        let secondID = try XCTUnwrap(second.peerID)
        XCTAssertNotEqual(secondID, String(firstID))
        try await second.waitFor("the chats met", within: 20) { $0.hasPrefix("Connected: \(firstID)") }
        try await first.waitFor("the chats met", within: 20) { $0.hasPrefix("Connected: \(secondID)") }

        let third = try chat(["--json"])
        try await third.waitFor("the third chat's id", within: 20) { $0.contains("\"event\":\"local_peer\"") }
        let notice = try XCTUnwrap(third.output.first.flatMap(ChatProcess.event(in:)), "\(third.output)")
        XCTAssertEqual(notice["event"], "identity_in_use")
        XCTAssertEqual(notice["path"], keyPath)
        XCTAssertEqual(notice["pid"], "\(pid)")
        XCTAssertEqual(notice["message"], second.output.first)

        for process in [first, second, third] { process.closeInput() }
        for process in [first, second, third] {
            let status = try await process.waitForExit(within: 15)
            XCTAssertEqual(status, 0)
        }
        let again = try chat([])
        try await again.waitFor("the next chat's id", within: 20) { $0.hasPrefix("Local peer id: ") }
        XCTAssertEqual(again.peerID, String(firstID), "the file is free once its chat has ended")
        again.closeInput()
        _ = try await again.waitForExit(within: 15)
    }

    /// Issue 22: dial errors read "connection reset (error set): Connection
    /// refused) (errno: 111)". One line: what failed, where, and why.
    func testDialErrorsAreOneReadableLine() async throws {
        let target = "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        let ping = try ChatProcess(namespace: nil, arguments: ["ping", target, "--timeout", "10"], network: nil)
        let status = try await ping.waitForExit(within: 20)
        XCTAssertEqual(status, 1)
        let log = try await MetricsCLITests.stderr(of: ping.process, containing: "\n")
        XCTAssertEqual(log, "error: dial \(target): connection refused\n")

        let chat = try chat(["--ephemeral", "--json", "--connect", target])
        let line = try await chat.waitFor("the failed dial", within: 20) { $0.contains("\"event\":\"error\"") }
        XCTAssertEqual(ChatProcess.event(in: line)?["message"], "dial \(target): connection refused; retrying in 1 s")
        chat.closeInput()
        _ = try await chat.waitForExit(within: 15)
    }

    /// Issue 22: a chat dialled what the DHT said of its own peer id and
    /// printed "expected peer B but the remote is A" every 30 s. Two chats
    /// run with copies of one key file (so one peer id) and a DHT bootstrap
    /// node on loopback: neither dials its own id, and a chat that finds its
    /// id at an address not its own says so once, in one line.
    func testAChatSeeingItsOwnPeerIDElsewhereSaysSoOnce() async throws {
        let (server, bootstrap) = try await ChatProcess.dhtServerOnLoopback()
        defer { server.process.stop() }
        let common = ["--json", "--bootstrap", bootstrap]
        // Rounds of different lengths drift apart: one's record is at the bootstrap node when the other looks.
        let first = try chat(common + ["--dht-interval", "1"])
        try await first.waitFor("the first chat", within: 20) { $0.contains("\"event\":\"listening\"") }
        let copy = home.appendingPathComponent("copy.key").path
        try FileManager.default.copyItem(atPath: home.appendingPathComponent(".config/p2pchat/identity.key").path, toPath: copy)
        let second = try chat(common + ["--dht-interval", "0.7", "--identity", copy])
        try await second.waitFor("the second chat", within: 20) { $0.contains("\"event\":\"listening\"") }
        let id = try XCTUnwrap(first.events.first { $0["event"] == "local_peer" }?["peer"])
        XCTAssertEqual(second.events.first { $0["event"] == "local_peer" }?["peer"], id, "one identity in two processes")

        // Each provides the topic every round; the bootstrap node keeps the latest record of the id.
        let deadline = Date().addingTimeInterval(30)
        func sightings(_ chat: ChatProcess) -> [[String: String]] { chat.events.filter { $0["event"] == "identity_elsewhere" } }
        while sightings(first).isEmpty && sightings(second).isEmpty && Date() < deadline {
            try await Task.sleep(for: .milliseconds(100))
        }
        // A few more rounds: still one line at most per chat.
        try await Task.sleep(for: .seconds(3))
        for (chat, other) in [(first, second), (second, first)] {
            let seen = sightings(chat)
            XCTAssertLessThanOrEqual(seen.count, 1, "\(seen)")
            if let line = seen.first {
                XCTAssertEqual(line["peer"], id)
                XCTAssertEqual(line["via"], "a DHT provider record")
                let otherPort = try XCTUnwrap(other.events.first { $0["event"] == "listening" }?["addr"]?.split(separator: "/").last)
                XCTAssertTrue(line["addrs"]?.hasSuffix("/tcp/\(otherPort)") ?? false, "\(line)")
            }
            let errors = chat.events.filter { $0["event"] == "error" }.compactMap { $0["message"] }
            XCTAssertFalse(errors.contains { $0.contains("expected peer") || $0.contains(id) }, "\(errors)")
        }
        XCTAssertFalse(
            sightings(first).isEmpty && sightings(second).isEmpty,
            "neither chat said it saw its id elsewhere:\n\(first.output.joined(separator: "\n"))\n\(second.output.joined(separator: "\n"))")
        for chat in [first, second] { chat.closeInput() }
        for chat in [first, second] { _ = try await chat.waitForExit(within: 15) }
    }

    /// Issue 22: on a LAN without internet `/status` said `Reachability:
    /// public`. Two chats on loopback dial each other back at 127.0.0.1:
    /// reachable on the local network only, in the event and in /status.
    func testChatsReachedOnLoopbackSayLocal() async throws {
        let first = try chat(["--ephemeral"])
        let id = try await first.waitFor("the first chat's id", within: 20) { $0.hasPrefix("Local peer id: ") }
            .dropFirst("Local peer id: ".count)
        let listening = try await first.waitFor("the first chat's address", within: 20) { $0.hasPrefix("Listening on ") }
        let second = try chat(["--ephemeral", "--connect", "\(listening.dropFirst("Listening on ".count))/p2p/\(id)"])
        // Each asks the other (AutoNAT client and server), which dials it back on loopback.
        for chat in [first, second] {
            try await chat.waitFor("the reachability event", within: 30) { $0.hasPrefix("Reachability: ") }
            XCTAssertEqual(
                chat.output.filter { $0.hasPrefix("Reachability: ") }, ["Reachability: local (reachable on the local network only)"])
        }
        first.send("/status")
        try await first.waitFor("/status", within: 20) {
            $0 == "Reachability: local (reachable on the local network only; DHT: off)"
        }
        for chat in [first, second] { chat.closeInput() }
        for chat in [first, second] { _ = try await chat.waitForExit(within: 15) }
    }
}
