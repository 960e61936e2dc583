import ChildProcess
import Foundation
import Identity
import TLS
import TestKit
import XCTest

@testable import QUIC

#if canImport(Glibc)
import Glibc
#endif

/// What the interop tests share: the pinned Python and its JSON lines.
enum QUICInterop {
    static func python() throws -> String {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: interop with aioquic needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        return python
    }

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/quic_peer.py").path
    }

    /// The first JSON line of `process` whose "event" is `event`, within `seconds`.
    static func line(_ event: String, of process: ChildProcess, within seconds: Double = 20) throws -> [String: Any] {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            for text in process.outputLines {
                guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { continue }
                if object["event"] as? String == "error" { throw InteropFailure.peer("\(object) \(process.stderrText.suffix(2000))") }
                if object["event"] as? String == event { return object }
            }
            guard process.isRunning else { break }
            usleep(10_000)
        }
        throw InteropFailure.peer("no \(event) line; stderr: \(process.stderrText.suffix(2000))")
    }


}

enum InteropFailure: Error { case peer(String) }

/// The QUIC core against an independent stack: aioquic (pinned with py-libp2p
/// in Tests/Interop/py/requirements.txt) over UDP on loopback, in both roles.
/// Needs P2PCHAT_PYTHON (./scripts/test sets it); skipped without it.
final class AioquicInteropTests: XCTestCase {
    /// Our configuration for a peer that is not libp2p: any certificate is accepted.
    func configuration() throws -> QUICConnection.Configuration {
        let certificate = try LibP2PCertificate.generate(identity: .generateEd25519())
        return QUICConnection.Configuration(
            tls: QUICTLSConfiguration(
                certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, transportParameters: [0x0f, 0x00],
                verifyPeer: { !$0.isEmpty }))
    }

    func testOurClientEchoesThroughAnAioquicServer() throws {
        try clientRun(retry: false)
    }

    /// aioquic's server answers the first Initial with a Retry: our client takes it and starts over.
    func testOurClientFollowsAnAioquicRetry() throws {
        try clientRun(retry: true)
    }

    /// Our client moves to the next 1-RTT keys before it writes; aioquic follows (RFC 9001 §6).
    func testAioquicFollowsOurKeyUpdate() throws {
        try clientRun(retry: false, keyUpdate: true)
    }

    func clientRun(retry: Bool, keyUpdate: Bool = false) throws {
        let server = try ChildProcess(try QUICInterop.python(), [QUICInterop.script, "serve"] + (retry ? ["--retry"] : []))
        defer { server.stop() }
        let port = try XCTUnwrap(try QUICInterop.line("listening", of: server)["port"] as? Int)
        let socket = try UDPSocket()
        var client = try QUICConnection(client: configuration())
        let message = Array("hello aioquic, from swift".utf8)
        var reply: [UInt8] = []
        var finished = false
        let deadline = ContinuousClock.now + .seconds(20)
        while !finished, ContinuousClock.now < deadline, !client.isClosed {
            for datagram in client.send(now: .now) { socket.send(datagram, to: UInt16(port)) }
            for event in client.takeEvents() {
                switch event {
                case .connected:
                    if !keyUpdate {
                        let stream = try client.openStream()
                        try client.write(message, to: stream, fin: true)
                    }
                case .streamData(_, let data, let fin):
                    reply += data
                    finished = fin
                default:
                    break
                }
            }
            if keyUpdate, client.isConfirmed, !client.sendKeyPhase, client.streams.isEmpty, reply.isEmpty {
                // Confirmed (HANDSHAKE_DONE came): update, then write under the new keys.
                try client.initiateKeyUpdate()
                let stream = try client.openStream()
                try client.write(message, to: stream, fin: true)
            }
            let wait = client.nextDeadline.map { min(max($0 - .now, .zero), .milliseconds(50)) } ?? .milliseconds(50)
            if let (datagram, _) = socket.receive(timeout: wait) { client.receive(datagram: datagram, now: .now) }
            client.handleTimeout(now: .now)
        }
        XCTAssertEqual(String(decoding: reply, as: UTF8.self), String(decoding: message, as: UTF8.self))
        if keyUpdate {
            XCTAssertTrue(client.sendKeyPhase && client.receiveKeyPhase, "aioquic answered in the new key phase")
        }
        XCTAssertEqual(client.applicationProtocol, "libp2p")
        XCTAssertEqual(try QUICInterop.line("echoed", of: server)["stream"] as? Int, 0)
        if retry {
            XCTAssertNotNil(client.peerTransportParameters?.retrySourceConnectionID, "the server said it sent a Retry")
        }
        client.close()
        for datagram in client.send(now: .now) { socket.send(datagram, to: UInt16(port)) }
        XCTAssertEqual(try QUICInterop.line("closed", of: server)["code"] as? Int, 0)
    }

    func testAnAioquicClientEchoesThroughOurServer() throws {
        let socket = try UDPSocket()
        var server = try QUICConnection(server: configuration())
        let text = "hello swift, from aioquic"
        let client = try ChildProcess(try QUICInterop.python(), [QUICInterop.script, "connect", String(socket.port), text])
        defer { client.stop() }
        var peerPort: UInt16?
        let deadline = ContinuousClock.now + .seconds(20)
        var replied = false
        while ContinuousClock.now < deadline, !replied {
            if let (datagram, from) = socket.receive(timeout: .milliseconds(50)) {
                peerPort = peerPort ?? from
                server.receive(datagram: datagram, now: .now)
            }
            for event in server.takeEvents() {
                if case .streamData(let id, let data, let fin) = event {
                    try server.write(data, to: id, fin: fin)
                    server.consumed(streamID: id, bytes: data.count)
                }
            }
            server.handleTimeout(now: .now)
            if let peerPort {
                for datagram in server.send(now: .now) { socket.send(datagram, to: peerPort) }
            }
            replied = client.outputLines.contains { $0.contains("\"reply\"") || $0.contains("\"error\"") }
        }
        XCTAssertEqual(try QUICInterop.line("reply", of: client)["text"] as? String, text)
        XCTAssertTrue(server.isConnected || server.isClosed)
    }
}

/// The QUIC core dialing py-libp2p's `/quic-v1` listener as libp2p does: ALPN
/// `libp2p`, libp2p certificates on both sides (theirs must prove the peer ID
/// they announced; they check ours), then multistream-select and a ping on a
/// stream. What remains for a transport is wiring, not protocol.
final class PyLibp2pQUICTests: XCTestCase {
    func testPingOverQUICWithPyLibp2p() throws {
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/quic_libp2p_peer.py").path
        let peer = try ChildProcess(try QUICInterop.python(), [script, "30"], stdinPipe: true)
        defer { peer.stop() }
        let listening = try QUICInterop.line("listening", of: peer, within: 30)
        let port = try XCTUnwrap(listening["port"] as? Int)
        let expected = try PeerID(try XCTUnwrap(listening["peer"] as? String))

        let identity = PrivateKey.generateEd25519()
        let certificate = try LibP2PCertificate.generate(identity: identity)
        let configuration = QUICConnection.Configuration(
            tls: QUICTLSConfiguration(
                certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, transportParameters: [0x0f, 0x00],
                verifyPeer: { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: expected)) != nil }))
        var client = try QUICConnection(client: configuration)
        let socket = try UDPSocket()

        // multistream-select: a varint length, then the line.
        func line(_ text: String) -> [UInt8] {
            let bytes = Array((text + "\n").utf8)
            return [UInt8(bytes.count)] + bytes
        }
        let negotiation = line("/multistream/1.0.0") + line("/ipfs/ping/1.0.0")
        var generator = SplitMix(seed: 11)
        let payload = generator.bytes(32)
        var stream: UInt64?
        var received: [UInt8] = []
        var sentPing = false
        var pong: [UInt8]?
        var peerStreams: Set<UInt64> = []
        let deadline = ContinuousClock.now + .seconds(20)
        while pong == nil, ContinuousClock.now < deadline, !client.isClosed {
            for event in client.takeEvents() {
                switch event {
                case .connected:
                    stream = try client.openStream()
                    try client.write(negotiation, to: stream!)
                case .streamData(let id, let data, _) where id == stream:
                    received += data
                case .streamData(let id, _, _):
                    // py-libp2p opens streams of its own (identify): the peer's stream IDs are odd.
                    peerStreams.insert(id)
                default:
                    break
                }
            }
            if let stream, !sentPing, received.count >= negotiation.count {
                // The listener answered both lines: it speaks ping.
                XCTAssertEqual(Array(received.prefix(negotiation.count)), negotiation)
                received.removeFirst(negotiation.count)
                try client.write(payload, to: stream)
                sentPing = true
            }
            if sentPing, received.count >= 32 { pong = Array(received.prefix(32)) }
            for datagram in client.send(now: .now) { socket.send(datagram, to: UInt16(port)) }
            let wait = client.nextDeadline.map { min(max($0 - .now, .zero), .milliseconds(50)) } ?? .milliseconds(50)
            if let (datagram, _) = socket.receive(timeout: wait) { client.receive(datagram: datagram, now: .now) }
            client.handleTimeout(now: .now)
        }
        XCTAssertEqual(pong, payload, "ping echoed over /quic-v1; events: \(client.takeEvents()), stderr: \(peer.stderrText.suffix(1500))")
        XCTAssertEqual(try LibP2PCertificate.verify(chain: client.peerCertificates, expectedPeer: nil).peerID, expected)
        XCTAssertTrue(peerStreams.allSatisfy { $0 % 4 == 1 }, "server-initiated bidirectional streams: \(peerStreams)")
        client.close()
        for datagram in client.send(now: .now) { socket.send(datagram, to: UInt16(port)) }
        peer.closeInput()
    }
}

extension PyLibp2pQUICTests {
    /// py-libp2p dials our server: it checks our libp2p certificate against
    /// the peer ID in the address, we check its; its ping stream is answered
    /// by multistream-select and an echo, other protocols (identify) with "na".
    func testPyLibp2pDialsOurServerAndPings() throws {
        let identity = PrivateKey.generateEd25519()
        let certificate = try LibP2PCertificate.generate(identity: identity)
        var server = try QUICConnection(
            server: QUICConnection.Configuration(
                tls: QUICTLSConfiguration(
                    certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, transportParameters: [0x0f, 0x00],
                    verifyPeer: { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: nil)) != nil })))
        let socket = try UDPSocket()
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/quic_libp2p_peer.py").path
        let address = "/ip4/127.0.0.1/udp/\(socket.port)/quic-v1/p2p/\(PeerID(publicKey: identity.publicKey))"
        let peer = try ChildProcess(try QUICInterop.python(), [script, "dial", address])
        defer { peer.stop() }

        // Per stream: bytes not yet taken, and whether it carries ping (echoed) after negotiation.
        var pending: [UInt64: [UInt8]] = [:]
        var pinging: Set<UInt64> = []
        var peerPort: UInt16?
        var done = false
        let deadline = ContinuousClock.now + .seconds(25)
        while !done, ContinuousClock.now < deadline {
            if let (datagram, from) = socket.receive(timeout: .milliseconds(20)) {
                peerPort = peerPort ?? from
                server.receive(datagram: datagram, now: .now)
            }
            for case .streamData(let id, let data, _) in server.takeEvents() {
                if pinging.contains(id) {
                    try server.write(data, to: id)
                    continue
                }
                pending[id, default: []] += data
                // multistream-select, answered line by line (py-libp2p waits for our header before
                // it names the protocol); one-byte lengths suffice for these lines.
                func line(_ text: String) -> [UInt8] { [UInt8(text.utf8.count + 1)] + Array((text + "\n").utf8) }
                while !pinging.contains(id), let length = pending[id]!.first.map(Int.init), pending[id]!.count > length {
                    let text = String(decoding: pending[id]![1...length], as: UTF8.self)
                    pending[id]!.removeFirst(length + 1)
                    if text == "/multistream/1.0.0\n" {
                        try server.write(line("/multistream/1.0.0"), to: id)
                    } else if text == "/ipfs/ping/1.0.0\n" {
                        pinging.insert(id)
                        try server.write(line("/ipfs/ping/1.0.0") + pending[id]!, to: id)
                        pending[id] = []
                    } else {
                        try server.write(line("na"), to: id)
                    }
                }
            }
            server.handleTimeout(now: .now)
            if let peerPort {
                for datagram in server.send(now: .now) { socket.send(datagram, to: peerPort) }
            }
            done = peer.outputLines.contains { $0.contains("\"ping\"") || $0.contains("\"error\"") } || !peer.isRunning
        }
        XCTAssertEqual(try QUICInterop.line("ping", of: peer)["ok"] as? Bool, true)
        XCTAssertEqual(server.applicationProtocol, "libp2p")
        XCTAssertNotNil(try? LibP2PCertificate.verify(chain: server.peerCertificates, expectedPeer: nil))
    }
}

/// A UDP socket on 127.0.0.1 for the interop tests, with a poll-bounded receive.
final class UDPSocket {
    let descriptor: Int32

    init() throws {
        descriptor = socket(AF_INET, Int32(SOCK_DGRAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(.EIO) }
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { throw POSIXError(.EADDRINUSE) }
    }

    deinit { close(descriptor) }

    static func loopback(port: UInt16) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }

    var port: UInt16 {
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor, $0, &length) }
        }
        return UInt16(bigEndian: address.sin_port)
    }

    func send(_ bytes: [UInt8], to port: UInt16) {
        var address = Self.loopback(port: port)
        _ = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                sendto(descriptor, bytes, bytes.count, 0, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
    }

    /// One datagram and its sender's port, or nil when none came within `timeout`.
    func receive(timeout: Duration) -> ([UInt8], UInt16)? {
        var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        guard poll(&poller, 1, milliseconds) > 0 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        var address = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let count = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { recvfrom(descriptor, &buffer, buffer.count, 0, $0, &length) }
        }
        guard count > 0 else { return nil }
        return (Array(buffer.prefix(count)), UInt16(bigEndian: address.sin_port))
    }
}
