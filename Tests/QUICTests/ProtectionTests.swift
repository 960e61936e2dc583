import TestKit
import XCTest

@testable import QUIC

/// Packet protection against RFC 9001 Appendix A, byte for byte.
final class ProtectionTests: XCTestCase {
    let clientDCID = try! ConnectionID(unhex("8394c8f03e515708"))
    let serverSCID = try! ConnectionID(unhex("f067a5502a4262b5"))

    func testInitialSecretsAndKeys() {
        let (client, server) = InitialSecrets.secrets(destination: clientDCID)
        XCTAssertEqual(client, unhex("c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea"))
        XCTAssertEqual(server, unhex("3c199828fd139efd216c155ad844cc81fb82fa8d7446fa7d78be803acdda951b"))
        let keys = InitialSecrets.keys(destination: clientDCID)
        XCTAssertEqual(keys.client.key, unhex("1f369613dd76d5467730efcbe3b1a22d"))
        XCTAssertEqual(keys.client.iv, unhex("fa044b2f42a3fd3b46fb255c"))
        XCTAssertEqual(keys.client.headerProtectionKey, unhex("9f50449e04a0e810283a1e9933adedd2"))
        XCTAssertEqual(keys.server.key, unhex("cf3a5331653c364c88f0f379b6067e37"))
        XCTAssertEqual(keys.server.iv, unhex("0ac1493ca1905853b0bba03e"))
        XCTAssertEqual(keys.server.headerProtectionKey, unhex("c206b8d9b9f0f37644430b490eeaa314"))
    }

    func testHeaderProtectionMasks() {
        let keys = InitialSecrets.keys(destination: clientDCID)
        XCTAssertEqual(keys.client.headerProtectionMask(sample: unhex("d1b1c98dd7689fb8ec11d242b123dc9b")[...]), unhex("437b9aec36"))
        XCTAssertEqual(keys.server.headerProtectionMask(sample: unhex("2cd0991cd25b0aac406a5816b6394100")[...]), unhex("2ec0d8356a"))
    }

    var clientPayload: [UInt8] {
        let frames = unhex(RFC9001Vectors.clientCryptoFrame)
        return frames + [UInt8](repeating: 0, count: 1162 - frames.count)
    }

    func testClientInitialMatchesRFC() throws {
        let header = LongHeader(type: .initial, destination: clientDCID, source: .empty)
        var unprotected: [UInt8] = []
        header.encode(packetNumber: 2, packetNumberLength: 4, payloadLength: 1162 + 16, into: &unprotected)
        XCTAssertEqual(unprotected, unhex(RFC9001Vectors.clientUnprotectedHeader))
        let keys = InitialSecrets.keys(destination: clientDCID)
        let packet = PacketProtection.seal(header, packetNumber: 2, largestAcked: nil, payload: clientPayload, keys: keys.client, packetNumberLength: 4)
        XCTAssertEqual(packet, unhex(RFC9001Vectors.clientProtectedPacket))
    }

    func testServerOpensTheRFCClientInitial() throws {
        let datagram = unhex(RFC9001Vectors.clientProtectedPacket)
        let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: 8)
        XCTAssertNil(split.discardedRemainder)
        XCTAssertEqual(split.packets.count, 1)
        // The server knows only the destination ID the client chose, from the header.
        guard case .long(let header) = split.packets[0].header else { return XCTFail("not a long header") }
        XCTAssertEqual(header.type, .initial)
        XCTAssertEqual(header.destination, clientDCID)
        let keys = InitialSecrets.keys(destination: header.destination)
        let opened = try PacketProtection.open(split.packets[0], keys: keys.client, largestReceived: nil)
        XCTAssertEqual(opened.packetNumber, 2)
        XCTAssertEqual(opened.payload, clientPayload)
        let frames = try Frame.decodeAll(opened.payload)
        XCTAssertEqual(frames.first, .crypto(offset: 0, data: Array(unhex(RFC9001Vectors.clientCryptoFrame).dropFirst(4))))
        XCTAssertEqual(frames.last, .padding(count: 1162 - 245))
    }

    func testServerInitialMatchesRFC() throws {
        let header = LongHeader(type: .initial, destination: .empty, source: serverSCID)
        let payload = unhex(RFC9001Vectors.serverPayload)
        var unprotected: [UInt8] = []
        header.encode(packetNumber: 1, packetNumberLength: 2, payloadLength: payload.count + 16, into: &unprotected)
        XCTAssertEqual(unprotected, unhex(RFC9001Vectors.serverUnprotectedHeader))
        let keys = InitialSecrets.keys(destination: clientDCID)
        let packet = PacketProtection.seal(header, packetNumber: 1, largestAcked: nil, payload: payload, keys: keys.server, packetNumberLength: 2)
        XCTAssertEqual(packet, unhex(RFC9001Vectors.serverProtectedPacket))
        // And the client opens it: an ACK of its packet 2 and the ServerHello.
        let parsed = try PacketParser.parse(packet[...], shortHeaderCIDLength: 0)
        let opened = try PacketProtection.open(parsed, keys: keys.server, largestReceived: nil)
        XCTAssertEqual(opened.packetNumber, 1)
        let frames = try Frame.decodeAll(opened.payload)
        XCTAssertEqual(frames.first, .ack(try ACKFrame(ranges: [0...0])))
        guard case .crypto(0, let serverHello)? = frames.last else { return XCTFail("\(frames)") }
        XCTAssertEqual(serverHello.count, 90)
    }

    func testRetryIntegrityTagMatchesRFC() throws {
        let expected = unhex(RFC9001Vectors.retryPacket)
        let retry = RetryPacket(destination: .empty, source: serverSCID, token: Array("token".utf8), integrityTag: [])
        XCTAssertEqual(RetryIntegrity.seal(retry, originalDestination: clientDCID, unusedBits: 0x0F), expected)
        let parsed = try PacketParser.parse(expected[...], shortHeaderCIDLength: 0)
        guard case .retry(let received) = parsed.header else { return XCTFail("not a Retry") }
        XCTAssertEqual(received.token, Array("token".utf8))
        XCTAssertEqual(received.source, serverSCID)
        XCTAssertTrue(RetryIntegrity.isValid(parsed, originalDestination: clientDCID))
        XCTAssertFalse(RetryIntegrity.isValid(parsed, originalDestination: serverSCID))
        var damaged = expected
        damaged[10] ^= 1
        XCTAssertFalse(RetryIntegrity.isValid(try PacketParser.parse(damaged[...], shortHeaderCIDLength: 0), originalDestination: clientDCID))
    }

    func testChaCha20ShortHeaderMatchesRFC() throws {
        let secret = unhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b")
        let keys = try PacketKeys(secret: secret, suite: .chacha20Poly1305SHA256)
        XCTAssertEqual(keys.key, unhex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8"))
        XCTAssertEqual(keys.iv, unhex("e0459b3474bdd0e44a41c144"))
        XCTAssertEqual(keys.headerProtectionKey, unhex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4"))
        XCTAssertEqual(
            TLSKeySchedule.updatedSecret(secret, suite: .chacha20Poly1305SHA256),
            unhex("1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9"))
        XCTAssertEqual(keys.nonce(packetNumber: 654_360_564), unhex("e0459b3474bdd0e46d417eb0"))
        XCTAssertEqual(keys.headerProtectionMask(sample: unhex("5e5cd55c41f69080575d7999c25a5bfb")[...]), unhex("aefefe7d03"))
        let packet = PacketProtection.seal(
            ShortHeader(destination: .empty), packetNumber: 654_360_564, largestAcked: nil, keyPhase: false, payload: [0x01], keys: keys,
            packetNumberLength: 3)
        XCTAssertEqual(packet, unhex("4cfe4189655e5cd55c41f69080575d7999c25a5bfb"))
        let opened = try PacketProtection.open(try PacketParser.parse(packet[...], shortHeaderCIDLength: 0), keys: keys, largestReceived: 654_360_563)
        XCTAssertEqual(opened.packetNumber, 654_360_564)
        XCTAssertEqual(opened.payload, [0x01])
        XCTAssertFalse(opened.keyPhase)
    }

    func testEverySuiteRoundTripsAndKeyPhaseSurvives() throws {
        var generator = SplitMix(seed: 4)
        for suite in CipherSuite.allCases {
            let keys = try PacketKeys(secret: generator.bytes(suite.hashLength), suite: suite)
            let cid = ConnectionID.random()
            for (number, largest) in [(UInt64(0), UInt64?.none), (1000, 990), (1 << 30, (1 << 30) - 70000)] {
                let payload = Frame.ping.encoded
                let packet = PacketProtection.seal(ShortHeader(destination: cid), packetNumber: number, largestAcked: largest, keyPhase: true, payload: payload, keys: keys)
                let opened = try PacketProtection.open(try PacketParser.parse(packet[...], shortHeaderCIDLength: 8), keys: keys, largestReceived: largest)
                XCTAssertEqual(opened.packetNumber, number, "\(suite)")
                XCTAssertTrue(opened.keyPhase)
                // The payload was padded to reach the header protection sample.
                XCTAssertEqual(try Frame.decodeAll(opened.payload).first, .ping)
            }
            // A key update changes the AEAD key but not the header protection key.
            let next = keys.updated()
            XCTAssertNotEqual(next.key, keys.key)
            XCTAssertEqual(next.headerProtectionKey, keys.headerProtectionKey)
        }
        XCTAssertThrowsError(try PacketKeys(secret: [1, 2, 3], suite: .aes128GCMSHA256))
    }

    func testDamagedOrShortPacketsAreRefused() throws {
        let keys = InitialSecrets.keys(destination: clientDCID)
        let packet = unhex(RFC9001Vectors.clientProtectedPacket)
        for index in [0, 20, 100, packet.count - 1] {
            var damaged = packet
            damaged[index] ^= 0x10
            guard let parsed = try? PacketParser.parse(damaged[...], shortHeaderCIDLength: 0) else { continue }
            XCTAssertThrowsError(try PacketProtection.open(parsed, keys: keys.client, largestReceived: nil)) { error in
                // Byte 0 turns the Initial into a 0-RTT packet whose fields fall elsewhere; the others fail the tag.
                if index != 0 { XCTAssertEqual(error as? QUICProtectionError, .authenticationFailed, "byte \(index)") }
                XCTAssertTrue(error is QUICProtectionError)
            }
        }
        // Wrong keys.
        let parsed = try PacketParser.parse(packet[...], shortHeaderCIDLength: 0)
        XCTAssertThrowsError(try PacketProtection.open(parsed, keys: keys.server, largestReceived: nil))
        // Too short to take a header protection sample.
        let short = try PacketParser.parse(unhex("40 01020304 05060708090a0b0c0d0e0f")[...], shortHeaderCIDLength: 0)
        XCTAssertThrowsError(try PacketProtection.open(short, keys: keys.client, largestReceived: nil)) { error in
            XCTAssertEqual(error as? QUICProtectionError, .packetTooShortForSample(length: 16))
        }
    }

    func testRandomPacketsNeverOpenOrTrap() {
        var generator = SplitMix(seed: 5)
        let keys = InitialSecrets.keys(destination: clientDCID)
        for _ in 0..<3000 {
            let datagram = generator.bytes(Int.random(in: 0..<200, using: &generator))
            for packet in PacketParser.split(datagram: datagram, shortHeaderCIDLength: 8).packets {
                XCTAssertThrowsError(try PacketProtection.open(packet, keys: keys.client, largestReceived: nil))
            }
        }
    }
}
