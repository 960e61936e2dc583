import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import TestSupport
import Transport
import XCTest

/// Each limit of `HostLimits`: hit, the refusal observed and counted, and the
/// node still serving a legitimate peer.
final class HostLimitsTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func makeHost(_ configure: (inout HostLimits) -> Void = { _ in }) async throws -> (Libp2pHost, Multiaddr) {
        var limits = HostLimits()
        configure(&limits)
        let host = try Libp2pHost(key: .generateEd25519(), group: group, security: [NoiseSecurity()], limits: limits)
        PingService(host: host).start()
        host.setStreamHandler(echoProtocol) { stream in
            while let chunk = try? await stream.read() {
                try? await stream.write(chunk)
            }
        }
        let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
        return (host, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
    }

    /// Whether `connection` is closed (by the remote) within `seconds`.
    func isClosed(_ connection: Connection, within seconds: Double = 5) async -> Bool {
        (try? await withDeadline(seconds) { try await connection.closeFuture.get() }) != nil
    }

    func assertServes(_ address: Multiaddr) async throws {
        let (client, _) = try await makeHost()
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
    }

    func testConnectionsInTotal() async throws {
        let (server, address) = try await makeHost { $0.maxConnections = 2 }
        var clients: [(Libp2pHost, Connection)] = []
        for _ in 0..<2 {
            let (client, _) = try await makeHost()
            clients.append((client, try await client.connect(address)))
        }
        let (extra, _) = try await makeHost()
        let refused = try await extra.connect(address)
        let closed = await isClosed(refused)
        XCTAssertTrue(closed, "a third connection was kept")
        XCTAssertEqual(server.limitCounters.refusedConnections[.connections(2)], 1)
        // The first two still work; once one leaves, a new peer is served.
        let rtts = try await PingService.ping(clients[0].1, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await clients[1].0.close()
        try await waitUntil("the server forgot the closed connection") { server.connections.count == 1 }
        try await assertServes(address)
        await extra.close()
        await clients[0].0.close()
        await server.close()
    }

    func testInboundPerIP() async throws {
        let (server, address) = try await makeHost {
            $0.maxInboundPerIP = 1
            $0.limitLoopback = true
        }
        let (first, _) = try await makeHost()
        _ = try await first.connect(address)
        let (second, _) = try await makeHost()
        let refused = try await second.connect(address)
        let closed = await isClosed(refused)
        XCTAssertTrue(closed, "a second connection from one IP was kept")
        XCTAssertEqual(server.limitCounters.refusedConnections[.inboundPerIP(1)], 1)
        await first.close()
        try await waitUntil("the server forgot the closed connection") { server.connections.isEmpty }
        try await assertServes(address)
        await second.close()
        await server.close()
    }

    func testConnectionsPerPeer() async throws {
        let (server, address) = try await makeHost { $0.maxConnectionsPerPeer = 1 }
        let (client, _) = try await makeHost()
        let kept = try await client.connect(address)
        // A second connection of the same peer, dialled around the host's reuse.
        let transport = try XCTUnwrap(client.transports.first { $0.canDial(address) })
        let second = try await transport.dial(address, upgrader: client.upgrader, role: .initiator)
        let closed = await isClosed(second)
        XCTAssertTrue(closed, "a second connection of one peer was kept")
        XCTAssertEqual(server.limitCounters.refusedConnections[.connectionsPerPeer(1)], 1)
        let rtts = try await PingService.ping(kept, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
        await server.close()
    }

    func testDialsInFlightAndBackoff() async throws {
        let (dialer, _) = try await makeHost {
            $0.maxDialsInFlight = 1
            $0.dialBackoff = .seconds(60)
        }
        // A TCP listener that never answers: a dial to it waits in the upgrade.
        let accepted = Counter()
        let silent = try await ServerBootstrap(group: group).childChannelInitializer { channel in
            accepted.add(1)
            return channel.eventLoop.makeSucceededVoidFuture()
        }.bind(host: "127.0.0.1", port: 0).get()
        let silentPort = try XCTUnwrap(silent.localAddress?.port)
        let stuck = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        dialer.peerStore.addAddresses([try Multiaddr("/ip4/127.0.0.1/tcp/\(silentPort)")], for: stuck)
        let pending = Task { try await dialer.connect(to: stuck) }
        // The silent listener has the dial's connection: the dial holds its slot.
        try await waitUntil("the first dial reached the silent listener") { accepted.value == 1 }
        let other = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        dialer.peerStore.addAddresses([try Multiaddr("/ip4/127.0.0.1/tcp/1")], for: other)
        do {
            _ = try await dialer.connect(to: other)
            XCTFail("a second dial went out beyond the limit")
        } catch HostError.limitReached {
        }
        XCTAssertEqual(dialer.limitCounters.refusedDials, 1)
        pending.cancel()
        _ = try? await pending.value
        // The slot is free again: the refused address fails, then backs off.
        do {
            _ = try await dialer.connect(to: other)
            XCTFail("dialled a closed port")
        } catch HostError.dialFailed {
        }
        do {
            _ = try await dialer.connect(to: other)
            XCTFail("redialled a failed address at once")
        } catch HostError.dialBackoff {
        }
        XCTAssertEqual(dialer.limitCounters.backedOffAddresses, 1)
        // A legitimate peer is still dialled.
        let (server, address) = try await makeHost()
        dialer.peerStore.addAddresses([address.withoutP2P], for: server.localPeer)
        let connection = try await dialer.connect(to: server.localPeer)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        try await silent.close()
        await dialer.close()
        await server.close()
    }

    func testInboundStreamsPerProtocol() async throws {
        let (server, address) = try await makeHost { $0.maxInboundStreamsPerProtocol = 2 }
        let (client, _) = try await makeHost()
        let connection = try await client.connect(address)
        var held: [MuxedStream] = []
        for _ in 0..<2 {
            let stream = try await connection.newStream(protocols: [echoProtocol])
            try await stream.write(ByteBuffer(bytes: [1]))
            _ = try await stream.read()
            held.append(stream)
        }
        let third = try await connection.newStream(protocols: [echoProtocol])
        do {
            try await third.write(ByteBuffer(bytes: [1]))
            _ = try await withDeadline(5) { try await third.read() }
            XCTFail("a third echo stream was served")
        } catch TransportError.streamReset {
        }
        XCTAssertEqual(server.limitCounters.refusedStreams[echoProtocol], 1)
        // Other protocols are not affected, and a slot freed is taken again.
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        try await held[0].closeWrite()
        while try await held[0].read() != nil {}
        try await waitUntil("a stream slot freed") {
            guard let stream = try? await connection.newStream(protocols: [echoProtocol]) else { return false }
            defer { stream.reset() }
            guard (try? await stream.write(ByteBuffer(bytes: [2]))) != nil else { return false }
            return (try? await withDeadline(2) { try await stream.read() }) != nil
        }
        await client.close()
        await server.close()
    }

    func testIdleConnectionsAreClosed() async throws {
        let (server, address) = try await makeHost {
            $0.idleTimeout = .milliseconds(500)
            $0.maintenanceInterval = .milliseconds(100)
        }
        let (idle, _) = try await makeHost()
        let idleConnection = try await idle.connect(address)
        let (busy, _) = try await makeHost()
        let busyConnection = try await busy.connect(address)
        // An open stream keeps a connection.
        let stream = try await busyConnection.newStream(protocols: [echoProtocol])
        let closed = await isClosed(idleConnection, within: 5)
        XCTAssertTrue(closed, "an idle connection was kept")
        XCTAssertGreaterThanOrEqual(server.limitCounters.idleClosed, 1)
        try await stream.write(ByteBuffer(bytes: [1, 2, 3]))
        let echoed = try await stream.read()
        XCTAssertEqual(echoed.map { Array($0.readableBytesView) }, [1, 2, 3])
        XCTAssertTrue(busyConnection.isActive)
        stream.reset()
        await idle.close()
        await busy.close()
        await server.close()
    }

    func testTrimmingKeepsProtectedPeers() async throws {
        let (server, address) = try await makeHost {
            $0.highWater = 3
            $0.lowWater = 2
            $0.gracePeriod = .zero
            $0.idleTimeout = nil
            $0.maintenanceInterval = .milliseconds(100)
        }
        var clients: [(Libp2pHost, Connection)] = []
        for _ in 0..<4 {
            let (client, _) = try await makeHost()
            clients.append((client, try await client.connect(address)))
        }
        server.protect(clients[0].0.localPeer, tag: "test")
        try await waitUntil("trimmed to the low-water mark") { server.connections.count == 2 }
        XCTAssertEqual(server.limitCounters.trimmed, 2)
        XCTAssertTrue(server.connections.contains { $0.remotePeer == clients[0].0.localPeer })
        let rtts = try await PingService.ping(clients[0].1, count: 1)
        XCTAssertEqual(rtts.count, 1)
        for (client, _) in clients { await client.close() }
        await server.close()
    }

    /// Issue 25, row 10: addresses that hold every connection slot, and refill
    /// what is taken from them at once (well within the grace period), cannot
    /// keep others out: a newcomer from an address holding fewer takes the
    /// place of the newest connection of the most crowded address, and a
    /// crowded address's refill is refused.
    func testAddressesHoldingTheConnectionSlotsCannotKeepOthersOut() async throws {
        try await withDeadline(120) { [group] in
            var limits = HostLimits()
            limits.maxConnections = 40
            limits.maxInboundPerIP = 4
            limits.limitLoopback = true
            limits.idleTimeout = nil
            let (server, address) = try await makeTestHost(group: group, limits: limits)
            /// A host dialling from `ip` (a loopback address of its own): port reuse makes its dials leave from there.
            @Sendable func host(at ip: String) async throws -> Libp2pHost {
                try await makeTestHost(
                    group: group, transports: [TCPTransport(group: group, reusePort: true)],
                    listen: Multiaddr("/ip4/\(ip)/tcp/0")
                ).0
            }
            // 20 addresses, two connections each: every slot.
            var attackers: [(ip: String, host: Libp2pHost, connection: Connection)] = []
            for index in 0..<40 {
                let ip = "127.0.0.\(2 + index % 20)"
                let attacker = try await host(at: ip)
                attackers.append((ip, attacker, try await attacker.connect(address)))
            }
            try await waitUntil("the server holds the 40") { server.connections.count == 40 }
            XCTAssertEqual(Set(server.connections.compactMap(\.remoteAddress.ipAddressText)).count, 20, "not from 20 addresses")

            // Others, each from an address of its own, get in and are served; each time, the attackers refill.
            var others: [(Libp2pHost, Connection)] = []
            var displaced: Set<PeerID> = []
            for index in 0..<8 {
                let other = try await host(at: "127.0.0.\(100 + index)")
                let connection = try await other.connect(address)
                let rtts = try await PingService.ping(connection, count: 1)
                XCTAssertEqual(rtts.count, 1, "a peer from another address was not served")
                others.append((other, connection))
                try await waitUntil("the server closed one connection to make room") { server.connections.count == 40 }
                // The address that lost a connection dials again at once: refused.
                let serverPeers = Set(server.connections.map(\.remotePeer))
                for attacker in attackers where !serverPeers.contains(attacker.host.localPeer) && !displaced.contains(attacker.host.localPeer) {
                    displaced.insert(attacker.host.localPeer)
                    let refill = try await host(at: attacker.ip)
                    let again = try await refill.connect(address)
                    let closed = (try? await withDeadline(5) { try await again.closeFuture.get() }) != nil
                    XCTAssertTrue(closed, "an address holding more took a slot back")
                    await refill.close()
                }
            }
            XCTAssertEqual(displaced.count, 8)
            for (other, connection) in others {
                XCTAssertTrue(connection.isActive, "\(other.localPeer) lost its connection")
                let rtts = try await PingService.ping(connection, count: 1)
                XCTAssertEqual(rtts.count, 1)
            }
            XCTAssertEqual(server.limitCounters.refusedConnections[.connectionSlots], 8)
            for (other, _) in others { await other.close() }
            for attacker in attackers { await attacker.host.close() }
            await server.close()
        }
    }
}
