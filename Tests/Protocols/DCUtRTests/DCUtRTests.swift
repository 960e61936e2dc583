import Host
import Identity
import Multiformats
import NIOPosix
import QUICTransport
import Relay
import TestSupport
import Transport
import NIOCore
import Synchronization
import XCTest

@testable import DCUtR

final class DCUtRTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var hosts: [Libp2pHost] = []

    override func tearDown() async throws {
        for host in hosts { await host.close() }
    }

    /// A host with the circuit transport, closed after the test.
    func circuitNode(reusePort: Bool = true) async throws -> Libp2pHost {
        let host = try await makeCircuitHost(group: group, reusePort: reusePort)
        hosts.append(host)
        return host
    }

    /// A relay on loopback, closed after the test; its address.
    func relay() async throws -> (Libp2pHost, Multiaddr) {
        let (relayHost, relayAddress) = try await makeRelayHost(group: group)
        hosts.append(relayHost)
        return (relayHost, relayAddress)
    }

    func testMessagesRoundTripAndRefuseGarbage() throws {
        let addresses = [try Multiaddr("/ip4/203.0.113.2/tcp/4001"), try Multiaddr("/ip6/2001:db8::2/tcp/4001")]
        XCTAssertEqual(try HolePunchMessage(bytes: HolePunchMessage.connect(addresses).encoded()), .connect(addresses))
        XCTAssertEqual(try HolePunchMessage(bytes: HolePunchMessage.sync.encoded()), .sync)
        XCTAssertEqual(HolePunchMessage.sync.encoded(), [0x08, 0xAC, 0x02])  // type = 300
        XCTAssertThrowsError(try HolePunchMessage(bytes: [] as [UInt8]))  // type is required
        XCTAssertThrowsError(try HolePunchMessage(bytes: [0x08, 0x05]))  // unknown type
        let valid = HolePunchMessage.connect(addresses).encoded()
        for cut in 0..<valid.count { _ = try? HolePunchMessage(bytes: valid.prefix(cut)) }
        var generator = SplitMix(seed: 31)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...80, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? HolePunchMessage(bytes: bytes)
        }
    }

    func testExchangeMeasuresTheRoundTripAndSyncsAtHalfOfIt() throws {
        let mine = [try Multiaddr("/ip4/203.0.113.2/tcp/4001")]
        let theirs = [
            try Multiaddr("/ip4/203.0.113.3/tcp/4002"), try Multiaddr("/ip4/203.0.113.1/tcp/1/p2p-circuit"),
            try Multiaddr("/dns4/example.com/tcp/1"),
        ]
        var b = HolePunchInitiator()
        var a = HolePunchResponder()
        let t0 = ContinuousClock.now
        let connect = b.start(addresses: mine, now: t0)
        XCTAssertEqual(try a.receive(connect, ourAddresses: theirs), .reply(.connect(theirs)))
        let (sync, dial, after, rtt) = try b.receive(.connect(theirs), now: t0 + .milliseconds(40))
        XCTAssertEqual(sync, .sync)
        XCTAssertEqual(dial, [try Multiaddr("/ip4/203.0.113.3/tcp/4002")])  // relayed and DNS addresses dropped
        XCTAssertEqual(rtt, .milliseconds(40))
        XCTAssertEqual(after, .milliseconds(20))
        XCTAssertEqual(try a.receive(.sync, ourAddresses: theirs), .dial(mine))
        // Out of order.
        XCTAssertThrowsError(try a.receive(.sync, ourAddresses: theirs))
        var fresh = HolePunchResponder()
        XCTAssertThrowsError(try fresh.receive(.sync, ourAddresses: mine))
        XCTAssertThrowsError(try fresh.receive(.connect([]), ourAddresses: mine))  // nothing to dial
    }

    /// QUIC v1 addresses are punched too (UDP); other UDP protocols, WebTransport,
    /// relayed and DNS addresses are not.
    func testQUICAddressesAreDialableForAHolePunch() throws {
        let offered = try [
            "/ip4/203.0.113.3/udp/4001/quic-v1", "/ip6/2001:db8::3/udp/4001/quic-v1/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN",
            "/ip4/203.0.113.3/udp/4001/quic", "/ip4/203.0.113.3/udp/4001", "/ip4/203.0.113.3/udp/4001/quic-v1/webtransport",
            "/dns4/example.com/udp/4001/quic-v1", "/ip4/203.0.113.1/udp/4001/quic-v1/p2p-circuit",
            "/ip4/203.0.113.3/tcp/4002",
        ].map { try Multiaddr($0) }
        XCTAssertEqual(
            HolePunchMessage.dialable(offered),
            try ["/ip4/203.0.113.3/udp/4001/quic-v1", "/ip6/2001:db8::3/udp/4001/quic-v1", "/ip4/203.0.113.3/tcp/4002"].map { try Multiaddr($0) })
    }

    /// On loopback: B reserves on a relay, A dials B through it, B hole punches;
    /// a direct TCP connection replaces the relayed one.
    func testRelayedConnectionIsUpgradedToDirect() async throws {
        let (relayHost, relayAddress) = try await relay()
        let a = try await circuitNode()
        let b = try await circuitNode()
        let punchA = HolePunchService(host: a)
        punchA.start()
        let punchB = HolePunchService(host: b)
        punchB.start()
        let events = punchB.events()
        try await b.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        _ = try await a.connect(relayAddress)
        // Both learn from identify where the relay sees them (their listening port: reuse).
        for host in [a, b] {
            try await waitUntil("identify told \(host.localPeer) its observed address") { host.peerStore.info(relayHost.localPeer)?.observedAddress != nil }
            XCTAssertEqual(host.peerStore.info(relayHost.localPeer)?.observedAddress, host.listenAddresses[0])
        }
        let relayed = try await a.connect(
            relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(b.localPeer.bytes)))
        XCTAssertEqual(relayed.transport, "p2p-circuit")
        let event = try await withDeadline(30) {
            var iterator = events.makeAsyncIterator()
            return await iterator.next()
        }
        guard case .succeeded(let peer, let direct, let rtt, _, _)? = event else { return XCTFail("\(String(describing: event))") }
        XCTAssertEqual(peer, a.localPeer)
        XCTAssertEqual(direct.transport, "tcp")
        XCTAssertGreaterThan(rtt, .zero)
        try await waitUntil("the relayed connection closed after the punch") { !relayed.isActive }
        let fromA = try XCTUnwrap(a.connection(to: b.localPeer))
        XCTAssertEqual(fromA.transport, "tcp")
        let data = patternBytes(count: 100_000, seed: 4)
        let back = try await echo(data, over: fromA)
        XCTAssertTrue(back == data)
    }

    /// Two peers that found each other at once dial each other through the
    /// relay: each accepts a relayed connection, so each would start DCUtR as
    /// B, and the two exchanges' dials collide (one TCP 4-tuple, two
    /// handshakes). One exchange goes ahead, the other side answers it, and
    /// the peers end with a direct connection.
    func testRelayedDialsBothWaysAtOnceGiveOneHolePunch() async throws {
        let (relayHost, relayAddress) = try await relay()
        let a = try await circuitNode()
        let b = try await circuitNode()
        let services = [HolePunchService(host: a), HolePunchService(host: b)]
        let outcomes = services.map { $0.events() }
        for service in services { service.start() }
        for host in [a, b] {
            try await host.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
            try await waitUntil("identify told \(host.localPeer) its observed address") { host.peerStore.info(relayHost.localPeer)?.observedAddress != nil }
        }
        let circuit = relayAddress.encapsulating(.p2pCircuit)
        async let fromA = a.dial(circuit.encapsulating(.p2p(b.localPeer.bytes)), role: .initiator)
        async let fromB = b.dial(circuit.encapsulating(.p2p(a.localPeer.bytes)), role: .initiator)
        let relayed = try await [fromA, fromB]
        XCTAssertEqual(relayed.map(\.transport), ["p2p-circuit", "p2p-circuit"])
        // Each service ends its punch (B's) with an event; at least one succeeded and none failed.
        let events = try await withDeadline(60) {
            await withTaskGroup(of: HolePunchEvent?.self) { group in
                for stream in outcomes {
                    group.addTask {
                        for await event in stream { if case .dialledDirectly = event { continue } else { return event } }
                        return nil
                    }
                }
                var first: [HolePunchEvent] = []
                for await event in group {
                    if let event { first.append(event) }
                    if first.contains(where: { if case .succeeded = $0 { true } else { false } }) { group.cancelAll() }
                }
                return first
            }
        }
        for event in events {
            if case .failed(let peer, let error) = event { XCTFail("hole punch with \(peer) failed: \(error)") }
        }
        XCTAssertTrue(events.contains { if case .succeeded = $0 { true } else { false } }, "\(events)")
        for (host, other) in [(a, b), (b, a)] {
            try await waitUntil("\(host.localPeer) has a direct connection") {
                host.connections.contains { $0.remotePeer == other.localPeer && $0.isActive && !$0.isRelayed }
            }
        }
        XCTAssertEqual(services.map(\.answeredExchanges).reduce(0, +), 1, "one exchange answered, not one each way")
    }

    /// The same over QUIC alone (on loopback): B, which accepted the relayed
    /// connection, sends its punch datagrams and dials nothing; A dials as the
    /// QUIC client from its listening socket; the direct connection is QUIC.
    func testRelayedConnectionIsUpgradedToDirectQUIC() async throws {
        func quicHost() async throws -> (Libp2pHost, Multiaddr) {
            let circuit = CircuitTransport()
            let (host, address) = try await makeTestHost(
                group: group, transports: [QUICTransport(group: group), circuit], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
            circuit.attach(host)
            hosts.append(host)
            return (host, address)
        }
        let (relayHost, relayAddress) = try await quicHost()
        RelayService(host: relayHost).start()
        let (a, _) = try await quicHost()
        let (b, _) = try await quicHost()
        let punchA = HolePunchService(host: a)
        punchA.start()
        let punchB = HolePunchService(host: b)
        punchB.start()
        let events = punchB.events()
        try await b.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        _ = try await a.connect(relayAddress)
        for host in [a, b] {
            try await waitUntil("identify told \(host.localPeer) its observed address") { host.peerStore.info(relayHost.localPeer)?.observedAddress != nil }
        }
        XCTAssertTrue(b.listenAddresses.contains { $0.isQUICv1AtIP })
        XCTAssertEqual(punchB.ourAddresses.filter { $0.isQUICv1AtIP }.first, b.listenAddresses.first)
        let relayed = try await a.connect(relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(b.localPeer.bytes)))
        XCTAssertEqual(relayed.transport, "p2p-circuit")
        let event = try await withDeadline(30) {
            var iterator = events.makeAsyncIterator()
            return await iterator.next()
        }
        guard case .succeeded(let peer, let direct, _, _, let attempt)? = event else { return XCTFail("\(String(describing: event))") }
        XCTAssertEqual(peer, a.localPeer)
        XCTAssertEqual(direct.transport, "quic-v1")
        XCTAssertEqual(direct.direction, .inbound, "B dialled: it should only have sent punch datagrams")
        XCTAssertEqual(attempt, 1)
        try await waitUntil("the relayed connection closed after the punch") { !relayed.isActive }
        let fromA = try XCTUnwrap(a.connection(to: b.localPeer))
        XCTAssertEqual(fromA.transport, "quic-v1")
        let data = patternBytes(count: 100_000, seed: 5)
        let back = try await echo(data, over: fromA)
        XCTAssertTrue(back == data)
    }

    /// A peer that reached us through a relay cannot make us dial a third
    /// party at will: a few exchanges per relayed connection, one at a time,
    /// at most 8 addresses each (it sent 10 exchanges of 32 addresses: 320
    /// dials before); and none at all over a direct connection.
    func testDCUtRCannotMakeUsDialAThirdPartyAtWill() async throws {
        let accepted = Mutex(0)
        // The third party's connections still open: a dial in flight holds one.
        let open = Counter()
        let thirdParty: any Channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                accepted.withLock { $0 += 1 }
                open.add(1)
                channel.closeFuture.whenComplete { _ in open.add(-1) }
                return channel.eventLoop.makeSucceededVoidFuture()
            }
            .bind(host: "127.0.0.1", port: 0).get()
        defer { thirdParty.close(promise: nil) }
        let port = try XCTUnwrap(thirdParty.localAddress?.port)
        let (_, relayAddress) = try await relay()
        let victim = try await circuitNode(reusePort: false)
        var configuration = HolePunchService.Configuration()
        configuration.automatic = false
        configuration.dialTimeout = .milliseconds(300)
        let service = HolePunchService(host: victim, configuration: configuration)
        service.start()
        try await victim.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let attacker = try await circuitNode(reusePort: false)
        let relayed = try await attacker.dial(
            relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(victim.localPeer.bytes)), role: .initiator)
        let targets = (0..<32).map { _ in Multiaddr([.ip4([127, 0, 0, 1]), .tcp(UInt16(port))]) }
        var answered = 0
        for _ in 0..<10 {
            do {
                let stream = try await relayed.newStream(protocols: [HolePunchService.protocolID])
                var out = ByteBuffer()
                out.writeLengthPrefixed(HolePunchMessage.connect(targets).encoded())
                try await stream.write(out)
                var reader = StreamReader(stream)
                guard try await reader.readLengthPrefixed(maxLength: 4096) != nil else { continue }
                answered += 1
                var sync = ByteBuffer()
                sync.writeLengthPrefixed(HolePunchMessage.sync.encoded())
                try await stream.write(sync)
                try await stream.closeWrite()
                // The stream ends when the answer (its dials) is over: then the next exchange.
                _ = try? await reader.readLengthPrefixed(maxLength: 4096)
            } catch {
                continue  // refused: reset
            }
        }
        // Every dial it made has ended (the third party is not the peer it
        // wants: each gives up at its timeout): the count is final.
        try await waitUntil("the victim's dials to the third party ended") { open.value == 0 }
        let dials = accepted.withLock { $0 }
        XCTAssertGreaterThan(answered, 0)
        XCTAssertLessThanOrEqual(answered, 4)
        XCTAssertLessThanOrEqual(dials, 4 * 8, "\(dials) dials for \(answered) exchanges")
        // Over a direct connection DCUtR is refused outright.
        let direct = try await attacker.dial(victim.listenAddresses[0].encapsulating(.p2p(victim.localPeer.bytes)), role: .initiator)
        let before = accepted.withLock { $0 }
        var answer: ByteBuffer?
        do {
            let stream = try await direct.newStream(protocols: [HolePunchService.protocolID])
            var out = ByteBuffer()
            out.writeLengthPrefixed(HolePunchMessage.connect(targets).encoded())
            try await stream.write(out)
            var reader = StreamReader(stream)
            answer = try await reader.readLengthPrefixed(maxLength: 4096)
        } catch {
            // Reset: refused.
        }
        XCTAssertNil(answer, "answered DCUtR on a direct connection")
        XCTAssertEqual(accepted.withLock { $0 }, before)
    }
}
