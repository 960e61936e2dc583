import ChildProcess
import Foundation
import XCTest

/// A lab network with real NAT, made of network namespaces (root and nft needed):
///
///     relay 203.0.113.10 ─┐
///                         ├─ public segment 203.0.113.0/24 (a bridge)
///     router1 203.0.113.1 ┤   router2 203.0.113.2
///       │ NAT (masquerade; new inbound connections dropped, as most home
///       │ routers do, or refused with a TCP reset: `Firewall`)
///     home1 10.0.1.2          home2 10.0.2.2
///
/// Addresses come from TEST-NET-3 and RFC 1918 space and exist only inside
/// these namespaces.
final class NATTestbed {
    let prefix: String
    private(set) var namespaces: [String] = []
    private var processes: [ChildProcess] = []

    static let nft = "/usr/sbin/nft"
    static let relayIP = "203.0.113.10"

    /// What a router does with a new connection from outside.
    enum Firewall {
        /// Drops it silently (most home routers).
        case drop
        /// Answers a TCP SYN with a reset (some routers and hosts).
        case reset
    }
    let firewall: Firewall

    init(firewall: Firewall = .drop) throws {
        self.firewall = firewall
        guard getuid() == 0 else {
            print("SKIPPED: the NAT testbed needs root (ip netns, nft)")
            throw XCTSkip("SKIPPED: the NAT testbed needs root")
        }
        guard FileManager.default.isExecutableFile(atPath: Self.nft) else {
            throw XCTSkip("SKIPPED: the NAT testbed needs nft (Debian's nftables)")
        }
        prefix = "p2pn\(getpid() % 100_000)"
        do {
            try build()
        } catch {
            tearDown()
            throw error
        }
    }

    func name(_ role: String) -> String { "\(prefix)-\(role)" }

    private func addNamespace(_ role: String) throws -> String {
        let namespace = name(role)
        try TestNetwork.ip(["netns", "add", namespace])
        namespaces.append(namespace)
        try TestNetwork.ip(["-n", namespace, "link", "set", "lo", "up"])
        return namespace
    }

    /// A veth pair with one end in each namespace, named in each.
    private func link(_ a: String, _ aName: String, _ b: String, _ bName: String) throws {
        try TestNetwork.ip(["link", "add", "name", aName, "netns", a, "type", "veth", "peer", "name", bName, "netns", b])
        try TestNetwork.ip(["-n", a, "link", "set", aName, "up"])
        try TestNetwork.ip(["-n", b, "link", "set", bName, "up"])
    }

    private func exec(_ namespace: String, _ command: [String]) throws {
        let status = try ChildProcess.run(TestNetwork.ipPath, ["netns", "exec", namespace] + command).status
        guard status == 0 else {
            throw NSError(domain: "testbed", code: Int(status), userInfo: [
                NSLocalizedDescriptionKey: "\(command.joined(separator: " ")) in \(namespace) failed"
            ])
        }
    }

    private func build() throws {
        let segment = try addNamespace("pub")
        try TestNetwork.ip(["-n", segment, "link", "add", "br0", "type", "bridge"])
        try TestNetwork.ip(["-n", segment, "link", "set", "br0", "up"])
        func attach(_ namespace: String, _ port: String, address: String) throws {
            try link(namespace, "wan", segment, port)
            try TestNetwork.ip(["-n", segment, "link", "set", port, "master", "br0"])
            try TestNetwork.ip(["-n", namespace, "addr", "add", address, "dev", "wan"])
        }
        let relay = try addNamespace("relay")
        try attach(relay, "relay", address: "\(Self.relayIP)/24")
        for index in 1...2 {
            let router = try addNamespace("router\(index)")
            try attach(router, "router\(index)", address: "203.0.113.\(index)/24")
            let home = try addNamespace("home\(index)")
            try link(router, "lan", home, "eth0")
            try TestNetwork.ip(["-n", router, "addr", "add", "10.0.\(index).1/24", "dev", "lan"])
            try TestNetwork.ip(["-n", home, "addr", "add", "10.0.\(index).2/24", "dev", "eth0"])
            try TestNetwork.ip(["-n", home, "route", "add", "default", "via", "10.0.\(index).1"])
            try exec(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
            // Masquerade the home network; drop or refuse new connections from outside
            // (to the router and through it). Replies and what a hole punch opened pass.
            let refuse = switch firewall {
            case .drop: #"iifname "wan" ct state new drop;"#
            case .reset: #"iifname "wan" ct state new meta l4proto tcp reject with tcp reset; iifname "wan" ct state new drop;"#
            }
            let rules = """
                table ip nat {
                  chain postrouting { type nat hook postrouting priority 100; oifname "wan" masquerade; }
                }
                table inet filter {
                  chain input { type filter hook input priority 0; \(refuse) }
                  chain forward { type filter hook forward priority 0; \(refuse) }
                }
                """
            let file = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-router\(index).nft")
            try rules.write(to: file, atomically: true, encoding: .utf8)
            defer { try? FileManager.default.removeItem(at: file) }
            try exec(router, [Self.nft, "-f", file.path])
        }
    }

    /// Runs the p2pchat binary in a namespace of the testbed.
    func start(_ role: String, _ arguments: [String]) throws -> ChatProcess {
        let process = try ChatProcess(namespace: name(role), arguments: arguments, network: nil)
        processes.append(process.process)
        return process
    }

    /// Runs py-libp2p's Tests/Interop/py/relay_peer.py in a namespace of the testbed.
    func startPython(_ role: String, _ arguments: [String]) throws -> ChatProcess {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: py-libp2p in the NAT testbed needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/relay_peer.py").path
        let process = try ChatProcess(
            namespace: name(role), executable: python, arguments: [script] + arguments, network: nil)
        processes.append(process.process)
        return process
    }

    func tearDown() {
        for process in processes { process.terminate() }
        for process in processes { process.stop() }
        for namespace in namespaces.reversed() { _ = try? TestNetwork.ip(["netns", "del", namespace]) }
    }
}

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

final class NATTestbedTests: NATTestbedCase {
    /// The homes find out they are private and the relay public; they meet
    /// through the relay, chat, then DCUtR gives them a direct connection
    /// between the routers' public addresses, and the chat goes on.
    func testHomesMeetThroughTheRelayThenHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        // home2 waits before hole punching, so that lines first cross the relay.
        let home2 = try startHome(2, relay: relayAddress, extra: ["--hole-punch-delay", "10"])
        let id2 = try await peerID(home2)
        try await event(home2, "reachability", within: 30) { $0["reachability"] == "private" }
        let circuit = try await event(home2, "listening", within: 20) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(id2)")

        // home1 knows the relay and home2's peer id: its circuit address.
        let home1 = try startHome(1, relay: relayAddress, extra: ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        let id1 = try await peerID(home1)
        try await event(home1, "reachability", within: 30) { $0["reachability"] == "private" }
        try await event(relay, "reachability", within: 30) { $0["reachability"] == "public" }

        let connected = try await event(home1, "connected", within: 20) { $0["peer"] == id2 }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "home1 first reaches home2 through the relay: \(connected)")
        // A line each way through the relay.
        try await sendUntilReceived("through the relay from home1", from: home1, to: home2)
        try await sendUntilReceived("through the relay from home2", from: home2, to: home1)
        XCTAssertFalse(home2.output.contains { $0.contains("connection_upgraded") }, "upgraded before the relayed lines")

        // home2 hole punches the relayed connection home1 opened: the direct
        // connection's remote is home1's router (public address, listening port).
        let upgraded = try await event(home2, "connection_upgraded", within: 30) { $0["peer"] == id1 }
        XCTAssertEqual(upgraded["addr"], "/ip4/203.0.113.1/tcp/4001")
        try await event(home1, "connection_upgraded", within: 10) { $0["addr"] == "/ip4/203.0.113.2/tcp/4001" }

        // Lines flow both ways, none lost, over the direct connection.
        for round in 1...5 {
            home1.send("from home1 #\(round)")
            home2.send("from home2 #\(round)")
        }
        for round in 1...5 {
            try await event(home2, "message", within: 20) { $0["text"] == "from home1 #\(round)" }
            try await event(home1, "message", within: 20) { $0["text"] == "from home2 #\(round)" }
        }
        // /status: private, seen at its router's public address, its reservation
        // on the relay, and the direct connection to home1.
        home2.send("/status")
        let status = try await event(home2, "status", within: 20) { _ in true }
        XCTAssertEqual(status["reachability"], "private")
        XCTAssertTrue(status["observed"]?.contains("/ip4/203.0.113.2/") ?? false, "\(status)")
        let relayID = String(relayAddress.split(separator: "/").last ?? "")
        XCTAssertTrue(status["reservations"]?.contains(relayID) ?? false, "\(status)")
        XCTAssertTrue(status["connections"]?.contains("\(id1) /ip4/203.0.113.1/tcp/4001 direct") ?? false, "\(status)")
        XCTAssertTrue(status["advertised"]?.contains("/p2p-circuit") ?? false, "\(status)")
        home1.closeInput()
        home2.closeInput()
    }

    /// The relay keeps its limits: one reservation only (the second home is
    /// refused), and a circuit is cut at its byte limit.
    func testRelayEnforcesItsLimits() async throws {
        // Kept: a ChatProcess stops its process when released.
        let (relay, relayAddress) = try await startRelay(["--max-reservations", "1", "--circuit-bytes", "2048"])
        defer { withExtendedLifetime(relay) {} }
        let home2 = try startHome(2, relay: relayAddress, extra: ["--hole-punch-delay", "20"])
        let id2 = try await peerID(home2)
        try await event(home2, "listening", within: 30) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        let home1 = try startHome(1, relay: relayAddress, extra: ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        try await event(home1, "error", within: 30) { $0["message"]?.contains("RESERVATION_REFUSED") ?? false }
        // The circuit to home2 carries at most 2 KiB each way: a 4 KB line cuts it.
        try await event(home1, "connected", within: 30) { $0["peer"] == id2 && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        home1.send(String(repeating: "x", count: 4000))
        try await event(home1, "disconnected", within: 15) { $0["peer"] == id2 }
        XCTAssertFalse(home2.events.contains { $0["event"] == "message" }, "the line crossed a circuit limited to 2 KiB")
    }

    /// Two homes that know only the relay, as `--bootstrap`, and nothing else:
    /// AutoNAT says private, AutoRelay reserves on the relay (found as a
    /// bootstrap peer that offers hop), the relay's DHT tells each where the
    /// other is (its circuit address), they chat relayed, then hole punch.
    func testHomesThatKnowOnlyTheRelayMeetChatAndHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        for home in homes {
            try await event(home, "reachability", within: 30) { $0["reachability"] == "private" }
            try await event(home, "listening", within: 30) { $0["addr"]?.contains("\(relayAddress)/p2p-circuit") ?? false }
        }
        // Each finds the other through the DHT; the first connection is relayed.
        let connected = try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "\(connected)")
        try await sendUntilReceived("found through the relay's DHT", from: homes[0], to: homes[1])
        // Whichever accepted the relayed connection hole punches it.
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        XCTAssertTrue(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.") ?? false, "\(upgraded)")
        for round in 1...3 {
            homes[0].send("direct from home1 #\(round)")
            homes[1].send("direct from home2 #\(round)")
        }
        for round in 1...3 {
            try await event(homes[1], "message", within: 20) { $0["text"] == "direct from home1 #\(round)" }
            try await event(homes[0], "message", within: 20) { $0["text"] == "direct from home2 #\(round)" }
        }
        for home in homes { home.closeInput() }
    }

    /// Homes that left behind provider records on the relay's DHT (their
    /// circuit addresses now lead nowhere): the next pair still meets, relayed
    /// then direct, without waiting on the dead ones.
    func testHomesMeetDespiteRecordsLeftByHomesThatAreGone() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        for (pair, port) in [4201, 4202].enumerated() {
            let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, port: port) }
            let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
            XCTAssertEqual(upgraded["method"], "hole punch", "pair \(pair + 1): \(upgraded)")
            for home in homes {
                home.closeInput()
                _ = try await home.process.waitForExit(within: 10)
            }
        }
    }

}

/// Behind routers that answer unsolicited SYNs with a reset.
final class NATTestbedResetTests: NATTestbedCase {
    override func setUpWithError() throws {
        testbed = try NATTestbed(firewall: .reset)
    }


    /// Two homes behind routers that answer unsolicited SYNs with a reset: a
    /// SYN that reaches the other router before that router's own SYN left is
    /// refused, and its reset closes the dialling socket, so the hole punch
    /// fails. The homes found each other through the relay (AutoRelay, DHT)
    /// and go on chatting over the relayed connection.
    func testHomesBehindResettingRoutersChatThroughTheRelay() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        try await sendUntilReceived("through the relay, router 1 to 2", from: homes[0], to: homes[1])
        try await sendUntilReceived("through the relay, router 2 to 1", from: homes[1], to: homes[0])
        for home in homes { home.closeInput() }
    }

    /// The same homes as a user runs them, on TCP and QUIC: the TCP punch is
    /// refused, the UDP one is not (the routers only drop unsolicited
    /// datagrams), so they hole punch over QUIC.
    func testHomesBehindResettingRoutersHolePunchOverQUIC() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, quic: true) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        XCTAssertTrue(upgraded["addr"]?.hasSuffix("/udp/4001/quic-v1") ?? false, "\(upgraded)")
        try await sendUntilReceived("direct over udp, router 1 to 2", from: homes[0], to: homes[1])
        try await sendUntilReceived("direct over udp, router 2 to 1", from: homes[1], to: homes[0])
        for home in homes { home.closeInput() }
    }

    /// A public chat reaches a home through its circuit address (the home
    /// reserved on the relay by itself); the home, which accepted the relayed
    /// connection, dials the public chat directly (the unilateral upgrade), so
    /// no hole punch is needed and the router's resets do not matter.
    func testHomeDialsThePublicChatThatReachedItThroughTheRelay() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let home = try startBootstrapHome(2, relay: relayAddress)
        let homeID = try await peerID(home)
        let circuit = try await event(home, "listening", within: 40) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(homeID)")
        let publicChat = try testbed.start(
            "relay",
            ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/4002", "--connect", try XCTUnwrap(circuit["addr"])])
        let publicID = try await peerID(publicChat)
        try await event(home, "connected", within: 30) { $0["peer"] == publicID && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        let upgraded = try await event(home, "connection_upgraded", within: 30) { $0["peer"] == publicID }
        XCTAssertEqual(upgraded["method"], "direct dial")
        XCTAssertEqual(upgraded["addr"], "/ip4/\(NATTestbed.relayIP)/tcp/4002")
        try await sendUntilReceived("from the public chat", from: publicChat, to: home)
        try await sendUntilReceived("from the home", from: home, to: publicChat)
        home.closeInput()
        publicChat.closeInput()
    }
}

/// DCUtR with py-libp2p 0.8.1 across real NAT, in both roles.
final class NATTestbedPythonTests: NATTestbedCase {

    /// py-libp2p dials our home through the relay ("A"); we accept and hole punch ("B").
    func testPythonDialsThroughTheRelayAndWeHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let home = try startBootstrapHome(2, relay: relayAddress)
        let circuit = try await event(home, "listening", within: 40) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        let python = try testbed.startPython(
            "home1", ["--timeout", "90", "--ip", "0.0.0.0", "--port", "4001", "dcutr-dial", try XCTUnwrap(circuit["addr"])])
        let connected = try await event(python, "connected", within: 30)
        let upgraded = try await event(home, "connection_upgraded", within: 40)
        let homeID = try await peerID(home)
        XCTAssertEqual(connected["peer"], homeID)
        XCTAssertEqual(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.1/tcp/"), true, "\(upgraded)")
        try await event(python, "direct", within: 30)
        python.closeInput()
        home.closeInput()
    }

    /// Our home dials py-libp2p's circuit address ("A"); py accepts and starts DCUtR ("B").
    func testWeDialPythonThroughTheRelayAndItHolePunches() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let python = try testbed.startPython(
            "home2", ["--timeout", "90", "--ip", "0.0.0.0", "--port", "4001", "dcutr-listen", relayAddress])
        let reserved = try await event(python, "reserved", within: 30)
        XCTAssertEqual(reserved["ok"], "1")
        let home = try testbed.start(
            "home1",
            ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/4001", "--connect", try XCTUnwrap(reserved["addr"])])
        let homeID = try await peerID(home)
        let direct = try await event(python, "direct", within: 60)
        XCTAssertEqual(direct["peer"], homeID)
        let upgraded = try await event(home, "connection_upgraded", within: 20)
        XCTAssertEqual(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.2/tcp/"), true, "\(upgraded)")
        python.closeInput()
        home.closeInput()
    }
}

/// Hole punches with one end playing an older go-libp2p's roles
/// (`--dcutr-roles`), across real NAT where both dials meet in one TCP
/// connection: the roles decide whether its handshake works.
final class NATTestbedGoRolesTests: NATTestbedCase {
    /// go v0.33-v0.40 as B dials as a plain client on every attempt: our A
    /// dials with the simultaneous-open extension twice (both fail: two
    /// diallers, one without the extension), then listens, and the third works.
    func testOurAnswerMeetsGoBefore041AtTheThirdAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.41", listen: "/tcp/4011")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// go before v0.33 as B dials with the extension too: the nonces pick the roles at once.
    func testOurAnswerMeetsGoBefore033AtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.33", listen: "/tcp/4012")
        XCTAssertEqual(outcome["attempt"], "1")
    }

    /// go before v0.41 as A listens: our B listens too at first (both wait),
    /// and on its last attempt dials with the extension, which a listener answers.
    func testOurHolePunchMeetsAnOldGoAnswerAtTheLastAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "go-before-0.41", home2Roles: "adaptive", listen: "/tcp/4013")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// Two of ours: the spec's roles work at once.
    func testOursMeetAtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "adaptive", listen: "/tcp/4014")
        XCTAssertEqual(outcome["attempt"], "1")
    }
}

/// DCUtR over UDP: the homes listen on QUIC, the relay on TCP and QUIC.
final class NATTestbedQUICTests: NATTestbedCase {
    /// Homes that listen on QUIC only meet through the relay; home2, which
    /// accepted the relayed connection, sends its punch datagrams while home1
    /// dials as the QUIC client, through both routers that drop unsolicited
    /// packets: a direct QUIC connection between the routers' public
    /// addresses, at the listening ports, and the chat goes on over it.
    func testHomesOnQUICHolePunchOverUDP() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let quic = ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1", "--relay", relayAddress]
        let home2 = try testbed.start("home2", quic)
        let id2 = try await peerID(home2)
        // AutoNAT over QUIC: the relay dials back from a socket of its own, which the router drops.
        try await event(home2, "reachability", within: 30) { $0["reachability"] == "private" }
        let circuit = try await event(home2, "listening", within: 30) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(id2)")
        let home1 = try testbed.start("home1", quic + ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        let id1 = try await peerID(home1)
        let connected = try await event(home1, "connected", within: 30) { $0["peer"] == id2 }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "\(connected)")
        let upgraded = try await event(home2, "connection_upgraded", within: 40) { $0["peer"] == id1 }
        XCTAssertEqual(upgraded["method"], "hole punch")
        XCTAssertEqual(upgraded["addr"], "/ip4/203.0.113.1/udp/4001/quic-v1")
        XCTAssertEqual(upgraded["attempt"], "1")
        try await event(home1, "connection_upgraded", within: 10) { $0["addr"] == "/ip4/203.0.113.2/udp/4001/quic-v1" }
        for round in 1...3 {
            home1.send("over udp from home1 #\(round)")
            home2.send("over udp from home2 #\(round)")
        }
        for round in 1...3 {
            try await event(home2, "message", within: 20) { $0["text"] == "over udp from home1 #\(round)" }
            try await event(home1, "message", within: 20) { $0["text"] == "over udp from home2 #\(round)" }
        }
        home2.send("/status")
        let status = try await event(home2, "status", within: 20)
        XCTAssertTrue(status["connections"]?.contains("\(id1) /ip4/203.0.113.1/udp/4001/quic-v1 direct") ?? false, "\(status)")
        home1.closeInput()
        home2.closeInput()
    }

    // With older go-libp2p's roles over QUIC, one end must dial as the QUIC
    // client while the other sends punch datagrams.

    /// go before v0.41 as B dials as the QUIC client: our A dials too (two
    /// clients; each endpoint also accepts the other's Initial), at once.
    func testOurQUICAnswerMeetsGoBefore041AtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.41", listen: "/udp/4001/quic-v1")
        XCTAssertEqual(outcome["attempt"], "1")
    }

    /// go before v0.41 as A only sends punch datagrams: so does our B at
    /// first, and on its last attempt it dials as the client.
    func testOurQUICHolePunchMeetsAnOldGoAnswerAtTheLastAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "go-before-0.41", home2Roles: "adaptive", listen: "/udp/4001/quic-v1")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// Homes as a user runs them (TCP and QUIC, the default listen list, at
    /// fixed ports so the routers map them predictably) that know only the
    /// relay: they find each other, chat relayed, and whichever accepted the
    /// relayed connection hole punches it, over TCP or UDP, whichever joins first.
    func testDefaultHomesHolePunchOverTCPOrQUIC() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, quic: true) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        try await sendUntilReceived("found through the relay", from: homes[0], to: homes[1])
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        let address = try XCTUnwrap(upgraded["addr"])
        XCTAssertTrue(
            ["/ip4/203.0.113.1/", "/ip4/203.0.113.2/"].contains { address.hasPrefix($0) }
                && (address.hasSuffix("/tcp/4001") || address.hasSuffix("/udp/4001/quic-v1")), address)
        for round in 1...3 {
            homes[0].send("direct from home1 #\(round)")
            homes[1].send("direct from home2 #\(round)")
        }
        for round in 1...3 {
            try await event(homes[1], "message", within: 20) { $0["text"] == "direct from home1 #\(round)" }
            try await event(homes[0], "message", within: 20) { $0["text"] == "direct from home2 #\(round)" }
        }
        for home in homes { home.closeInput() }
    }
}
