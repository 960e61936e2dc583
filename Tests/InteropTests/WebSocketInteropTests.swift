import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import TestSupport
import Transport
import WebSocket
import XCTest

/// Wire compatibility with py-libp2p 0.8.1 over `/ws` (its WebSocket transport,
/// trio-websocket underneath), both directions, at transport level.
final class WebSocketInteropTests: PythonPeerTestCase {
    override var pythonArguments: [String] { ["--transport", "ws"] }

    /// Our side: a /ws transport whose acceptor serves echo and ping.
    func makeTransport() -> (TransportNode, PeerID) {
        let node = TransportNode(transport: WebSocketTransport(group: group), acceptor: EchoPingAcceptor())
        return (node, node.peer)
    }

    func testSwiftDialsPythonOverWebSocket() async throws {
        let python = try startPython(["listen", "--port", "0", "--timeout", "240"])
        defer { if testRun?.hasSucceeded == false { print("python stderr:\n\(python.stderrTail)") } }
        let listening = try await python.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        XCTAssertTrue(address.components.contains(.ws), "\(address)")
        let (transport, _) = makeTransport()

        let connection = try await withDeadline(30) { try await transport.dial(address) }
        XCTAssertEqual(connection.remotePeer, address.peerID)
        let rtts = try await withDeadline(30) { try await PingService.ping(connection, count: 3) }
        XCTAssertEqual(rtts.count, 3)
        let data = patternBytes(count: 1024 * 1024, seed: 11)
        let back = try await withDeadline(120) { try await echo(data, over: connection) }
        XCTAssertEqual(back.count, data.count)
        XCTAssertTrue(back == data, "echoed bytes differ")
        // A few streams at once over the one WebSocket.
        let intact = try await withDeadline(120) {
            try await echoConcurrently(10, over: connection, bytes: 64 * 1024, seed: 20, chunk: 4096)
        }
        XCTAssertEqual(intact, 10)
        await connection.close()
    }

    /// More than py-libp2p's listener takes in one message (1 MiB), in our bounded frames.
    func testSwiftEchoes8MiBThroughPythonOverWebSocket() async throws {
        let python = try startPython(["listen", "--port", "0", "--timeout", "240"])
        defer { if testRun?.hasSucceeded == false { print("python stderr:\n\(python.stderrTail)") } }
        let listening = try await python.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let (transport, _) = makeTransport()
        let connection = try await withDeadline(30) { try await transport.dial(address) }
        let data = patternBytes(count: 8 * 1024 * 1024, seed: 8)
        let back = try await withDeadline(180) { try await echo(data, over: connection, chunk: 1024 * 1024) }
        XCTAssertEqual(back.count, data.count)
        XCTAssertTrue(back == data, "echoed bytes differ")
        await connection.close()
    }

    /// py-libp2p dials our /ws listener and runs `action`; returns its result line.
    func pythonDialsSwift(_ action: [String], expect event: String, within seconds: Double = 120) async throws
        -> [String: any Sendable]
    {
        let (transport, peer) = makeTransport()
        let listener = try await transport.listen(on: Multiaddr("/ip4/127.0.0.1/tcp/0/ws"))
        let target = listener.address.encapsulating(.p2p(peer.bytes))
        let result = try await pythonDials(target, action, expect: event, within: seconds)
        await listener.close()
        return result
    }

    func testPythonDialsSwiftPingOverWebSocket() async throws {
        let result = try await pythonDialsSwift(["ping", "--count", "3"], expect: "ping")
        XCTAssertNotNil(result["rtt_ms"] as? Double)
    }

    func testPythonEchoesThroughSwiftOverWebSocket() async throws {
        let result = try await pythonDialsSwift(["echo", "--bytes", "\(1024 * 1024)"], expect: "echo")
        XCTAssertEqual(result["ok"] as? Double, 1)
        XCTAssertEqual(result["bytes"] as? Double, Double(1024 * 1024))
    }

    func testPythonOpensStreamsToSwiftOverWebSocket() async throws {
        let result = try await pythonDialsSwift(["streams", "--count", "10", "--bytes", "16384"], expect: "streams")
        XCTAssertEqual(result["ok"] as? Double, 1)
        XCTAssertEqual(result["count"] as? Double, 10)
    }
}
