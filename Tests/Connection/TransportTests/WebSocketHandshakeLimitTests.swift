import Foundation
import Host
import Multiformats
import NIOPosix
import Ping
import TestSupport
import Transport
import WebSocket
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// A WebSocket listener's HTTP upgrade counts among the inbound handshakes in
/// flight (issue 14): sockets held half-way through `GET /` cannot outnumber
/// the limit, and the extra one is refused at once.
final class WebSocketHandshakeLimitTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func testIncompleteHTTPUpgradesCountAsHandshakes() async throws {
        var configuration = TransportConfiguration()
        configuration.maxInboundHandshakes = 3
        let (server, address) = try await makeTestHost(
            group: group, configuration: configuration, transports: [WebSocketTransport(group: group)],
            listen: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not TCP: \(address)") }
        // Three sockets send half a request and stop: each holds a slot.
        let partial = Array("GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n".utf8)
        var held: [Int32] = []
        for _ in 0..<3 {
            let fd = rawConnect(port: Int(port))
            XCTAssertGreaterThanOrEqual(fd, 0)
            XCTAssertEqual(write(fd, partial, partial.count), partial.count)
            held.append(fd)
        }
        try await waitUntil("three handshakes in flight", seconds: 5) { server.upgrader.inboundHandshakes.inFlight >= 3 }
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 3)
        // The fourth is closed at once, counted.
        let extra = rawConnect(port: Int(port))
        XCTAssertTrue(closedByServer(extra, within: 2), "a connection beyond the limit was kept")
        close(extra)
        XCTAssertEqual(server.upgrader.inboundHandshakes.refused, 1)
        // The held ones let go of their slots when they close; then an honest WebSocket peer connects.
        for fd in held { close(fd) }
        try await waitUntil("the closed handshakes let go of their slots") { server.upgrader.inboundHandshakes.inFlight == 0 }
        let (client, _) = try await makeTestHost(
            group: group, transports: [WebSocketTransport(group: group)], listen: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        let echoed = try await echo(patternBytes(count: 50_000, seed: 3), over: connection)
        XCTAssertEqual(echoed, patternBytes(count: 50_000, seed: 3))
        // The honest connection's slot was given back once it was upgraded.
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 0)
        await client.close()
        await server.close()
    }

    func testHTTPUpgradeEndsAtTheUpgradeDeadline() async throws {
        var configuration = TransportConfiguration()
        configuration.upgradeTimeout = .seconds(1)
        let (server, address) = try await makeTestHost(
            group: group, configuration: configuration, transports: [WebSocketTransport(group: group)],
            listen: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not TCP: \(address)") }
        // A socket that never sends its request is closed at the libp2p upgrade's
        // deadline (1 s here), not the WebSocket handshake's 10 s.
        let fd = rawConnect(port: Int(port))
        let started = ContinuousClock.now
        XCTAssertTrue(closedByServer(fd, within: 5), "a silent HTTP connection outlived the deadline")
        XCTAssertLessThan(ContinuousClock.now - started, .seconds(4))
        close(fd)
        await server.close()
    }
}
