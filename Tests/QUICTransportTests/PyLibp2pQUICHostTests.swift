import ChildProcess
import Foundation
import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import QUICTransport
import TestSupport
import Transport
import XCTest

/// Our host and py-libp2p 0.8.1's (on aioquic) over `/quic-v1`, each dialing
/// the other: ping, identify, and 2 MiB echoed on each of 4 streams at once.
final class PyLibp2pQUICHostTests: XCTestCase {
    private static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/quic_libp2p_peer.py").path
    }

    private static func python() throws -> String {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: interop with py-libp2p needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        return python
    }

    private func quicHost() async throws -> (Libp2pHost, IdentifyService) {
        let group = MultiThreadedEventLoopGroup.singleton
        let host = try Libp2pHost(key: .generateEd25519(), group: group, transports: [QUICTransport(group: group)], security: [NoiseSecurity()])
        let identify = IdentifyService(host: host, agentVersion: "p2pchat-test/0")
        identify.start()
        PingService(host: host).start()
        host.setStreamHandler(echoProtocol) { stream in
            do {
                while let chunk = try await stream.read() { try await stream.write(chunk) }
                try await stream.closeWrite()
            } catch {
                stream.reset()
            }
        }
        return (host, identify)
    }

    func testOurHostDialsPyLibp2pOverQUIC() async throws {
        let peer = try ChildProcess(try Self.python(), [Self.script, "60"], stdinPipe: true)
        defer { peer.stop() }
        let listening = try await peer.jsonEvent("listening", within: 30)
        let port = try XCTUnwrap(listening["port"] as? Int)
        let peerID = try XCTUnwrap(listening["peer"] as? String)
        let (host, identify) = try await quicHost()
        _ = try await host.listen(on: [try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")])
        try await withDeadline(90) {
            let connection = try await host.connect(try Multiaddr("/ip4/127.0.0.1/udp/\(port)/quic-v1/p2p/\(peerID)"))
            XCTAssertEqual(connection.remotePeer.description, peerID)
            XCTAssertEqual(connection.transport, "quic-v1")
            let rtts = try await PingService.ping(connection, count: 3)
            XCTAssertEqual(rtts.count, 3)
            let info = try await identify.identify(connection)
            XCTAssertTrue(info.protocols.contains(PingService.protocolID), "py-libp2p lists ping: \(info.protocols)")
            XCTAssertTrue(info.listenAddresses.contains { $0.description.hasSuffix("/udp/\(port)/quic-v1") }, "\(info.listenAddresses)")
            try await Self.echoConcurrently(over: connection, streams: 4, bytes: 2 << 20)
        }
        peer.closeInput()
        await host.close()
    }

    func testPyLibp2pDialsOurHostOverQUIC() async throws {
        let python = try Self.python()
        let (host, _) = try await quicHost()
        let bound = try await host.listen(on: [try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")])
        let address = bound[0].encapsulating(.p2p(host.localPeer.bytes))
        let peer = try ChildProcess(python, [Self.script, "dial", "\(address)", "4", "\(2 << 20)"])
        defer { peer.stop() }
        let ping = try await peer.jsonEvent("ping", within: 40)
        XCTAssertEqual(ping["ok"] as? Bool, true, "py-libp2p's ping over our QUIC listener")
        let echo = try await peer.jsonEvent("echo", within: 120)
        XCTAssertEqual(echo["intact"] as? Int, 4, "all four streams echoed intact: \(echo)")
        XCTAssertEqual(host.connections.first?.transport, "quic-v1")
        await host.close()
    }

    /// Echoes `bytes` on each of `streams` streams at once and checks every byte.
    static func echoConcurrently(over connection: Connection, streams: Int, bytes: Int) async throws {
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            for seed in 1...streams {
                tasks.addTask {
                    let data = patternBytes(count: bytes, seed: UInt64(seed))
                    let back = try await echo(data, over: connection)
                    XCTAssertTrue(back == data, "stream \(seed): \(back.count) of \(data.count) bytes came back intact")
                }
            }
            try await tasks.waitForAll()
        }
    }
}
