import Host
import Identify
import Identity
import Multiformats
import Noise
import NIOCore
import NIOPosix
import LibP2PSecurity
import Ping
import TLS
import WebSocket
import TestSupport
@testable import Transport
import XCTest

/// Hosts on the in-memory transport: the whole upgrade and the protocols
/// above it, without sockets.
final class MemoryHostTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func memoryHost(_ network: MemoryNetwork) async throws -> (Libp2pHost, Multiaddr) {
        try await makeTestHost(
            group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
    }

    func testPingIdentifyAndEchoOverMemory() async throws {
        let network = MemoryNetwork()
        let (server, address) = try await memoryHost(network)
        let (client, _) = try await memoryHost(network)
        try await withDeadline(30) {
            let connection = try await client.connect(address)
            XCTAssertEqual(connection.remotePeer, server.localPeer)
            XCTAssertEqual(connection.transport, "memory")
            XCTAssertEqual(connection.security, "/noise")
            XCTAssertEqual(connection.muxer, TransportConfiguration.yamuxProtocolID)
            XCTAssertEqual(connection.remoteAddress, address.withoutP2P)
            let rtts = try await PingService.ping(connection, count: 3)
            XCTAssertEqual(rtts.count, 3)
            let info = try await IdentifyService(host: client, agentVersion: "x").identify(connection)
            XCTAssertEqual(info.agentVersion, "p2pchat-test/0")
            XCTAssertEqual(info.listenAddresses, [address.withoutP2P])
            let data = patternBytes(count: 4 * 1024 * 1024 + 3, seed: 7)
            let echoed = try await echo(data, over: connection)
            XCTAssertEqual(echoed, data)
        }
        await client.close()
        await server.close()
    }

    func testManyStreamsAndCleanupOverMemory() async throws {
        let network = MemoryNetwork()
        let (server, address) = try await memoryHost(network)
        let (client, _) = try await memoryHost(network)
        let connection = try await client.connect(address)
        let intact = try await withDeadline(30) {
            try await echoConcurrently(50, over: connection, bytes: 10_000, seed: 0)
        }
        XCTAssertEqual(intact, 50)
        // The last closes settle on the event loop after the readers saw the ends.
        try await waitUntil("every stream leaves the table") { try await connection.trackedStreamCount() == 0 }
        await client.close()
        await server.close()
    }

    func testClosingEndsBothSidesAndDialingNothingFails() async throws {
        let network = MemoryNetwork()
        let (server, address) = try await memoryHost(network)
        let (client, _) = try await memoryHost(network)
        let events = server.events()
        let connection = try await client.connect(address)
        await connection.close()
        try await withDeadline(10) {
            for await event in events {
                if case .disconnected(let gone) = event, gone.remotePeer == client.localPeer { return }
            }
        }
        XCTAssertFalse(connection.isActive)
        do {
            _ = try await connection.newStream(protocols: [echoProtocol])
            XCTFail("a stream on a closed connection")
        } catch let error as TransportError {
            guard case .connectionClosed = error else { return XCTFail("unexpected \(error)") }
        }
        do {
            _ = try await client.connect(Multiaddr([.memory(999_999)]))
            XCTFail("dialled nothing")
        } catch let error as TransportError {
            guard case .dialFailed = error else { return XCTFail("unexpected \(error)") }
        }
        await client.close()
        await server.close()
    }

    /// A host on TCP and /ws listens on both at once and dials either
    /// (`Libp2pTests.HostBuilderTests` checks the builder's defaults).
    func testHostListensOnTCPAndWebSocketAtOnce() async throws {
        let security: [any SecurityProtocol] = [NoiseSecurity(), TLSSecurity()]
        let transports: [any Transport] = [TCPTransport(group: group), WebSocketTransport(group: group)]
        let (server, tcpAddress) = try await makeTestHost(group: group, transports: transports, security: security)
        let ws = try await server.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0/ws")])
        XCTAssertEqual(ws[0].components.last, .ws)
        let (client, _) = try await makeTestHost(group: group, transports: transports, security: security)
        let overTCP = try await client.connect(tcpAddress)
        XCTAssertEqual(overTCP.transport, "tcp")
        XCTAssertEqual(overTCP.security, "/noise")
        await overTCP.close()
        let overWebSocket = try await client.connect(ws[0].encapsulating(.p2p(server.localPeer.bytes)))
        XCTAssertEqual(overWebSocket.transport, "ws")
        XCTAssertEqual(overWebSocket.remoteAddress, ws[0])
        let data = patternBytes(count: 300_000, seed: 3)
        let echoed = try await echo(data, over: overWebSocket)
        XCTAssertEqual(echoed, data)
        await client.close()
        await server.close()
    }

    func testAHostPicksTheTransportByAddress() async throws {
        let network = MemoryNetwork()
        let transports: [any Transport] = [TCPTransport(group: group), MemoryTransport(group: group, network: network)]
        let (server, tcpAddress) = try await makeTestHost(group: group, transports: transports)
        let memory = try await server.listen(on: [Multiaddr([.memory(0)])])
        let (client, _) = try await makeTestHost(group: group, transports: transports)
        let overTCP = try await client.connect(tcpAddress)
        XCTAssertEqual(overTCP.transport, "tcp")
        await overTCP.close()
        let overMemory = try await client.connect(memory[0])
        XCTAssertEqual(overMemory.transport, "memory")
        do {
            _ = try await client.connect(Multiaddr("/ip4/127.0.0.1/udp/1/quic-v1"))
            XCTFail("dialled an address no transport takes")
        } catch let error as TransportError {
            guard case .unsupportedAddress = error else { return XCTFail("unexpected \(error)") }
        }
        await client.close()
        await server.close()
    }
}
