import Host
@testable import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import TestSupport
import Transport
import XCTest

/// `/ipfs/id/1.0.0` and `/ipfs/id/push/1.0.0` between Swift nodes.
final class IdentifyTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// A peer we see at a public address (or through a relay) is told only our
    /// addresses it could dial: not our loopback or LAN ones.
    func testListenAddressesFollowWhereThePeerIsSeen() async throws {
        let host = try Libp2pHost(key: .generateEd25519(), group: group, transports: [TCPTransport(group: group)], security: testSecurity)
        defer { Task { await host.close() } }
        try await host.listen(on: [try Multiaddr("/ip4/127.0.0.1/tcp/0")])
        let identify = IdentifyService(host: host, agentVersion: "x")
        func listed(seenAt remote: String) throws -> [Multiaddr] {
            try identify.localMessage(observed: try Multiaddr(remote)).listenAddrs.map { try Multiaddr(bytes: Array($0)) }
        }
        let loopback = try XCTUnwrap(host.listenAddresses.first)
        XCTAssertEqual(try listed(seenAt: "/ip4/127.0.0.1/tcp/5"), [loopback])
        XCTAssertEqual(try listed(seenAt: "/ip4/203.0.113.9/tcp/5"), [])
        XCTAssertEqual(try listed(seenAt: "/ip4/203.0.113.10/tcp/4001/p2p-circuit"), [])
    }

    func testIdentifyBetweenSwiftNodes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let info = try await IdentifyService(host: client, agentVersion: "x").identify(connection)
        XCTAssertEqual(info.agentVersion, "p2pchat-test/0")
        XCTAssertEqual(info.protocolVersion, "ipfs/0.1.0")
        XCTAssertTrue(info.protocols.contains(PingService.protocolID))
        XCTAssertTrue(info.protocols.contains(echoProtocol))
        XCTAssertEqual(info.listenAddresses, [address.withoutP2P])
        XCTAssertEqual(info.publicKey, server.localKey.publicKey)
        await client.close()
        await server.close()
    }

    func testIdentifyPushUpdatesPeers() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let events = client.events()
        _ = try await client.connect(address)
        let serverPeer = server.localPeer
        // Wait for the server to have identified the client (so it knows the client takes pushes),
        // and the client to have identified the server.
        try await withDeadline(10) {
            while server.peerStore.info(client.localPeer)?.protocols.contains(IdentifyService.pushProtocolID) != true
                || client.peerStore.info(serverPeer)?.protocols.isEmpty != false
            {
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        server.setStreamHandler("/p2pchat/new/1.0.0") { _ in }
        try await withDeadline(10) {
            for await event in events {
                if case .peerUpdated(serverPeer) = event,
                    client.peerStore.info(serverPeer)?.protocols.contains("/p2pchat/new/1.0.0") == true
                {
                    return
                }
            }
        }
        // The push stream ends on both sides: the pusher's connection does not keep it.
        let pushed = try XCTUnwrap(server.connections.first)
        try await waitUntil("the push stream left the pusher's table", seconds: 5) { try await pushed.streamCount() == 0 }
        await client.close()
        await server.close()
    }

    /// `stop` ends a push stream waiting for its message and the connection
    /// watcher, and both protocols are refused afterwards.
    func testStopEndsTheWatcherAndTheStreamsItServes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let identify = IdentifyService(host: server, agentVersion: "stopping")
        identify.start()
        let connection = try await client.connect(address)
        // The watcher and the push stream's handler.
        try await assertStopEndsService(
            IdentifyService.pushProtocolID, over: connection,
            refused: [IdentifyService.protocolID, IdentifyService.pushProtocolID], busy: 2,
            running: { identify.tasks.running }, stop: { await identify.stop() })
        await client.close()
        await server.close()
    }
}
