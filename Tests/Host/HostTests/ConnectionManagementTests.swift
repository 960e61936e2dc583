import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Transport
import XCTest

/// One report per peer whatever the number of connections, and dials that race.
final class ConnectionManagementTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// Two peers that dial each other at the same moment (as two mDNS peers do)
    /// keep both connections and report the peer once each.
    func testSimultaneousDialsReportEachPeerOnce() async throws {
        for _ in 0..<5 {
            let (a, addressA) = try await makeTestHost(group: group)
            let (b, addressB) = try await makeTestHost(group: group)
            let eventsA = a.events()
            let eventsB = b.events()
            async let ab = a.connect(addressB)
            async let ba = b.connect(addressA)
            let (fromA, fromB) = try await (ab, ba)
            // Each connection works.
            let data = patternBytes(count: 100_000, seed: 1)
            let echoedA = try await echo(data, over: fromA)
            let echoedB = try await echo(data, over: fromB)
            XCTAssertEqual(echoedA, data)
            XCTAssertEqual(echoedB, data)
            XCTAssertEqual(a.connectedPeers, [b.localPeer])
            XCTAssertEqual(b.connectedPeers, [a.localPeer])
            await a.close()
            await b.close()
            // Closing finished every event stream: count what each host reported.
            let reportsA = await peerReports(eventsA)
            let reportsB = await peerReports(eventsB)
            XCTAssertEqual(reportsA.connected, [b.localPeer])
            XCTAssertEqual(reportsB.connected, [a.localPeer])
            XCTAssertEqual(reportsA.disconnected, [b.localPeer])
            XCTAssertEqual(reportsB.disconnected, [a.localPeer])
        }
    }

    func peerReports(_ events: AsyncStream<HostEvent>) async -> (connected: [PeerID], disconnected: [PeerID]) {
        var connected: [PeerID] = []
        var disconnected: [PeerID] = []
        for await event in events {
            switch event {
            case .peerConnected(let connection): connected.append(connection.remotePeer)
            case .peerDisconnected(let peer): disconnected.append(peer)
            default: break
            }
        }
        return (connected, disconnected)
    }

    /// A peer's first address accepts TCP and then says nothing (the upgrade
    /// would wait 15 s); the second, dialled a moment later, wins, and the
    /// first dial is cancelled (its socket closed).
    func testHappyEyeballsDialsTheNextAddressAndCancelsTheRest() async throws {
        let silentClosed = AsyncStream<Void>.makeStream()
        let silent = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ClosureWatcher(onClose: { silentClosed.continuation.yield() }))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let silentAddress = try Multiaddr(socketAddress: XCTUnwrap(silent.localAddress))
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        client.peerStore.addAddresses([silentAddress, address.withoutP2P], for: server.localPeer)
        let connection = try await withDeadline(5) { try await client.connect(to: server.localPeer) }
        XCTAssertEqual(connection.remoteAddress, address.withoutP2P)
        // The losing dial was cancelled rather than left to time out.
        try await withDeadline(5) {
            for await _ in silentClosed.stream { return }
        }
        await client.close()
        await server.close()
        try await silent.close()
    }

    func testEveryAddressFailingKeepsEachCause() async throws {
        let (client, _) = try await makeTestHost(group: group)
        let nobody = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        // Ports nothing listens on (bound then closed).
        var dead: [Multiaddr] = []
        for _ in 0..<2 {
            let channel = try await ServerBootstrap(group: group).bind(host: "127.0.0.1", port: 0).get()
            dead.append(try Multiaddr(socketAddress: XCTUnwrap(channel.localAddress)))
            try await channel.close()
        }
        client.peerStore.addAddresses(dead, for: nobody)
        do {
            _ = try await withDeadline(10) { try await client.connect(to: nobody) }
            XCTFail("connected to nobody")
        } catch HostError.dialFailed(let peer, let attempts) {
            XCTAssertEqual(peer, nobody)
            XCTAssertEqual(Set(attempts.map(\.address)), Set(dead.map { $0.encapsulating(.p2p(nobody.bytes)) }))
            for attempt in attempts {
                guard case .dialFailed = attempt.error as? TransportError else {
                    return XCTFail("unexpected cause \(attempt.error)")
                }
            }
            // Issue 22: each address once, each cause in short words (the second dial starts 250 ms later).
            let error = HostError.dialFailed(peer, attempts)
            XCTAssertEqual(
                "\(error)", "could not reach \(nobody): \(dead[0]): connection refused; \(dead[1]): connection refused")
        }
        await client.close()
    }

    /// Issue 22: a chat that learnt its own peer id at an address (its own, or
    /// another process's with a copy of its key) dialled it. Our own peer id
    /// is never dialled, whatever the address.
    func testOurOwnPeerIDIsNeverDialled() async throws {
        let (host, address) = try await makeTestHost(group: group)
        host.peerStore.addAddresses([address.withoutP2P], for: host.localPeer)
        for attempt in 0..<3 {
            do {
                switch attempt {
                case 0: _ = try await host.connect(to: host.localPeer)
                case 1: _ = try await host.connect(address)
                default: _ = try await host.dial(address, role: .initiator)
                }
                XCTFail("dialled ourselves (attempt \(attempt))")
            } catch HostError.dialSelf(let peer) {
                XCTAssertEqual(peer, host.localPeer)
                XCTAssertEqual("\(HostError.dialSelf(peer))", "\(peer) is our own peer id: not dialling ourselves")
            }
        }
        XCTAssertTrue(host.connections.isEmpty)
        await host.close()
    }

    /// Callers that ask for the same peer at once share one dial.
    func testConcurrentConnectsShareOneDial() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        client.peerStore.addAddresses([address.withoutP2P], for: server.localPeer)
        let connections = try await withThrowingTaskGroup(of: Connection.self) { tasks in
            for _ in 0..<8 { tasks.addTask { try await client.connect(to: server.localPeer) } }
            var all: [Connection] = []
            for try await connection in tasks { all.append(connection) }
            return all
        }
        XCTAssertEqual(Set(connections.map(\.id)).count, 1)
        XCTAssertEqual(client.connections.count, 1)
        await client.close()
        await server.close()
    }
}

/// Reports when a silent server's accepted connection closes.
private final class ClosureWatcher: ChannelInboundHandler, Sendable {
    typealias InboundIn = ByteBuffer
    let onClose: @Sendable () -> Void

    init(onClose: @escaping @Sendable () -> Void) {
        self.onClose = onClose
    }

    func channelInactive(context: ChannelHandlerContext) {
        onClose()
        context.fireChannelInactive()
    }
}
