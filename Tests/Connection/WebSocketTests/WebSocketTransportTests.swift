import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import Synchronization
import TestSupport
import Transport
import WebSocket
import XCTest

/// Serves one protocol whose handler reads nothing until `open()`, then counts all it reads.
final class SlowReaderAcceptor: InboundStreamAcceptor {
    static let protocolID = "/p2pchat/test/slow/1.0.0"
    private let gate = AsyncStream<Void>.makeStream()
    private let total = AsyncThrowingStream<Int, Error>.makeStream()

    func supports(protocolID: String) -> Bool { protocolID == Self.protocolID }

    func accept(_ stream: MuxedStream) {
        let gate = self.gate.stream
        let total = self.total.continuation
        Task {
            for await _ in gate { break }
            var count = 0
            do {
                while let chunk = try await stream.read() { count += chunk.readableBytes }
                total.yield(count)
            } catch {
                total.finish(throwing: error)
            }
            await stream.close()
        }
    }

    func open() {
        gate.continuation.yield()
    }

    /// What the handler read in all, once the stream ended.
    func received() async throws -> Int {
        for try await count in total.stream { return count }
        throw TransportError.connectionClosed
    }
}

/// The connections a node accepted.
final class InboundConnections: Sendable {
    private let connections = Mutex<[Connection]>([])

    func add(_ connection: Connection) {
        connections.withLock { $0.append(connection) }
    }

    var all: [Connection] { connections.withLock { $0 } }

    /// Waits (polling, with a deadline) until `count` connections arrived.
    func waitFor(count: Int) async throws -> [Connection] {
        try await waitUntil("\(count) inbound connections arrived") { all.count >= count }
        return all
    }
}

/// A node: a TCP transport for its key, acceptor and upgrade, and the /ws transport on it.
struct Node {
    let peer: PeerID
    let transport: TransportNode
    let inbound: InboundConnections

    init(group: EventLoopGroup, acceptor: InboundStreamAcceptor = EchoPingAcceptor()) {
        let inbound = InboundConnections()
        transport = TransportNode(
            transport: WebSocketTransport(group: group), acceptor: acceptor, onInboundConnection: { inbound.add($0) })
        peer = transport.peer
        self.inbound = inbound
    }
}

final class WebSocketTransportTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    // MARK: - Swift to Swift

    func testEchoStreamsAndPingOverIPv4() async throws {
        try await exerciseConnection(listenOn: "/ip4/127.0.0.1/tcp/0/ws")
    }

    func testEchoStreamsAndPingOverIPv6() async throws {
        try await exerciseConnection(listenOn: "/ip6/::1/tcp/0/ws")
    }

    private func exerciseConnection(listenOn text: String) async throws {
        let server = Node(group: group)
        let client = Node(group: group)
        let listener: Listener
        do {
            listener = try await server.transport.listen(on: Multiaddr(text))
        } catch {
            throw XCTSkip("cannot listen on \(text): \(error)")
        }
        let parts = listener.address.components
        XCTAssertEqual(parts.last, .ws)
        XCTAssertEqual(parts.count, 3)
        guard case .tcp(let port) = parts[1] else { return XCTFail("no tcp port in \(listener.address)") }
        XCTAssertNotEqual(port, 0)
        XCTAssertEqual(parts[0].name, text.hasPrefix("/ip6") ? "ip6" : "ip4")

        let connection = try await withDeadline(20) {
            try await client.transport.dial(listener.address.encapsulating(.p2p(server.peer.bytes)))
        }
        XCTAssertEqual(connection.remotePeer, server.peer)
        XCTAssertEqual(connection.direction, .outbound)
        let accepted = try await server.inbound.waitFor(count: 1)
        XCTAssertEqual(accepted.first?.remotePeer, client.peer)
        XCTAssertEqual(accepted.first?.direction, .inbound)

        // A few MiB on one stream: more than a frame, a Yamux window and a socket buffer.
        let data = patternBytes(count: 4 * 1024 * 1024 + 17, seed: 1)
        let echoed = try await withDeadline(60) { try await echo(data, over: connection) }
        XCTAssertEqual(echoed.count, data.count)
        XCTAssertTrue(echoed == data, "echoed bytes differ")

        // Several streams at once, interleaved on the one WebSocket.
        let intact = try await withDeadline(60) {
            try await echoConcurrently(8, over: connection, bytes: 300 * 1024, seed: 2, chunk: 8 * 1024)
        }
        XCTAssertEqual(intact, 8)

        let rtts = try await withDeadline(20) { try await PingService.ping(connection, count: 3) }
        XCTAssertEqual(rtts.count, 3)

        await connection.close()
        try await withDeadline(10) { try await accepted[0].closeFuture.get() }
        await listener.close()
    }

    func testWrongExpectedPeerIsRefused() async throws {
        let server = Node(group: group)
        let client = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let stranger = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        do {
            _ = try await withDeadline(20) {
                try await client.transport.dial(listener.address.encapsulating(.p2p(stranger.bytes)))
            }
            XCTFail("dial to the wrong peer id succeeded")
        } catch let error as TransportError {
            guard case .peerIDMismatch(stranger, server.peer) = error else { return XCTFail("unexpected \(error)") }
        }
        // The right id still connects.
        let connection = try await withDeadline(20) {
            try await client.transport.dial(listener.address.encapsulating(.p2p(server.peer.bytes)))
        }
        XCTAssertEqual(connection.remotePeer, server.peer)
        await connection.close()
        await listener.close()
    }

    func testDialWithoutPeerIDAcceptsAnyPeer() async throws {
        let server = Node(group: group)
        let client = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let connection = try await withDeadline(20) { try await client.transport.dial(listener.address) }
        XCTAssertEqual(connection.remotePeer, server.peer)
        await connection.close()
        await listener.close()
    }

    /// A reader that does not read makes the writer wait: what the writer hands
    /// over stays within the stream's window plus its send bound (and one write),
    /// as over TCP; then everything arrives once the reader reads.
    func testSlowReaderMakesTheWriterWait() async throws {
        let gate = SlowReaderAcceptor()
        let server = Node(group: group, acceptor: gate)
        let client = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let connection = try await withDeadline(20) { try await client.transport.dial(listener.address) }
        let stream = try await connection.newStream(protocols: [SlowReaderAcceptor.protocolID])
        let written = Atomic<Int>(0)
        let chunk = ByteBuffer(repeating: 7, count: 64 * 1024)
        let total = 8 * 1024 * 1024
        let writer = Task {
            while written.load(ordering: .relaxed) < total {
                try await stream.write(chunk)
                written.add(chunk.readableBytes, ordering: .relaxed)
            }
            try await stream.closeWrite()
        }
        // Wait until the writer is stuck: no progress for 300 ms.
        let deadline = ContinuousClock.now + .seconds(20)
        var last = -1
        while ContinuousClock.now < deadline {
            let now = written.load(ordering: .relaxed)
            if now == last { break }
            last = now
            try await Task.sleep(for: .milliseconds(300))
        }
        let configuration = TransportConfiguration()
        let bound = Int(configuration.yamux.initialWindow) + configuration.maxQueuedBytesPerStream + chunk.readableBytes
        XCTAssertLessThanOrEqual(written.load(ordering: .relaxed), bound, "the writer ran ahead of a reader that does not read")
        XCTAssertGreaterThan(written.load(ordering: .relaxed), 0)
        gate.open()
        try await withDeadline(30) { try await writer.value }
        let received = try await withDeadline(30) { try await gate.received() }
        XCTAssertEqual(received, total)
        await connection.close()
        await listener.close()
    }

    func testManyClientsDialOneListener() async throws {
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let target = listener.address.encapsulating(.p2p(server.peer.bytes))
        let group = self.group
        try await withDeadline(60) {
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for _ in 0..<16 {
                    tasks.addTask {
                        let client = Node(group: group)
                        let connection = try await client.transport.dial(target)
                        let rtts = try await PingService.ping(connection, count: 2)
                        XCTAssertEqual(rtts.count, 2)
                        await connection.close()
                    }
                }
                try await tasks.waitForAll()
            }
        }
        let accepted = try await server.inbound.waitFor(count: 16)
        XCTAssertEqual(Set(accepted.map(\.remotePeer)).count, 16)
        await listener.close()
    }

    // MARK: - Addresses

    func testAddressPredicates() throws {
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let dialable = [
            "/ip4/127.0.0.1/tcp/4001/ws", "/ip6/::1/tcp/4001/ws", "/dns4/example.com/tcp/80/ws",
            "/dns6/example.com/tcp/443/ws", "/dns/example.com/tcp/8080/ws/p2p/\(peer)",
        ]
        for text in dialable {
            XCTAssertTrue(WebSocketTransport.canDial(try Multiaddr(text)), text)
        }
        XCTAssertTrue(WebSocketTransport.canListen(try Multiaddr("/ip4/0.0.0.0/tcp/0/ws")))
        XCTAssertTrue(WebSocketTransport.canListen(try Multiaddr("/ip6/::/tcp/0/ws")))
        XCTAssertFalse(WebSocketTransport.canListen(try Multiaddr("/dns4/example.com/tcp/80/ws")))
        let refused = [
            "/ip4/127.0.0.1/tcp/4001", "/ip4/127.0.0.1/tcp/4001/wss", "/ip4/127.0.0.1/tcp/4001/tls/ws",
            "/ip4/127.0.0.1/udp/4001/ws", "/ip4/127.0.0.1/tcp/4001/ws/ws", "/dnsaddr/example.com/tcp/1/ws",
        ]
        for text in refused {
            XCTAssertFalse(WebSocketTransport.canDial(try Multiaddr(text)), text)
            XCTAssertFalse(WebSocketTransport.canListen(try Multiaddr(text)), text)
        }
    }

    func testSecureWebSocketIsRefusedClearly() async throws {
        let client = Node(group: group)
        for text in ["/ip4/127.0.0.1/tcp/4001/wss", "/dns4/example.com/tcp/443/tls/ws"] {
            do {
                _ = try await client.transport.dial(Multiaddr(text))
                XCTFail("dialed \(text)")
            } catch WebSocketError.secureWebSocketUnsupported(let address) {
                XCTAssertEqual(address, text)
            }
            do {
                _ = try await client.transport.listen(on: Multiaddr(text))
                XCTFail("listened on \(text)")
            } catch WebSocketError.secureWebSocketUnsupported {}
        }
        do {
            _ = try await client.transport.dial(Multiaddr("/ip4/127.0.0.1/tcp/4001"))
            XCTFail("dialed a TCP address")
        } catch WebSocketError.unsupportedAddress {}
    }

    func testRefusedConnectionIsADialError() async throws {
        let client = Node(group: group)
        // Bind a port and close it again: nothing listens there.
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        await listener.close()
        do {
            _ = try await withDeadline(20) { try await client.transport.dial(listener.address) }
            XCTFail("dial succeeded")
        } catch TransportError.dialFailed {}
    }

    // MARK: - Misbehaving peers

    /// Sends `request`, reads until the server closes; what it sent back.
    private func rawExchange(
        with address: Multiaddr, _ script: @escaping @Sendable (NIOAsyncChannelOutboundWriter<ByteBuffer>) async throws -> Void
    ) async throws -> [UInt8] {
        let parts = address.components
        guard case .tcp(let port) = parts[1] else { throw TransportError.unsupportedAddress("\(address)") }
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: Int(port)) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        return try await withDeadline(15) {
            try await channel.executeThenClose { inbound, outbound in
                try await script(outbound)
                var received: [UInt8] = []
                do {
                    for try await chunk in inbound { received += chunk.readableBytesView }
                } catch {
                    // A reset is a hang-up too.
                }
                return received
            }
        }
    }

    /// The listener answers and then still upgrades real dials.
    private func assertStillServing(_ server: Node, _ listener: Listener) async throws {
        let client = Node(group: group)
        let connection = try await withDeadline(20) { try await client.transport.dial(listener.address) }
        let rtts = try await withDeadline(20) { try await PingService.ping(connection, count: 1) }
        XCTAssertEqual(rtts.count, 1)
        await connection.close()
    }

    func testPlainHTTPRequestIsRefused() async throws {
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let response = try await rawExchange(with: listener.address) { outbound in
            try await outbound.write(ByteBuffer(string: "GET /index.html HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        }
        let text = String(decoding: response, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 426"), text)
        XCTAssertTrue(text.lowercased().contains("upgrade: websocket"), text)
        // An upgrade request without a key: a malformed WebSocket upgrade.
        let badUpgrade = try await rawExchange(with: listener.address) { outbound in
            try await outbound.write(
                ByteBuffer(
                    string: "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Version: 13\r\n\r\n"))
        }
        XCTAssertTrue(String(decoding: badUpgrade, as: UTF8.self).hasPrefix("HTTP/1.1 400"))
        try await assertStillServing(server, listener)
        let accepted = try await server.inbound.waitFor(count: 1)
        XCTAssertEqual(accepted.count, 1, "only the real dial became a connection")
        await listener.close()
    }

    /// Issue 25: only what RFC 6455 §4.1 allows upgrades: `GET`, HTTP/1.1 or
    /// later, and the path libp2p's `/ws` dials (`/`); others get a 400.
    func testOnlyAGetOfSlashOverHTTP11Upgrades() async throws {
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let upgrade =
            "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        for line in ["POST / HTTP/1.1", "GET / HTTP/1.0", "GET /anything HTTP/1.1", "PUT /x HTTP/1.1"] {
            let response = try await rawExchange(with: listener.address) { outbound in
                try await outbound.write(ByteBuffer(string: line + "\r\n" + upgrade))
            }
            let text = String(decoding: response, as: UTF8.self)
            XCTAssertTrue(text.hasPrefix("HTTP/1.1 400") || text.hasPrefix("HTTP/1.0 400"), "\(line): \(text)")
        }
        // A GET of / with a query still upgrades (the query names nothing to libp2p), as does the plain one.
        for line in ["GET / HTTP/1.1", "GET /?x=1 HTTP/1.1"] {
            let response = try await rawExchange(with: listener.address) { outbound in
                try await outbound.write(ByteBuffer(string: line + "\r\n" + upgrade))
                try await outbound.write(ByteBuffer(bytes: [0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]))
            }
            XCTAssertTrue(String(decoding: response, as: UTF8.self).hasPrefix("HTTP/1.1 101"), line)
        }
        try await assertStillServing(server, listener)
        await listener.close()
    }

    func testGarbageInsteadOfUpgradeClosesTheConnection() async throws {
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let start = ContinuousClock.now
        // A libp2p peer that forgot the WebSocket: multistream-select straight away.
        let response = try await rawExchange(with: listener.address) { outbound in
            try await outbound.write(ByteBuffer(bytes: [0x13] + Array("/multistream/1.0.0\n".utf8) + [0, 0xff, 0xfe, 0x0d, 0x0a, 0x0d, 0x0a]))
        }
        // Closed at once (not by the handshake timeout) after a 400.
        let text = String(decoding: response, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 400"), text)
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(5))
        try await assertStillServing(server, listener)
        await listener.close()
    }

    func testTextFrameClosesTheConnection() async throws {
        let server = Node(group: group)
        let listener = try await server.transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let response = try await rawExchange(with: listener.address) { outbound in
            try await outbound.write(
                ByteBuffer(
                    string: "GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"))
            // A masked text frame "hi" (the key is zero, so the payload reads as is).
            try await outbound.write(ByteBuffer(bytes: [0x81, 0x82, 0, 0, 0, 0, 0x68, 0x69]))
        }
        let text = String(decoding: response, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("HTTP/1.1 101"), text)
        // RFC 6455's sample key and its accept value.
        XCTAssertTrue(text.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), text)
        // A close frame with status 1002 (protocol error), unmasked from the server, then the end.
        XCTAssertTrue(response.ends(with: [0x88, 0x02, 0x03, 0xEA]), "\(response.suffix(8))")
        try await assertStillServing(server, listener)
        await listener.close()
    }

    func testHandshakeTimeoutClosesSilentConnections() async throws {
        var configuration = WebSocketConfiguration()
        configuration.handshakeTimeout = .milliseconds(300)
        let transport = TransportNode(
            transport: WebSocketTransport(group: group, configuration: configuration), acceptor: EchoPingAcceptor())
        let listener = try await transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let start = ContinuousClock.now
        // Says nothing: the server hangs up once the handshake time is over.
        let response = try await rawExchange(with: listener.address) { _ in }
        XCTAssertEqual(response, [])
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
        await listener.close()
    }
}

extension Array where Element == UInt8 {
    func ends(with suffix: [UInt8]) -> Bool {
        count >= suffix.count && Array(self[(count - suffix.count)...]) == suffix
    }
}
