import Crypto
import Foundation
import Multiformats
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Transport
import WebSocket
import XCTest

/// A TCP server that reads one HTTP request head and answers with scripted
/// bytes: stands in for servers that are not (good) WebSocket servers.
final class ScriptedServer: Sendable {
    typealias Script = @Sendable (_ requestHead: String) -> [UInt8]?

    let channel: Channel
    private let requests = RequestLog()

    var address: Multiaddr {
        try! Multiaddr(socketAddress: channel.localAddress!).encapsulating(.ws)
    }

    var receivedRequests: [String] { requests.all }

    init(group: EventLoopGroup, script: @escaping Script) async throws {
        let requests = self.requests
        channel = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        Handler(script: script) { request in requests.append(request) })
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func close() async {
        try? await channel.close()
    }

    /// The RFC 6455 accept value for a request's key.
    static func acceptValue(forRequest head: String) -> String? {
        guard
            let line = head.split(separator: "\r\n").first(where: {
                $0.lowercased().hasPrefix("sec-websocket-key:")
            })
        else { return nil }
        let key = line.dropFirst("sec-websocket-key:".count).trimmingCharacters(in: .whitespaces)
        let digest = Insecure.SHA1.hash(data: Data((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8))
        return Data(digest).base64EncodedString()
    }

    private final class Handler: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let script: Script
        let record: (String) -> Void
        var received = ""
        var answered = false

        init(script: @escaping Script, record: @escaping (String) -> Void) {
            self.script = script
            self.record = record
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !answered else { return }
            received += String(buffer: unwrapInboundIn(data))
            guard let end = received.range(of: "\r\n\r\n") else { return }
            answered = true
            let head = String(received[..<end.lowerBound])
            record(head)
            // nil: say nothing and keep the connection open.
            guard let reply = script(head) else { return }
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: reply)), promise: nil)
        }
    }
}

final class RequestLog: Sendable {
    private let requests = Mutex<[String]>([])

    func append(_ request: String) {
        requests.withLock { $0.append(request) }
    }

    var all: [String] { requests.withLock { $0 } }
}

/// The dialing side against servers that refuse, lie or misbehave.
final class DialerTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func dialer(handshakeTimeout: Duration = .seconds(10)) -> TransportNode {
        var configuration = WebSocketConfiguration()
        configuration.handshakeTimeout = handshakeTimeout
        return TransportNode(
            transport: WebSocketTransport(group: group, configuration: configuration), acceptor: EchoPingAcceptor())
    }

    func testRequestIsAPlainWebSocketUpgradeOfSlash() async throws {
        let server = try await ScriptedServer(group: group) { _ in Array("HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".utf8) }
        let port = server.address.components[1]
        do {
            let transport = dialer()
            _ = try await withDeadline(10) { try await transport.dial(server.address) }
            XCTFail("dial succeeded")
        } catch WebSocketError.upgradeRefused(_, let status) {
            XCTAssertEqual(status.code, 404)
        }
        let request = try XCTUnwrap(server.receivedRequests.first)
        let lines = request.split(separator: "\r\n").map(String.init)
        XCTAssertEqual(lines.first, "GET / HTTP/1.1")
        let headers = Dictionary(
            lines.dropFirst().map { line -> (String, String) in
                let parts = line.split(separator: ":", maxSplits: 1)
                return (parts[0].lowercased(), parts[1].trimmingCharacters(in: .whitespaces))
            }, uniquingKeysWith: { $1 })
        guard case .tcp(let portNumber) = port else { return XCTFail() }
        XCTAssertEqual(headers["host"], "127.0.0.1:\(portNumber)")
        XCTAssertEqual(headers["upgrade"]?.lowercased(), "websocket")
        XCTAssertEqual(headers["connection"]?.lowercased(), "upgrade")
        XCTAssertEqual(headers["sec-websocket-version"], "13")
        XCTAssertEqual(Data(base64Encoded: headers["sec-websocket-key"] ?? "")?.count, 16)
        XCTAssertNil(headers["sec-websocket-protocol"], "libp2p's /ws asks for no subprotocol")
        await server.close()
    }

    func testWrongAcceptValueFailsTheDial() async throws {
        let server = try await ScriptedServer(group: group) { _ in
            Array(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").utf8)
        }
        do {
            let transport = dialer()
            _ = try await withDeadline(10) { try await transport.dial(server.address) }
            XCTFail("dial succeeded")
        } catch WebSocketError.handshakeFailed {}
        await server.close()
    }

    func testTextFrameFromTheServerFailsTheDial() async throws {
        let server = try await ScriptedServer(group: group) { head in
            let accept = ScriptedServer.acceptValue(forRequest: head) ?? "?"
            // The upgrade, then an unmasked text frame "hi" instead of multistream-select.
            return Array(
                ("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    + "Sec-WebSocket-Accept: \(accept)\r\n\r\n").utf8) + [0x81, 0x02, 0x68, 0x69]
        }
        do {
            let transport = dialer()
            _ = try await withDeadline(10) { try await transport.dial(server.address) }
            XCTFail("dial succeeded")
        } catch let error as TransportError {
            // The upgrade above the WebSocket saw the violation (and the close).
            XCTAssertTrue("\(error)".contains("text frame"), "\(error)")
        }
        await server.close()
    }

    func testSilentServerTimesOut() async throws {
        let server = try await ScriptedServer(group: group) { _ in nil }
        let start = ContinuousClock.now
        do {
            let transport = dialer(handshakeTimeout: .milliseconds(300))
            _ = try await withDeadline(10) { try await transport.dial(server.address) }
            XCTFail("dial succeeded")
        } catch WebSocketError.handshakeTimeout {}
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(5))
        await server.close()
    }

    /// Cancelling a dial stuck in the upgrade closes its socket and ends it at once.
    func testCancelledDialEnds() async throws {
        let server = try await ScriptedServer(group: group) { _ in nil }
        let transport = dialer()
        let dial = Task { try await transport.dial(server.address) }
        // Wait for the request to arrive: the dial is then inside the upgrade.
        try await waitUntil("the server received the upgrade request") { !server.receivedRequests.isEmpty }
        XCTAssertEqual(server.receivedRequests.count, 1)
        let start = ContinuousClock.now
        dial.cancel()
        let outcome = try await withDeadline(5) { await dial.result }
        XCTAssertThrowsError(try outcome.get())
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2), "the dial waited for its timeout")
        await server.close()
    }

    func testSuccessWithoutUpgradeFailsTheDial() async throws {
        let server = try await ScriptedServer(group: group) { _ in Array("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".utf8) }
        do {
            let transport = dialer()
            _ = try await withDeadline(10) { try await transport.dial(server.address) }
            XCTFail("dial succeeded")
        } catch WebSocketError.upgradeRefused(_, let status) {
            XCTAssertEqual(status.code, 200)
        }
        await server.close()
    }
}
