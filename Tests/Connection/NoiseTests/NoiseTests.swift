import Crypto
import Identity
import NIOCore
import TestKit
import XCTest

@testable import Noise

final class NoiseTests: XCTestCase {
    struct Pair {
        var initiator: NoiseHandshake.Result
        var responder: NoiseHandshake.Result
    }

    /// Runs a handshake, delivering bytes `step` at a time in both directions.
    func handshake(
        _ initiator: inout NoiseHandshake, _ responder: inout NoiseHandshake, step: Int = .max
    ) throws -> Pair {
        var toResponder = ByteBuffer()
        var toInitiator = ByteBuffer()
        initiator.start(into: &toResponder)
        var initiatorResult: NoiseHandshake.Result?
        var responderResult: NoiseHandshake.Result?
        for _ in 0..<100_000 where initiatorResult == nil || responderResult == nil {
            if toResponder.readableBytes > 0 {
                var chunk = toResponder.readSlice(length: min(step, toResponder.readableBytes))!
                if let result = try responder.receive(&chunk, output: &toInitiator) { responderResult = result }
            }
            if toInitiator.readableBytes > 0 {
                var chunk = toInitiator.readSlice(length: min(step, toInitiator.readableBytes))!
                if let result = try initiator.receive(&chunk, output: &toResponder) { initiatorResult = result }
            }
            if toResponder.readableBytes == 0 && toInitiator.readableBytes == 0
                && (initiatorResult == nil || responderResult == nil)
            {
                break
            }
        }
        return Pair(initiator: try XCTUnwrap(initiatorResult), responder: try XCTUnwrap(responderResult))
    }

    func testHandshakeAtEveryFragmentation() throws {
        let alice = PrivateKey.generateEd25519()
        let bob = PrivateKey.generateSecp256k1()
        for step in [1, 2, 7, 31, 100, 65537] {
            var initiator = NoiseHandshake(
                initiator: true, identity: alice, expectedRemotePeer: PeerID(publicKey: bob.publicKey))
            var responder = NoiseHandshake(initiator: false, identity: bob)
            let pair = try handshake(&initiator, &responder, step: step)
            XCTAssertEqual(pair.initiator.remotePeer, PeerID(publicKey: bob.publicKey))
            XCTAssertEqual(pair.responder.remotePeer, PeerID(publicKey: alice.publicKey))
            XCTAssertEqual(pair.responder.remotePublicKey, alice.publicKey)
        }
    }

    func testTransportRoundTripOfLargeData() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        var generator = SystemRandomNumberGenerator()
        let data = (0..<(5 * 1024 * 1024 + 17)).map { _ in UInt8.random(in: 0...255, using: &generator) }
        var plain = ByteBuffer(bytes: data)
        var wire = ByteBuffer()
        try pair.initiator.transport.encrypt(&plain, into: &wire)
        // Frames never exceed 65535 bytes and the data split into several.
        XCTAssertGreaterThan(wire.readableBytes, data.count + 16 * (data.count / NoiseTransport.maxPlaintext))
        var received: [UInt8] = []
        while wire.readableBytes > 0 {
            var chunk = wire.readSlice(length: min(40_000, wire.readableBytes))!
            var plaintexts: [ByteBuffer] = []
            try pair.responder.transport.decrypt(&chunk, into: &plaintexts)
            for piece in plaintexts {
                XCTAssertLessThanOrEqual(piece.readableBytes, NoiseTransport.maxPlaintext)
                received += piece.readableBytesView
            }
        }
        XCTAssertEqual(received, data)
        // And the other direction.
        var back = ByteBuffer(string: "pong")
        var wireBack = ByteBuffer()
        try pair.responder.transport.encrypt(&back, into: &wireBack)
        var plaintexts: [ByteBuffer] = []
        try pair.initiator.transport.decrypt(&wireBack, into: &plaintexts)
        XCTAssertEqual(plaintexts.map { String(buffer: $0) }, ["pong"])
    }

    func testTamperedCiphertextIsRejected() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        var plain = ByteBuffer(string: "hello")
        var wire = ByteBuffer()
        try pair.initiator.transport.encrypt(&plain, into: &wire)
        let index = wire.readerIndex + 4
        wire.setInteger(wire.getInteger(at: index, as: UInt8.self)! ^ 0x80, at: index)
        var plaintexts: [ByteBuffer] = []
        XCTAssertThrowsError(try pair.responder.transport.decrypt(&wire, into: &plaintexts)) {
            XCTAssertEqual($0 as? NoiseError, .decryptionFailed)
        }
    }

    func testTruncatedFrameWaitsForMore() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        var plain = ByteBuffer(string: "hello world")
        var wire = ByteBuffer()
        try pair.initiator.transport.encrypt(&plain, into: &wire)
        var first = wire.readSlice(length: 5)!
        var plaintexts: [ByteBuffer] = []
        try pair.responder.transport.decrypt(&first, into: &plaintexts)
        XCTAssertTrue(plaintexts.isEmpty)
        try pair.responder.transport.decrypt(&wire, into: &plaintexts)
        XCTAssertEqual(plaintexts.map { String(buffer: $0) }, ["hello world"])
    }

    func testFramesFedOneByteAtATime() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        var wire = ByteBuffer()
        let messages = ["a", "hello", String(repeating: "x", count: 70_000)]
        for message in messages {
            var plain = ByteBuffer(string: message)
            try pair.initiator.transport.encrypt(&plain, into: &wire)
        }
        var plaintexts: [ByteBuffer] = []
        while var byte = wire.readSlice(length: 1) {
            try pair.responder.transport.decrypt(&byte, into: &plaintexts)
        }
        XCTAssertEqual(plaintexts.map { String(buffer: $0) }.joined(), messages.joined())
        // One plaintext per frame: "a", "hello", and 70000 bytes in two.
        XCTAssertEqual(plaintexts.map(\.readableBytes), [1, 5, NoiseTransport.maxPlaintext, 70_000 - NoiseTransport.maxPlaintext])
    }

    func testPiecesAreSealedAsTheirConcatenation() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        // Pieces of odd sizes, some empty, one larger than a frame, crossing frame boundaries.
        let sizes = [12, 0, 65_507, 12, 100_000, 1, 0, 3]
        let pieces = sizes.enumerated().map { index, size in
            ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ index) })
        }
        var wire = ByteBuffer()
        try pair.initiator.transport.encrypt(pieces: pieces, into: &wire)
        var plaintexts: [ByteBuffer] = []
        try pair.responder.transport.decrypt(&wire, into: &plaintexts)
        XCTAssertEqual(wire.readableBytes, 0)
        XCTAssertTrue(plaintexts.allSatisfy { $0.readableBytes <= NoiseTransport.maxPlaintext })
        XCTAssertEqual(plaintexts.flatMap { Array($0.readableBytesView) }, pieces.flatMap { Array($0.readableBytesView) })
    }

    func testFrameShorterThanTagIsRejected() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        var wire = ByteBuffer()
        wire.writeInteger(UInt16(15))
        wire.writeRepeatingByte(0, count: 15)
        var plaintexts: [ByteBuffer] = []
        XCTAssertThrowsError(try pair.responder.transport.decrypt(&wire, into: &plaintexts)) {
            XCTAssertEqual($0 as? NoiseError, .decryptionFailed)
        }
    }

    /// Both backends agree with swift-crypto's ChaChaPoly byte for byte, and
    /// open each other's messages.
    func testCipherStateBackendsAgree() throws {
        let key = (0..<32).map { UInt8($0 &* 7 &+ 1) }
        let ad: [UInt8] = Array("associated".utf8)
        for (sendBackend, receiveBackend) in [(AEADBackend.libcrypto, AEADBackend.swiftCrypto), (.swiftCrypto, .libcrypto), (.libcrypto, .libcrypto), (.swiftCrypto, .swiftCrypto)] {
            var sender = CipherState(key: key, backend: sendBackend)
            var receiver = CipherState(key: key, backend: receiveBackend)
            let pair = "\(sendBackend) to \(receiveBackend)"
            for (counter, size) in [0, 1, 63, 64, 65, 1000, 65519].enumerated() {
                let plaintext = (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ counter) }
                var sealed = ByteBuffer()
                // In parts, as the muxer hands them over.
                let cut = size / 3
                try sender.encrypt(
                    parts: [ByteBuffer(bytes: plaintext[..<cut]), ByteBuffer(bytes: plaintext[cut...])], ad: ad, into: &sealed)
                var nonce = [UInt8](repeating: 0, count: 4)
                withUnsafeBytes(of: UInt64(counter).littleEndian) { nonce += $0 }
                let expected = try ChaChaPoly.seal(
                    plaintext, using: SymmetricKey(data: key), nonce: ChaChaPoly.Nonce(data: nonce), authenticating: ad)
                XCTAssertEqual(Array(sealed.readableBytesView), Array(expected.ciphertext + expected.tag), "size \(size), \(pair)")
                let opened = try receiver.decrypt(sealed, ad: ad)
                XCTAssertEqual(Array(opened.readableBytesView), plaintext, pair)
            }
            // An empty message is a lone tag, and opens to nothing.
            var empty = ByteBuffer()
            try sender.encrypt(ByteBuffer(), ad: [], into: &empty)
            XCTAssertEqual(empty.readableBytes, 16)
            XCTAssertEqual(try receiver.decrypt(empty, ad: []).readableBytes, 0)
            // Wrong associated data, and a flipped bit, fail.
            var sealed = ByteBuffer()
            try sender.encrypt(ByteBuffer(bytes: [1, 2, 3]), ad: ad, into: &sealed)
            XCTAssertThrowsError(try receiver.decrypt(sealed, ad: [])) { XCTAssertEqual($0 as? NoiseError, .decryptionFailed) }
            var flipped = ByteBuffer()
            try sender.encrypt(ByteBuffer(bytes: [1, 2, 3]), ad: ad, into: &flipped)
            flipped.setInteger(flipped.getInteger(at: 0, as: UInt8.self)! ^ 1, at: 0)
            XCTAssertThrowsError(try receiver.decrypt(flipped, ad: ad)) { XCTAssertEqual($0 as? NoiseError, .decryptionFailed) }
        }
    }

    /// On Linux with libcrypto installed (as on the machines we test on), it is
    /// the backend chosen; elsewhere swift-crypto serves.
    func testLibcryptoIsPreferredWhereInstalled() throws {
        #if os(Linux)
        let installed = ["/usr/lib/x86_64-linux-gnu/libcrypto.so.3", "/usr/lib/aarch64-linux-gnu/libcrypto.so.3", "/lib64/libcrypto.so.3"]
            .contains { FileManager.default.fileExists(atPath: $0) }
        try XCTSkipUnless(installed, "no libcrypto.so.3 on this system")
        XCTAssertTrue(AEADBackend.libcryptoAvailable)
        if ProcessInfo.processInfo.environment["P2PCHAT_AEAD"] == nil {
            XCTAssertEqual(AEADBackend.preferred, .libcrypto)
        }
        XCTAssertEqual(CipherState(key: [UInt8](repeating: 1, count: 32), backend: .libcrypto).backend, .libcrypto)
        #endif
        XCTAssertEqual(CipherState(key: [UInt8](repeating: 1, count: 32), backend: .swiftCrypto).backend, .swiftCrypto)
    }

    /// A handshake and transport between a libcrypto peer and a swift-crypto peer.
    func testTransportAcrossBackends() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519(), aead: .libcrypto)
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519(), aead: .swiftCrypto)
        var pair = try handshake(&initiator, &responder)
        for size in [0, 1, 70_000, 300_000] {
            let message = ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 13) })
            var wire = ByteBuffer()
            var outgoing = message
            try pair.initiator.transport.encrypt(&outgoing, into: &wire)
            var plaintexts: [ByteBuffer] = []
            try pair.responder.transport.decrypt(&wire, into: &plaintexts)
            var joined = ByteBuffer()
            for var piece in plaintexts { joined.writeBuffer(&piece) }
            XCTAssertEqual(joined, message, "size \(size)")
            // And back.
            var back = ByteBuffer()
            var returning = message
            try pair.responder.transport.encrypt(&returning, into: &back)
            plaintexts = []
            try pair.initiator.transport.decrypt(&back, into: &plaintexts)
            joined = ByteBuffer()
            for var piece in plaintexts { joined.writeBuffer(&piece) }
            XCTAssertEqual(joined, message, "back, size \(size)")
        }
    }

    func testWrongExpectedPeerIsRejected() throws {
        let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let real = PrivateKey.generateEd25519()
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519(), expectedRemotePeer: impostor)
        var responder = NoiseHandshake(initiator: false, identity: real)
        XCTAssertThrowsError(try handshake(&initiator, &responder)) { error in
            XCTAssertEqual(
                error as? NoiseError,
                .peerIDMismatch(expected: "\(impostor)", got: "\(PeerID(publicKey: real.publicKey))"))
        }
    }

    func testLowOrderEphemeralKeyIsRejected() throws {
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var message = ByteBuffer()
        message.writeInteger(UInt16(32))
        message.writeBytes([UInt8](repeating: 0, count: 32))
        var out = ByteBuffer()
        XCTAssertThrowsError(try responder.receive(&message, output: &out)) {
            XCTAssertEqual($0 as? NoiseError, .weakPublicKey)
        }
    }

    func testBadPayloadsAreRejected() throws {
        let key = PrivateKey.generateEd25519()
        var validButWrongSignature = Noise_Pb_NoiseHandshakePayload()
        validButWrongSignature.identityKey = Data(key.publicKey.marshal())
        validButWrongSignature.identitySig = Data(try key.sign(Array("something else".utf8)))
        var noKey = Noise_Pb_NoiseHandshakePayload()
        noKey.identitySig = Data([1, 2, 3])
        var badKey = Noise_Pb_NoiseHandshakePayload()
        badKey.identityKey = Data([8, 1, 18, 1, 0])
        let cases: [([UInt8], NoiseError)] = [
            (try validButWrongSignature.serializedBytes(), .invalidSignature),
            (try noKey.serializedBytes(), .missingIdentityKey),
            ([0xff, 0xff, 0xff, 0xff], .malformedPayload("")),
            (try badKey.serializedBytes(), .invalidIdentityKey("")),
        ]
        for (payload, expected) in cases {
            var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
            var responder = NoiseHandshake(initiator: false, identity: key)
            responder.payloadOverride = payload
            XCTAssertThrowsError(try handshake(&initiator, &responder)) { error in
                switch (error as? NoiseError, expected) {
                case (.malformedPayload, .malformedPayload), (.invalidIdentityKey, .invalidIdentityKey): break
                default: XCTAssertEqual(error as? NoiseError, expected)
                }
            }
        }
    }

    func testShortHandshakeMessagesAreRejected() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var out = ByteBuffer()
        initiator.start(into: &out)
        var short = ByteBuffer()
        short.writeInteger(UInt16(10))
        short.writeBytes([UInt8](repeating: 1, count: 10))
        var reply = ByteBuffer()
        XCTAssertThrowsError(try initiator.receive(&short, output: &reply)) {
            guard case .messageTooShort = $0 as? NoiseError else { return XCTFail("\($0)") }
        }
    }

    func testNonceExhaustion() throws {
        var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
        var pair = try handshake(&initiator, &responder)
        pair.initiator.transport.setSendNonce(UInt64.max - 1)
        var plain = ByteBuffer(string: "last")
        var wire = ByteBuffer()
        XCTAssertNoThrow(try pair.initiator.transport.encrypt(&plain, into: &wire))
        var more = ByteBuffer(string: "one too many")
        XCTAssertThrowsError(try pair.initiator.transport.encrypt(&more, into: &wire)) {
            XCTAssertEqual($0 as? NoiseError, .nonceExhausted)
        }
    }

    func testRandomHandshakeInputNeverCrashes() {
        var random = SplitMix(seed: 5)
        func next() -> UInt64 { random.next() }
        let key = PrivateKey.generateEd25519()
        for _ in 0..<300 {
            var machine = NoiseHandshake(initiator: next() % 2 == 0, identity: key)
            var out = ByteBuffer()
            machine.start(into: &out)
            var input = ByteBuffer()
            let length = Int(next() % 200)
            input.writeInteger(UInt16(length))
            input.writeBytes((0..<length).map { _ in UInt8(truncatingIfNeeded: next()) })
            _ = try? machine.receive(&input, output: &out)
        }
    }
}
