import ChildProcess
import Foundation
import XCTest

/// The testbed's helpers; each subclass is one test class (one process in `./scripts/test`).
class NATTestbedCase: XCTestCase {
    var testbed: NATTestbed!

    override func setUpWithError() throws {
        testbed = try NATTestbed()
    }

    override func tearDown() {
        testbed?.tearDown()
    }

    /// Waits for a JSON event of `name` whose fields satisfy `predicate`.
    @discardableResult
    func event(
        _ process: ChatProcess, _ name: String, within seconds: Double,
        where predicate: @escaping ([String: String]) -> Bool = { _ in true }
    ) async throws -> [String: String] {
        let line = try await process.waitFor("\(name) event", within: seconds) { line in
            guard let object = ChatProcess.event(in: line) else { return false }
            return object["event"] == name && predicate(object)
        }
        return ChatProcess.event(in: line) ?? [:]
    }

    func startRelay(_ extra: [String] = []) async throws -> (ChatProcess, String) {
        let relay = try testbed.start(
            "relay",
            ["relay", "--json", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/4001", "--autonat-dial-timeout", "2"] + extra)
        let listening = try await event(relay, "listening", within: 20) { $0["addr"]?.contains(NATTestbed.relayIP) ?? false }
        return (relay, try XCTUnwrap(listening["addr"]))
    }

    /// The relay, listening on TCP and QUIC at port 4001; its QUIC address.
    func startQUICRelay() async throws -> (ChatProcess, String) {
        let relay = try testbed.start(
            "relay",
            [
                "relay", "--json", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/4001", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1",
                "--autonat-dial-timeout", "2",
            ])
        let listening = try await event(relay, "listening", within: 20) {
            ($0["addr"]?.contains(NATTestbed.relayIP) ?? false) && ($0["addr"]?.contains("/quic-v1") ?? false)
        }
        return (relay, try XCTUnwrap(listening["addr"]))
    }

    func startHome(_ index: Int, relay: String, extra: [String] = []) throws -> ChatProcess {
        try testbed.start(
            "home\(index)",
            ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/4001", "--relay", relay] + extra)
    }

    /// Sends `text` from one chat until the other prints it (the first lines
    /// may precede the mesh), within 20 s.
    /// Each of the two sends `rounds` lines ("<prefix> from home1 #1"...),
    /// and each receives every line of the other's, in order, none lost.
    func exchangeLines(_ prefix: String, rounds: Int, _ home1: ChatProcess, _ home2: ChatProcess) async throws {
        let lead = prefix.isEmpty ? "" : prefix + " "
        for round in 1...rounds {
            home1.send("\(lead)from home1 #\(round)")
            home2.send("\(lead)from home2 #\(round)")
        }
        for round in 1...rounds {
            try await event(home2, "message", within: 20) { $0["text"] == "\(lead)from home1 #\(round)" }
            try await event(home1, "message", within: 20) { $0["text"] == "\(lead)from home2 #\(round)" }
        }
    }

    func sendUntilReceived(_ text: String, from sender: ChatProcess, to receiver: ChatProcess) async throws {
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            sender.send(text)
            for _ in 0..<25 {
                if receiver.events.contains(where: { $0["event"] == "message" && $0["text"] == text }) { return }
                try await Task.sleep(for: .milliseconds(20))
            }
        }
        XCTFail("\(text) never arrived")
        throw CancellationError()
    }

    func peerID(_ process: ChatProcess) async throws -> String {
        let local = try await event(process, "local_peer", within: 20)
        return try XCTUnwrap(local["peer"])
    }

    /// A chat in home `index` that knows only the relay, as `--bootstrap` (the
    /// README's command); with `quic`, listening on QUIC at the same port too,
    /// as a chat does by default.
    func startBootstrapHome(_ index: Int, relay relayAddress: String, port: Int = 4001, quic: Bool = false) throws -> ChatProcess {
        let listen = ["--listen", "/ip4/0.0.0.0/tcp/\(port)"] + (quic ? ["--listen", "/ip4/0.0.0.0/udp/\(port)/quic-v1"] : [])
        return try testbed.start(
            "home\(index)", ["lobby", "--json", "--ephemeral", "--no-mdns"] + listen + ["--bootstrap", relayAddress])
    }

    /// home2 accepts the relayed connection and starts DCUtR ("B"), home1
    /// dialled through the relay ("A"), each playing `--dcutr-roles`, both
    /// listening at `listen` (`/tcp/<port>`, or `/udp/<port>/quic-v1` with the
    /// relay on QUIC); the hole punch's outcome as home2 reports it.
    func holePunch(home1Roles: String, home2Roles: String, listen: String) async throws -> [String: String] {
        let (relay, relayAddress) = listen.hasSuffix("/quic-v1") ? try await startQUICRelay() : try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let common = ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0\(listen)", "--relay", relayAddress]
        let home2 = try testbed.start("home2", common + ["--dcutr-roles", home2Roles])
        let id2 = try await peerID(home2)
        try await event(home2, "listening", within: 30) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        let home1 = try testbed.start(
            "home1", common + ["--dcutr-roles", home1Roles, "--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        let id1 = try await peerID(home1)
        let outcome = try await event(home2, "connection_upgraded", within: 60) { $0["peer"] == id1 }
        XCTAssertEqual(outcome["method"], "hole punch")
        XCTAssertEqual(outcome["addr"], "/ip4/203.0.113.1\(listen)")
        try await sendUntilReceived("after the punch", from: home1, to: home2)
        home1.closeInput()
        home2.closeInput()
        return outcome
    }

    /// The first event of `name` printed by any of `processes`.
    func firstEvent(_ processes: [ChatProcess], _ name: String, within seconds: Double) async throws -> [String: String] {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            for process in processes {
                if let found = process.events.first(where: { $0["event"] == name }) { return found }
            }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTFail(
            "no \(name) event within \(seconds) s; output: \(processes.map { $0.output.suffix(20).joined(separator: "\n") }); stderr: \(processes.map { String($0.process.stderrText.suffix(2000)) })")
        throw CancellationError()
    }
}
