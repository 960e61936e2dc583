import Host
import QUICTransport
import Identity
import Multiformats
import NIOPosix
import TestSupport
import Transport
import XCTest

@testable import AutoNAT

final class AutoNATTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var hosts: [Libp2pHost] = []
    let alice = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)

    override func tearDown() async throws {
        for host in hosts { await host.close() }
    }

    func testMessagesRoundTripAndRefuseGarbage() throws {
        let messages: [AutoNATMessage] = [
            .dial(peer: alice, addresses: [try Multiaddr("/ip4/192.0.2.1/tcp/4001")]),
            .dialResponse(.ok, text: nil, address: try Multiaddr("/ip4/192.0.2.1/tcp/4001")),
            .dialResponse(.dialError, text: "no", address: nil),
        ]
        for message in messages {
            XCTAssertEqual(try AutoNATMessage(bytes: message.encoded()), message)
        }
        // DIAL_RESPONSE OK: type 1, dialResponse { status 0 }.
        XCTAssertEqual(AutoNATMessage.dialResponse(.ok, text: nil, address: nil).encoded(), [0x08, 0x01, 0x1A, 0x02, 0x08, 0x00])
        XCTAssertThrowsError(try AutoNATMessage(bytes: [] as [UInt8]))
        XCTAssertThrowsError(try AutoNATMessage(bytes: [0x08, 0x00]))  // DIAL without a peer
        XCTAssertThrowsError(try AutoNATMessage(bytes: [0x08, 0x01, 0x1A, 0x02, 0x08, 0x05]))  // unknown status
        let valid = messages[0].encoded()
        for cut in 0..<valid.count { _ = try? AutoNATMessage(bytes: valid.prefix(cut)) }
        var generator = SplitMix(seed: 32)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...80, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? AutoNATMessage(bytes: bytes)
        }
    }

    func testServerDialsOnlyTheObservedIPWithinItsLimits() throws {
        var limits = AutoNATServerPolicy.Limits()
        limits.perPeer = 2
        limits.global = 3
        var policy = AutoNATServerPolicy(limits: limits)
        let observed = try Multiaddr("/ip4/203.0.113.7/tcp/53211")
        let claimed = [
            try Multiaddr("/ip4/10.0.0.2/tcp/4001"), try Multiaddr("/ip4/203.0.113.7/tcp/4002/p2p/\(alice)"),
            try Multiaddr("/ip6/2001:db8::1/tcp/4001"), try Multiaddr("/ip4/198.51.100.1/tcp/1/p2p/\(alice)/p2p-circuit"),
        ]
        let now = ContinuousClock.now
        XCTAssertEqual(
            try policy.decide(requester: alice, claimedPeer: alice, addresses: claimed, observed: observed, relayed: false, now: now).get(),
            [try Multiaddr("/ip4/203.0.113.7/tcp/4001"), try Multiaddr("/ip4/203.0.113.7/tcp/4002")])
        let bob = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        XCTAssertEqual(
            refusal(policy.decide(requester: alice, claimedPeer: bob, addresses: claimed, observed: observed, relayed: false, now: now)), .badRequest)
        XCTAssertEqual(
            refusal(policy.decide(requester: alice, claimedPeer: alice, addresses: claimed, observed: observed, relayed: true, now: now)), .dialRefused)
        XCTAssertEqual(
            refusal(policy.decide(requester: alice, claimedPeer: alice, addresses: [], observed: observed, relayed: false, now: now)), .dialRefused)
        _ = policy.decide(requester: alice, claimedPeer: alice, addresses: claimed, observed: observed, relayed: false, now: now)
        // Third from alice in the period: refused; bob still has room, then the global limit is hit.
        XCTAssertEqual(
            refusal(policy.decide(requester: alice, claimedPeer: alice, addresses: claimed, observed: observed, relayed: false, now: now)), .dialRefused)
        XCTAssertNoThrow(try policy.decide(requester: bob, claimedPeer: bob, addresses: claimed, observed: observed, relayed: false, now: now).get())
        XCTAssertEqual(
            refusal(policy.decide(requester: bob, claimedPeer: bob, addresses: claimed, observed: observed, relayed: false, now: now)), .dialRefused)
        // A new period resets the counts.
        XCTAssertNoThrow(try policy.decide(requester: alice, claimedPeer: alice, addresses: claimed, observed: observed, relayed: false, now: now + .seconds(61)).get())
    }

    func testReachabilityNeedsAgreeingServers() {
        var tracker = ReachabilityTracker(threshold: 2)
        let servers = (0..<4).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        XCTAssertNil(tracker.record(server: servers[0], status: .dialError, address: nil))
        // The same server again does not count twice.
        XCTAssertNil(tracker.record(server: servers[0], status: .dialError, address: nil))
        XCTAssertNil(tracker.record(server: servers[1], status: .dialRefused, address: nil))
        XCTAssertEqual(tracker.record(server: servers[1], status: .dialError, address: nil), .private)
        let reached = try? Multiaddr("/ip4/203.0.113.7/tcp/4001")
        XCTAssertNil(tracker.record(server: servers[2], status: .ok, address: reached))
        XCTAssertEqual(tracker.reachability, .private)
        XCTAssertNil(tracker.record(server: servers[3], status: .ok, address: reached))  // 2 against 2: unchanged
        XCTAssertEqual(tracker.record(server: servers[0], status: .ok, address: reached), .public)
        XCTAssertEqual(tracker.publicAddress, reached)
        var single = ReachabilityTracker(threshold: 1)
        XCTAssertEqual(single.record(server: servers[0], status: .dialError, address: nil), .private)
    }

    /// Issue 25: 27 identities at one address spent the server's global
    /// budget; one address gets a share (6 of 30), others are still answered.
    func testIdentitiesAtOneAddressTakeOnlyTheirShareOfTheServer() throws {
        var policy = AutoNATServerPolicy()
        let observed = try Multiaddr("/ip4/203.0.113.7/tcp/53211")
        let now = ContinuousClock.now
        var answered = 0
        for _ in 0..<27 {
            let identity = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
            let decision = policy.decide(
                requester: identity, claimedPeer: identity, addresses: [try Multiaddr("/ip4/203.0.113.7/tcp/4001")],
                observed: observed, relayed: false, now: now)
            if case .success = decision { answered += 1 }
        }
        XCTAssertEqual(answered, policy.limits.perAddress)
        // Another IPv4 address, and another /64, are answered.
        for other in ["/ip4/198.51.100.9/tcp/4001", "/ip6/2001:db8:0:1::9/tcp/4001"] {
            let address = try Multiaddr(other)
            XCTAssertNoThrow(
                try policy.decide(
                    requester: alice, claimedPeer: alice, addresses: [address], observed: address, relayed: false, now: now
                ).get())
        }
    }

    /// Issue 25: one machine answering with several identities flipped us to
    /// public; servers at one address are one voter.
    func testServersAtOneAddressCountOnce() throws {
        func randomPeerID() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        var tracker = ReachabilityTracker(threshold: 2)
        let reached = try Multiaddr("/ip4/198.51.100.7/tcp/4001")
        let machine = try Multiaddr("/ip4/203.0.113.50/tcp/4001")
        for _ in 0..<5 {
            let identity = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
            XCTAssertNil(tracker.record(server: identity, at: machine, status: .ok, address: reached))
        }
        XCTAssertEqual(tracker.reachability, .unknown, "one address decided alone")
        let other = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        XCTAssertEqual(tracker.record(server: other, at: try Multiaddr("/ip4/192.0.2.1/tcp/1"), status: .ok, address: reached), .public)
        // IPv6 servers within one /64 are one voter too.
        var sixes = ReachabilityTracker(threshold: 2)
        XCTAssertNil(sixes.record(server: alice, at: try Multiaddr("/ip6/2001:db8::1/tcp/1"), status: .ok, address: reached))
        XCTAssertNil(sixes.record(server: other, at: try Multiaddr("/ip6/2001:db8::2:1/tcp/1"), status: .ok, address: reached))
        XCTAssertEqual(sixes.reachability, .unknown)
        XCTAssertEqual(tracker.reachability, .public, "two addresses agree")
        XCTAssertEqual(
            sixes.record(server: randomPeerID(), at: try Multiaddr("/ip6/2001:db8:0:1::1/tcp/1"), status: .ok, address: reached), .public)
    }

    /// Issue 22: on a LAN without internet `/status` said `public` (a LAN
    /// peer dialled us back at a private address). Only a dial back at a
    /// public address makes us public; at loopback, private or link-local
    /// addresses we are reachable on the local network only.
    func testADialBackAtALocalAddressIsLocalNotPublic() {
        let servers = (0..<3).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        let lan = try? Multiaddr("/ip4/192.168.1.20/tcp/4001")
        let loopback = try? Multiaddr("/ip4/127.0.0.1/tcp/4001")
        let linkLocal = try? Multiaddr("/ip6/fe80::1/tcp/4001")
        let testNet = try? Multiaddr("/ip4/203.0.113.7/tcp/4001")
        var tracker = ReachabilityTracker(threshold: 2)
        XCTAssertNil(tracker.record(server: servers[0], status: .ok, address: lan))
        XCTAssertEqual(tracker.record(server: servers[1], status: .ok, address: loopback), .local)
        XCTAssertNil(tracker.publicAddress, "no public address reached us")
        // One public dial back among local ones is not enough; two are.
        XCTAssertNil(tracker.record(server: servers[2], status: .ok, address: testNet))
        XCTAssertEqual(tracker.record(server: servers[0], status: .ok, address: testNet), .public)
        XCTAssertEqual(tracker.publicAddress, testNet)
        // A server that reached us only locally takes us back to local.
        XCTAssertEqual(tracker.record(server: servers[0], status: .ok, address: linkLocal), .local)
        var single = ReachabilityTracker(threshold: 1)
        XCTAssertEqual(single.record(server: servers[0], status: .ok, address: nil), .local, "OK without an address proves nothing public")
        XCTAssertEqual(single.record(server: servers[0], status: .ok, address: testNet), .public)
        XCTAssertEqual(single.record(server: servers[0], status: .dialError, address: nil), .private)
        XCTAssertEqual(Reachability.local.rawValue, "local")
        XCTAssertEqual(Reachability.local.text, "local (reachable on the local network only)")
        XCTAssertEqual(Reachability.public.text, "public")
    }

    /// On loopback every node is reachable, but only from this machine: a
    /// client asking two servers is reachable on the local network only.
    func testClientReachedOnLoopbackIsLocal() async throws {
        var configuration = AutoNATService.Configuration()
        configuration.probe = false
        var servers: [Multiaddr] = []
        for _ in 0..<2 {
            let (server, address) = try await makeTestHost(group: group)
            hosts.append(server)
            AutoNATService(host: server, configuration: configuration).start()
            servers.append(address)
        }
        let (client, _) = try await makeTestHost(group: group)
        hosts.append(client)
        let autonat = AutoNATService(host: client, configuration: configuration)
        autonat.start()
        for address in servers {
            let connection = try await client.connect(address)
            // Wait for identify to tell us the server speaks AutoNAT.
            try await waitUntil("identify listed the server's AutoNAT protocol") { client.peerStore.info(connection.remotePeer)?.protocols.contains(AutoNATService.protocolID) ?? false }
        }
        let (status, reached) = try await autonat.ask(try XCTUnwrap(servers[0].peerID))
        XCTAssertEqual(status, .ok)
        XCTAssertEqual(reached?.components.first, .ip4([127, 0, 0, 1]))
        let reachability = await autonat.probe()
        XCTAssertEqual(reachability, .local)
        XCTAssertNil(autonat.publicAddress)
    }

    /// A client that cannot be dialled at the IP the server sees (it listens on
    /// 127.0.0.2 and connects from 127.0.0.1, as a host behind a NAT) is private.
    func testClientUnreachableAtItsObservedIPIsPrivate() async throws {
        var configuration = AutoNATService.Configuration()
        configuration.probe = false
        configuration.threshold = 1
        let (server, serverAddress) = try await makeTestHost(group: group)
        hosts.append(server)
        AutoNATService(host: server, configuration: configuration).start()
        let (client, _) = try await makeTestHost(group: group, listen: try Multiaddr("/ip4/127.0.0.2/tcp/0"))
        hosts.append(client)
        let autonat = AutoNATService(host: client, configuration: configuration)
        autonat.start()
        let changes = autonat.reachabilityChanges()
        let connection = try await client.connect(serverAddress)
        XCTAssertEqual(connection.localAddress?.components.first, .ip4([127, 0, 0, 1]))
        try await waitUntil("identify listed the server's AutoNAT protocol") { client.peerStore.info(connection.remotePeer)?.protocols.contains(AutoNATService.protocolID) ?? false }
        let (status, _) = try await autonat.ask(connection.remotePeer)
        XCTAssertEqual(status, .dialError)
        XCTAssertEqual(autonat.reachability, .private)
        var iterator = changes.makeAsyncIterator()
        let change = await iterator.next()
        XCTAssertEqual(change, .private)
        await autonat.stop()
    }

    /// QUIC addresses are dialled back too, moved to the observed IP as TCP ones are.
    func testServerMovesQUICAddressesToTheObservedIP() throws {
        let observed = try Multiaddr("/ip4/203.0.113.7/udp/53211/quic-v1")
        let claimed = try [
            "/ip4/10.0.0.2/udp/4001/quic-v1", "/ip4/10.0.0.2/udp/4001/quic", "/ip4/10.0.0.2/udp/4001/quic-v1/webtransport",
            "/ip4/10.0.0.2/tcp/4002/p2p/\(alice)",
        ].map { try Multiaddr($0) }
        XCTAssertEqual(
            AutoNATServerPolicy.candidates(claimed, observed: observed, max: 8),
            try ["/ip4/203.0.113.7/udp/4001/quic-v1", "/ip4/203.0.113.7/tcp/4002"].map { try Multiaddr($0) })
    }

    /// A client that listens on QUIC only is dialled back over QUIC, from the
    /// server's own dial-back transport; a server without one does not dial
    /// QUIC from its listening socket (the reverse of the client's flow).
    func testQUICClientIsDialledBackFromASocketOfTheServersOwn() async throws {
        var configuration = AutoNATService.Configuration()
        configuration.probe = false
        configuration.threshold = 1
        func quicHost() async throws -> (Libp2pHost, Multiaddr) {
            let (host, address) = try await makeTestHost(
                group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
            hosts.append(host)
            return (host, address)
        }
        var withOwn = configuration
        withOwn.dialBackTransports = [QUICTransport(group: group)]
        let (server, serverAddress) = try await quicHost()
        AutoNATService(host: server, configuration: withOwn).start()
        let (bare, bareAddress) = try await quicHost()
        AutoNATService(host: bare, configuration: configuration).start()
        let (client, _) = try await quicHost()
        let autonat = AutoNATService(host: client, configuration: configuration)
        autonat.start()
        for address in [serverAddress, bareAddress] {
            let connection = try await client.connect(address)
            try await waitUntil("identify listed the server's AutoNAT protocol") { client.peerStore.info(connection.remotePeer)?.protocols.contains(AutoNATService.protocolID) ?? false }
        }
        let (status, reached) = try await autonat.ask(try XCTUnwrap(serverAddress.peerID))
        XCTAssertEqual(status, .ok)
        XCTAssertEqual(reached, client.listenAddresses.first)
        let (refused, _) = try await autonat.ask(try XCTUnwrap(bareAddress.peerID))
        XCTAssertEqual(refused, .dialError)
    }

    func refusal(_ result: Result<[Multiaddr], AutoNATServerPolicy.Refusal>) -> AutoNATStatus? {
        if case .failure(let refusal) = result { return refusal.status }
        return nil
    }
}
