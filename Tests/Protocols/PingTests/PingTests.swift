import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
@testable import Ping
import TestSupport
import Transport
import XCTest

/// `/ipfs/ping/1.0.0` between Swift nodes, over TCP and in memory.
final class PingTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func testPingBetweenSwiftNodes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        XCTAssertEqual(connection.remotePeer, server.localPeer)
        let rtts = try await PingService.ping(connection, count: 3)
        XCTAssertEqual(rtts.count, 3)
        XCTAssertTrue(rtts.allSatisfy { $0 > .zero })
        await client.close()
        await server.close()
    }

    func testPingOverMemory() async throws {
        let network = MemoryNetwork()
        let transports: [any Transport] = [MemoryTransport(group: group, network: network)]
        let (server, address) = try await makeTestHost(group: group, transports: transports, listen: Multiaddr([.memory(0)]))
        let (client, _) = try await makeTestHost(group: group, transports: transports, listen: Multiaddr([.memory(0)]))
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 5)
        XCTAssertEqual(rtts.count, 5)
        await client.close()
        await server.close()
    }

    /// `stop` ends a ping stream waiting for the rest of a payload, and later pings are refused.
    func testStopEndsTheStreamsItServesAndRefusesNewOnes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let ping = PingService(host: server)
        ping.start()
        let connection = try await client.connect(address)
        let served = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(served.count, 1)
        try await assertStopEndsService(
            PingService.protocolID, over: connection, running: { ping.tasks.running },
            block: { stream in try await stream.write(ByteBuffer(repeating: 7, count: 10)) },
            stop: { await ping.stop() })
        await client.close()
        await server.close()
    }
}
