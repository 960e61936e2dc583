import AutoNAT
import DCUtR
import Host
import Multiformats
import NIOPosix
import Ping
import Relay
import TestSupport
import Transport
import Synchronization
import XCTest

/// What the classes that run Tests/Interop/py/relay_peer.py share: its peers
/// and our hosts, all ended after each test.
class RelayPeerTestCase: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var peers: [PythonPeer] = []
    var hosts: [Libp2pHost] = []
    /// How long a relay_peer.py run may last, in seconds.
    var pythonTimeout: Int { 60 }

    override func tearDown() async throws {
        for peer in peers { peer.stop() }
        for host in hosts { await host.close() }
    }

    func startPython(_ arguments: [String]) throws -> PythonPeer {
        let peer = try PythonPeer(script: "relay_peer.py", ["--timeout", "\(pythonTimeout)"] + arguments)
        peers.append(peer)
        return peer
    }
}

/// Circuit relay v2 with py-libp2p 0.8.1 (Tests/Interop/py/relay_peer.py):
/// its relay serving our clients, and our relay serving its clients.
final class RelayInteropTests: RelayPeerTestCase {
    override var pythonTimeout: Int { 120 }

    func makeNode(relay limits: RelayLimits? = nil) async throws -> (Libp2pHost, Multiaddr) {
        let circuit = CircuitTransport()
        let (host, address) = try await makeTestHost(group: group, transports: [TCPTransport(group: group), circuit])
        circuit.attach(host)
        if let limits { RelayService(host: host, limits: limits).start() }
        hosts.append(host)
        return (host, address)
    }

    /// Our two clients meet through py-libp2p's relay: one reserves, the other dials.
    func testPythonRelayServesSwiftClients() async throws {
        let relay = try startPython(["relay"])
        let listening = try await relay.next("listening")
        let relayAddress = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let (listener, _) = try await makeNode()
        let (dialer, _) = try await makeNode()
        let bound = try await withDeadline(30) { try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)]) }
        let connection = try await withDeadline(30) {
            try await dialer.connect(bound[0].encapsulating(.p2p(listener.localPeer.bytes)))
        }
        XCTAssertEqual(connection.remotePeer, listener.localPeer)
        XCTAssertEqual(connection.transport, "p2p-circuit")
        let rtts = try await withDeadline(30) { try await PingService.ping(connection, count: 3) }
        XCTAssertEqual(rtts.count, 3)
        let data = patternBytes(count: 256 * 1024, seed: 5)
        let back = try await withDeadline(60) { try await echo(data, over: connection) }
        XCTAssertTrue(back == data, "echoed bytes differ")
    }

    /// py-libp2p's clients meet through our relay: one reserves, the other dials it and echoes.
    func testSwiftRelayServesPythonClients() async throws {
        var limits = RelayLimits()
        limits.circuit = CircuitLimit(duration: 120, data: 1 << 22)
        let (_, relayAddress) = try await makeNode(relay: limits)
        let listener = try startPython(["listen-via", relayAddress.description])
        let reserved = try await listener.next("reserved")
        let circuitAddress = try XCTUnwrap(reserved["addr"] as? String)
        let dialer = try startPython(["dial-via", circuitAddress, "echo", "--bytes", "200000"])
        let echoed = try await dialer.next("echo", within: 60)
        XCTAssertEqual(echoed["ok"] as? Double, 1)
        let status = try await dialer.waitForExit()
        XCTAssertEqual(status, 0)
    }

    /// A py-libp2p client reserves on our relay; our client dials it through the relay.
    func testSwiftDialsPythonThroughSwiftRelay() async throws {
        let (_, relayAddress) = try await makeNode(relay: RelayLimits())
        let listener = try startPython(["listen-via", relayAddress.description])
        let reserved = try await listener.next("reserved")
        let (dialer, _) = try await makeNode()
        let target = try Multiaddr(XCTUnwrap(reserved["addr"] as? String))
        let connection = try await withDeadline(30) { try await dialer.connect(target) }
        XCTAssertEqual(connection.remotePeer, target.peerID)
        let rtts = try await withDeadline(30) { try await PingService.ping(connection, count: 3) }
        XCTAssertEqual(rtts.count, 3)
        let data = patternBytes(count: 100_000, seed: 9)
        let back = try await withDeadline(60) { try await echo(data, over: connection) }
        XCTAssertTrue(back == data, "echoed bytes differ")
    }

    /// Our client reserves on our relay; py-libp2p dials it through the relay.
    func testPythonDialsSwiftThroughSwiftRelay() async throws {
        let (_, relayAddress) = try await makeNode(relay: RelayLimits())
        let (listener, _) = try await makeNode()
        let bound = try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let dialer = try startPython(["dial-via", bound[0].encapsulating(.p2p(listener.localPeer.bytes)).description, "ping"])
        for _ in 0..<3 { _ = try await dialer.next("ping", within: 60) }
        let status = try await dialer.waitForExit()
        XCTAssertEqual(status, 0)
    }
}

/// AutoNAT v1 with py-libp2p 0.8.1 (relay_peer.py autonat-*), both ways.
final class AutoNATInteropTests: RelayPeerTestCase {

    /// py-libp2p's server answers our DIAL; we parse its DIAL_RESPONSE.
    func testSwiftAsksPythonServer() async throws {
        let server = try startPython(["autonat-server"])
        let listening = try await server.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let (host, _) = try await makeTestHost(group: group)
        hosts.append(host)
        var configuration = AutoNATService.Configuration()
        configuration.probe = false
        configuration.threshold = 1
        let autonat = AutoNATService(host: host, configuration: configuration)
        autonat.start()
        let connection = try await host.connect(address)
        let (status, reached) = try await autonat.ask(connection.remotePeer)
        XCTAssertEqual(status, .ok)
        XCTAssertEqual(reached, host.listenAddresses.first)
        XCTAssertEqual(autonat.reachability, .local, "reached on loopback: the local network only")
    }

    /// Our server dials py-libp2p back at its listen address (a fresh connection) and answers OK.
    func testPythonAsksSwiftServer() async throws {
        let (host, address) = try await makeTestHost(group: group)
        hosts.append(host)
        var configuration = AutoNATService.Configuration()
        configuration.probe = false
        AutoNATService(host: host, configuration: configuration).start()
        let client = try startPython(["autonat-ask", address.description])
        let answer = try await client.next("autonat")
        XCTAssertEqual(answer["status"] as? Double, 0, "\(answer)")
        let reached = try XCTUnwrap(answer["addr"] as? String)
        let listen = answer["listen"] as? [String] ?? []
        XCTAssertTrue(listen.contains { $0.hasPrefix(reached) }, "reached \(reached), python listens on \(listen)")
    }
}

/// DCUtR with py-libp2p 0.8.1 on loopback: py-libp2p dials us through our
/// relay, we hole punch (no NAT here: the simultaneous dials meet listeners).
final class DCUtRInteropTests: RelayPeerTestCase {

    func testRelayedConnectionFromPythonIsUpgraded() async throws {
        let (relayHost, relayAddress) = try await makeRelayHost(group: group)
        hosts.append(relayHost)
        let b = try await makeCircuitHost(group: group, reusePort: true)
        hosts.append(b)
        let punch = HolePunchService(host: b)
        punch.start()
        let events = punch.events()
        try await b.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        // py 0.8.1 binds its hole-punch dial to the port of its first connection;
        // on loopback our simultaneous dial can take that very 4-tuple first, and
        // py's connect then fails (EADDRNOTAVAIL) and it drops the exchange. Up to
        // three fresh py peers; each failure is kept and shown if none succeeds.
        var failures: [String] = []
        let outcomes = Mutex<[HolePunchEvent]>([])
        let collector = Task { for await event in events { outcomes.withLock { $0.append(event) } } }
        defer { collector.cancel() }
        var upgraded: (Connection, PythonPeer)?
        for attempt in 0..<3 where upgraded == nil {
            let python = try startPython(["dcutr-dial", "\(relayAddress)/p2p-circuit/p2p/\(b.localPeer)"])
            try await waitUntil("a hole-punch outcome", seconds: 45) { outcomes.withLock { $0.count } > attempt }
            let event = outcomes.withLock { $0[attempt] }
            if case .succeeded(_, let direct, _, _, _) = event {
                upgraded = (direct, python)
            } else {
                failures.append("\(event); python stderr:\n\(python.stderrTail)")
                python.stop()
            }
        }
        guard let (direct, python) = upgraded else { return XCTFail(failures.joined(separator: "\n")) }
        XCTAssertEqual(direct.transport, "tcp")
        _ = try await python.next("direct", within: 20)
        let rtts = try await PingService.ping(direct, count: 2)
        XCTAssertEqual(rtts.count, 2)
    }
}
