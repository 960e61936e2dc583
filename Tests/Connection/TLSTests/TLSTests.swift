import Crypto
import Foundation
import Identity
import LibP2PSecurity
import NIOCore
import NIOEmbedded
import NIOSSL
import SwiftASN1
import X509
import XCTest

@testable import TLS

/// One side of an in-memory connection: a handshake that becomes a session,
/// the bytes it wants to send, and the plaintext it received.
final class Side {
    var handshake: any SecurityHandshake
    var connection: SecuredConnection?
    var outbox = ByteBuffer()
    var received = ByteBuffer()

    init(_ handshake: any SecurityHandshake) {
        self.handshake = handshake
    }

    func start() throws {
        try handshake.start(into: &outbox)
    }

    /// Hands arriving ciphertext to the handshake or, once done, the session
    /// (first the handshake's remainder, even when empty, as the driver does).
    func deliver(_ bytes: inout ByteBuffer) throws {
        var plaintexts: [ByteBuffer] = []
        if connection == nil {
            guard var done = try handshake.receive(&bytes, output: &outbox) else { return }
            XCTAssertEqual(bytes.readableBytes, 0, "the handshake hands what follows over as the remainder")
            var remainder = done.remainder
            try done.session.receive(&remainder, plaintexts: &plaintexts, output: &outbox)
            connection = done
        } else {
            try connection!.session.receive(&bytes, plaintexts: &plaintexts, output: &outbox)
        }
        for var plain in plaintexts { received.writeBuffer(&plain) }
    }

    func send(_ pieces: [ByteBuffer]) throws {
        try connection!.session.encrypt(pieces: pieces, into: &outbox)
    }
}

/// Moves bytes both ways, `step` at a time, until neither side has any to send.
func pump(_ a: Side, _ b: Side, step: Int = .max) throws {
    for _ in 0..<1_000_000 {
        if a.outbox.readableBytes == 0 && b.outbox.readableBytes == 0 { return }
        if a.outbox.readableBytes > 0 {
            var chunk = a.outbox.readSlice(length: min(step, a.outbox.readableBytes))!
            a.outbox.discardReadBytes()
            try b.deliver(&chunk)
        }
        if b.outbox.readableBytes > 0 {
            var chunk = b.outbox.readSlice(length: min(step, b.outbox.readableBytes))!
            b.outbox.discardReadBytes()
            try a.deliver(&chunk)
        }
    }
    XCTFail("pump did not settle")
}

func randomBytes(_ count: Int) -> [UInt8] {
    var generator = SystemRandomNumberGenerator()
    var bytes = [UInt8](repeating: 0, count: count)
    for index in bytes.indices { bytes[index] = UInt8.random(in: 0...255, using: &generator) }
    return bytes
}

final class TLSTests: XCTestCase {
    let tls = TLSSecurity()

    /// A connected initiator/responder pair (handshake done both ways).
    @discardableResult
    func connect(
        initiatorKey: PrivateKey = .generateEd25519(), responderKey: PrivateKey = .generateEd25519(),
        initiatorMuxers: [String] = [], responderMuxers: [String] = [], step: Int = .max
    ) throws -> (initiator: Side, responder: Side) {
        let initiator = Side(
            try tls.makeHandshake(
                role: .initiator, localKey: initiatorKey, expectedRemotePeer: PeerID(publicKey: responderKey.publicKey),
                muxers: initiatorMuxers))
        let responder = Side(
            try tls.makeHandshake(
                role: .responder, localKey: responderKey, expectedRemotePeer: nil, muxers: responderMuxers))
        try initiator.start()
        try responder.start()
        XCTAssertGreaterThan(initiator.outbox.readableBytes, 0, "the initiator speaks first (ClientHello)")
        XCTAssertEqual(responder.outbox.readableBytes, 0)
        try pump(initiator, responder, step: step)
        let i = try XCTUnwrap(initiator.connection)
        let r = try XCTUnwrap(responder.connection)
        XCTAssertEqual(i.remotePeer, PeerID(publicKey: responderKey.publicKey))
        XCTAssertEqual(i.remotePublicKey, responderKey.publicKey)
        XCTAssertEqual(r.remotePeer, PeerID(publicKey: initiatorKey.publicKey))
        XCTAssertEqual(r.remotePublicKey, initiatorKey.publicKey)
        return (initiator, responder)
    }

    // MARK: Handshake

    func testProtocolID() {
        XCTAssertEqual(TLSSecurity().protocolID, "/tls/1.0.0")
    }

    func testHandshakeEd25519() throws {
        let (initiator, responder) = try connect()
        XCTAssertNil(initiator.connection?.negotiatedMuxer)
        XCTAssertNil(responder.connection?.negotiatedMuxer)
    }

    func testRolesAreInputsEitherPartyMayInitiate() throws {
        let alice = PrivateKey.generateEd25519()
        let bob = PrivateKey.generateEd25519()
        for (first, second) in [(alice, bob), (bob, alice)] {
            let (initiator, responder) = try connect(initiatorKey: first, responderKey: second)
            XCTAssertEqual(initiator.connection?.remotePeer, PeerID(publicKey: second.publicKey))
            XCTAssertEqual(responder.connection?.remotePeer, PeerID(publicKey: first.publicKey))
        }
    }

    func testHandshakeWithOtherIdentityKeyTypes() throws {
        try connect(initiatorKey: .generateSecp256k1(), responderKey: .generateECDSAP256())
        try connect(initiatorKey: .generateECDSAP256(), responderKey: .generateSecp256k1())
    }

    func testHandshakeDeliveredByteByByte() throws {
        let (initiator, responder) = try connect(step: 1)
        try initiator.send([ByteBuffer(string: "after a slow start")])
        try pump(initiator, responder, step: 3)
        XCTAssertEqual(String(buffer: responder.received), "after a slow start")
    }

    func testWrongExpectedPeerIsPeerIDMismatch() throws {
        let responderKey = PrivateKey.generateEd25519()
        let someoneElse = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let initiator = Side(
            try tls.makeHandshake(
                role: .initiator, localKey: .generateEd25519(), expectedRemotePeer: someoneElse, muxers: []))
        let responder = Side(
            try tls.makeHandshake(role: .responder, localKey: responderKey, expectedRemotePeer: nil, muxers: []))
        try initiator.start()
        XCTAssertThrowsError(try pump(initiator, responder)) { error in
            let mismatch = error as? PeerIDMismatch
            XCTAssertEqual(mismatch?.expected, someoneElse, "\(error)")
            XCTAssertEqual(mismatch?.actual, PeerID(publicKey: responderKey.publicKey))
        }
        XCTAssertNil(initiator.connection)
    }

    func testResponderChecksAnExpectedPeerToo() throws {
        let initiatorKey = PrivateKey.generateEd25519()
        let someoneElse = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let initiator = Side(
            try tls.makeHandshake(role: .initiator, localKey: initiatorKey, expectedRemotePeer: nil, muxers: []))
        let responder = Side(
            try tls.makeHandshake(
                role: .responder, localKey: .generateEd25519(), expectedRemotePeer: someoneElse, muxers: []))
        try initiator.start()
        XCTAssertThrowsError(try pump(initiator, responder)) { error in
            XCTAssertEqual((error as? PeerIDMismatch)?.actual, PeerID(publicKey: initiatorKey.publicKey), "\(error)")
        }
        XCTAssertNil(responder.connection)
    }

    /// The spec forbids anything below TLS 1.3: a TLS 1.2-only client is refused.
    func testTLS12ClientIsRefused() throws {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.maximumTLSVersion = .tlsv12
        configuration.certificateVerification = .none
        configuration.shutdownTimeout = .zero
        let client = EmbeddedChannel()
        defer {
            client.close(promise: nil)
            client.embeddedEventLoop.run()
            client.embeddedEventLoop.advanceTime(by: .hours(1))
        }
        try client.pipeline.syncOperations.addHandler(
            try NIOSSLClientHandler(context: NIOSSLContext(configuration: configuration), serverHostname: nil))
        client.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
        client.embeddedEventLoop.run()
        var clientHello = try XCTUnwrap(client.readOutbound(as: ByteBuffer.self))
        var responder = try tls.makeHandshake(
            role: .responder, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var output = ByteBuffer()
        try responder.start(into: &output)
        XCTAssertThrowsError(try responder.receive(&clientHello, output: &output)) { error in
            guard case .handshakeFailed? = error as? TLSError else { return XCTFail("\(error)") }
        }
    }

    // MARK: Early muxer negotiation (ALPN)

    func testALPNSelectsACommonMuxer() throws {
        let (initiator, responder) = try connect(
            initiatorMuxers: ["/yamux/1.0.0"], responderMuxers: ["/yamux/1.0.0"])
        XCTAssertEqual(initiator.connection?.negotiatedMuxer, "/yamux/1.0.0")
        XCTAssertEqual(responder.connection?.negotiatedMuxer, "/yamux/1.0.0")
    }

    func testALPNSkipsMuxersTheOtherLacks() throws {
        let (initiator, responder) = try connect(
            initiatorMuxers: ["/mplex/6.7.0", "/yamux/1.0.0"], responderMuxers: ["/yamux/1.0.0"])
        XCTAssertEqual(initiator.connection?.negotiatedMuxer, "/yamux/1.0.0")
        XCTAssertEqual(responder.connection?.negotiatedMuxer, "/yamux/1.0.0")
    }

    func testALPNFallsBackToLibp2pWhenOneSideHasNoMuxers() throws {
        for (initiatorMuxers, responderMuxers) in [([], ["/yamux/1.0.0"]), (["/yamux/1.0.0"], [])] {
            let (initiator, responder) = try connect(
                initiatorMuxers: initiatorMuxers, responderMuxers: responderMuxers)
            XCTAssertNil(initiator.connection?.negotiatedMuxer)
            XCTAssertNil(responder.connection?.negotiatedMuxer)
        }
    }

    // MARK: Data

    func testDataBothWays() throws {
        let (initiator, responder) = try connect(initiatorMuxers: ["/yamux/1.0.0"], responderMuxers: ["/yamux/1.0.0"])
        try initiator.send([ByteBuffer(string: "ping "), ByteBuffer(string: "from initiator")])
        try responder.send([ByteBuffer(string: "pong from responder")])
        try pump(initiator, responder)
        XCTAssertEqual(String(buffer: responder.received), "ping from initiator")
        XCTAssertEqual(String(buffer: initiator.received), "pong from responder")
    }

    func testMebibytesInManyPiecesBothWays() throws {
        let (initiator, responder) = try connect()
        let upload = randomBytes(3 * 1024 * 1024 + 123)
        let download = randomBytes(2 * 1024 * 1024 + 7)
        // Pieces of every size, from frame headers to large payloads, several per call.
        var sizes = [0, 1, 12, 100, 2047, 2048, 5000, 16384, 16385, 70000, 300_000]
        func send(_ data: [UInt8], from side: Side) throws {
            var offset = 0
            var index = 0
            while offset < data.count {
                var pieces: [ByteBuffer] = []
                for _ in 0..<3 where offset < data.count {
                    let length = min(sizes[index % sizes.count], data.count - offset)
                    pieces.append(ByteBuffer(bytes: data[offset..<(offset + length)]))
                    offset += length
                    index += 1
                }
                try side.send(pieces)
            }
        }
        try send(upload, from: initiator)
        sizes.reverse()
        try send(download, from: responder)
        // Delivered in odd-sized chunks, so records are split across calls.
        try pump(initiator, responder, step: 9999)
        XCTAssertEqual(responder.received.readableBytes, upload.count)
        XCTAssertEqual(Array(responder.received.readableBytesView), upload)
        XCTAssertEqual(Array(initiator.received.readableBytesView), download)
    }

    func testSmallPiecesShareARecord() throws {
        let (initiator, _) = try connect()
        var one = ByteBuffer()
        try initiator.connection!.session.encrypt(pieces: [ByteBuffer(string: "x")], into: &one)
        var many = ByteBuffer()
        let pieces = (0..<100).map { _ in ByteBuffer(string: "x") }
        try initiator.connection!.session.encrypt(pieces: pieces, into: &many)
        // One record's overhead, not a hundred.
        XCTAssertEqual(many.readableBytes - one.readableBytes, 99)
    }

    /// TLS 1.3 clients may send data right behind their Finished: the server
    /// decrypts it with the handshake's last flight and must not lose it.
    func testDataRightBehindTheClientFinishedIsKept() throws {
        let initiatorKey = PrivateKey.generateEd25519()
        let initiator = Side(
            try tls.makeHandshake(role: .initiator, localKey: initiatorKey, expectedRemotePeer: nil, muxers: []))
        let responder = Side(
            try tls.makeHandshake(role: .responder, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: []))
        try initiator.start()
        var clientHello = initiator.outbox
        initiator.outbox.clear()
        try responder.deliver(&clientHello)
        var serverFlight = responder.outbox
        responder.outbox.clear()
        try initiator.deliver(&serverFlight)
        XCTAssertNotNil(initiator.connection, "the client is done after the server's flight")
        try initiator.send([ByteBuffer(string: "/multistream/1.0.0\n")])
        // Finished and the data in one delivery.
        var flight = initiator.outbox
        initiator.outbox.clear()
        guard var done = try responder.handshake.receive(&flight, output: &responder.outbox) else {
            return XCTFail("the server should be done")
        }
        var plaintexts: [ByteBuffer] = []
        var remainder = done.remainder
        try done.session.receive(&remainder, plaintexts: &plaintexts, output: &responder.outbox)
        var all = ByteBuffer()
        for var plain in plaintexts { all.writeBuffer(&plain) }
        XCTAssertEqual(String(buffer: all), "/multistream/1.0.0\n")
        XCTAssertEqual(done.remotePeer, PeerID(publicKey: initiatorKey.publicKey))
    }

    func testPartialRecordWaitsForTheRest() throws {
        let (initiator, responder) = try connect()
        try initiator.send([ByteBuffer(string: "whole message")])
        var record = initiator.outbox
        initiator.outbox.clear()
        var head = record.readSlice(length: 10)!
        try responder.deliver(&head)
        XCTAssertEqual(responder.received.readableBytes, 0)
        try responder.deliver(&record)
        XCTAssertEqual(String(buffer: responder.received), "whole message")
    }

    func testCloseNotifyEndsTheRemoteSessionCleanly() throws {
        let (initiator, responder) = try connect()
        try initiator.send([ByteBuffer(string: "last words")])
        let session = try XCTUnwrap(initiator.connection?.session as? TLSSession)
        session.close(into: &initiator.outbox)
        // The data before close_notify arrives; close_notify itself is no error.
        try pump(initiator, responder)
        XCTAssertEqual(String(buffer: responder.received), "last words")
        XCTAssertThrowsError(try responder.send([ByteBuffer(string: "too late")])) { error in
            guard case .closed? = error as? TLSError else { return XCTFail("\(error)") }
        }
        // Whatever follows is dropped, not passed on as plaintext.
        var trailing = ByteBuffer(bytes: randomBytes(100))
        try responder.deliver(&trailing)
        XCTAssertEqual(String(buffer: responder.received), "last words")
    }

    // MARK: Hostile input

    func testRandomBytesToAHandshakeThrow() throws {
        for role in [SecurityRole.initiator, .responder] {
            for length in [1, 5, 100, 70_000] {
                var handshake = try tls.makeHandshake(
                    role: role, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
                var output = ByteBuffer()
                try handshake.start(into: &output)
                // A valid record header's first byte is 20...23: make sure it is not.
                var bytes = randomBytes(length)
                bytes[0] = 0xFF
                var input = ByteBuffer(bytes: bytes)
                if length < 5 {
                    // Not even a record header yet: wait, or refuse at once; never crash.
                    _ = try? handshake.receive(&input, output: &output)
                } else {
                    XCTAssertThrowsError(try handshake.receive(&input, output: &output), "\(role) \(length)")
                }
            }
        }
    }

    func testTruncatedHandshakeWaits() throws {
        var initiator = try tls.makeHandshake(
            role: .initiator, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var responder = try tls.makeHandshake(
            role: .responder, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var clientHello = ByteBuffer()
        try initiator.start(into: &clientHello)
        var serverFlight = ByteBuffer()
        XCTAssertNil(try responder.receive(&clientHello, output: &serverFlight))
        // All but the last byte of the server's flight: the client must wait.
        var truncated = serverFlight.readSlice(length: serverFlight.readableBytes - 1)!
        var clientOut = ByteBuffer()
        XCTAssertNil(try initiator.receive(&truncated, output: &clientOut))
        XCTAssertNotNil(try initiator.receive(&serverFlight, output: &clientOut))
    }

    func testOversizedHandshakeIsRefused() throws {
        // A valid ClientHello is larger than this limit.
        let strict = TLSSecurity(maxHandshakeBytes: 100)
        var initiator = try tls.makeHandshake(
            role: .initiator, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var responder = try strict.makeHandshake(
            role: .responder, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var clientHello = ByteBuffer()
        try initiator.start(into: &clientHello)
        var output = ByteBuffer()
        XCTAssertThrowsError(try responder.receive(&clientHello, output: &output)) { error in
            guard case .handshakeTooLarge(100)? = error as? TLSError else { return XCTFail("\(error)") }
        }
    }

    func testEndlessHandshakeRecordsAreBounded() throws {
        // Well-formed record headers carrying handshake bytes, about 1.6 MB of them:
        // refused (by BoringSSL or our limit), never buffered.
        var responder = try tls.makeHandshake(
            role: .responder, localKey: .generateEd25519(), expectedRemotePeer: nil, muxers: [])
        var output = ByteBuffer()
        let header: [UInt8] = [22, 3, 1, 0x40, 0x00]
        let zeros = [UInt8](repeating: 0, count: 0x4000)
        XCTAssertThrowsError(
            try {
                var input = ByteBuffer(bytes: header + [1, 0xFF, 0xFF, 0xFF] + zeros.dropFirst(4))
                for _ in 0..<100 {
                    _ = try responder.receive(&input, output: &output)
                    input = ByteBuffer(bytes: header + zeros)
                }
            }())
    }

    func testGarbageToASessionThrowsAndTruncationWaits() throws {
        for length in [1, 4, 5, 200, 40_000] {
            let (initiator, _) = try connect()
            var bytes = randomBytes(length)
            // An application-data record header, then garbage: waits while short, fails once whole.
            let header: [UInt8] = [23, 3, 3, 0x00, 0xC8]
            bytes.replaceSubrange(0..<min(5, length), with: header.prefix(length))
            var input = ByteBuffer(bytes: bytes)
            var plaintexts: [ByteBuffer] = []
            var output = ByteBuffer()
            if length < 5 + 0xC8 {
                XCTAssertNoThrow(
                    try initiator.connection!.session.receive(&input, plaintexts: &plaintexts, output: &output),
                    "\(length)")
                XCTAssertTrue(plaintexts.isEmpty)
            } else {
                XCTAssertThrowsError(
                    try initiator.connection!.session.receive(&input, plaintexts: &plaintexts, output: &output)
                ) { error in
                    guard case .sessionFailed? = error as? TLSError else { return XCTFail("\(error)") }
                }
                // A failed session stays failed, sending or receiving.
                XCTAssertThrowsError(try initiator.send([ByteBuffer(string: "x")]))
                var more = ByteBuffer(bytes: randomBytes(10))
                XCTAssertThrowsError(
                    try initiator.connection!.session.receive(&more, plaintexts: &plaintexts, output: &output))
            }
        }
        // Pure noise.
        let (_, responder) = try connect()
        var noise = ByteBuffer(bytes: [0xFF] + randomBytes(1000))
        var plaintexts: [ByteBuffer] = []
        var output = ByteBuffer()
        XCTAssertThrowsError(
            try responder.connection!.session.receive(&noise, plaintexts: &plaintexts, output: &output))
    }
}
