import TestKit
import XCTest

@testable import QUIC

final class VarIntTests: XCTestCase {
    /// RFC 9000 Appendix A.1's sample encodings.
    func testRFCSamples() throws {
        let samples: [(String, UInt64)] = [
            ("c2197c5eff14e88c", 151_288_809_941_952_652), ("9d7f3e7d", 494_878_333), ("7bbd", 15293), ("25", 37), ("4025", 37),
        ]
        for (encoding, value) in samples {
            var reader = ByteReader(unhex(encoding))
            XCTAssertEqual(try reader.readVarInt("sample"), value, encoding)
            XCTAssertTrue(reader.isAtEnd)
        }
        XCTAssertEqual(VarInt.encoded(151_288_809_941_952_652), unhex("c2197c5eff14e88c"))
        XCTAssertEqual(VarInt.encoded(494_878_333), unhex("9d7f3e7d"))
        XCTAssertEqual(VarInt.encoded(15293), unhex("7bbd"))
        XCTAssertEqual(VarInt.encoded(37), unhex("25"))
    }

    func testBoundariesRoundTrip() throws {
        for value: UInt64 in [0, 63, 64, 16383, 16384, (1 << 30) - 1, 1 << 30, VarInt.max] {
            let bytes = VarInt.encoded(value)
            XCTAssertEqual(bytes.count, VarInt.encodedLength(value))
            var reader = ByteReader(bytes)
            XCTAssertEqual(try reader.readVarInt("v"), value)
        }
        XCTAssertNil(VarInt.encodedLength(VarInt.max + 1))
    }

    func testTruncatedVarIntThrows() {
        for encoding in ["c2197c5eff14e8", "9d7f3e", "7b", ""] {
            var reader = ByteReader(unhex(encoding))
            XCTAssertThrowsError(try reader.readVarInt("sample")) { error in
                XCTAssertTrue(error is QUICDecodeError)
            }
        }
    }

    func testLengthBeyondInputThrowsBeforeReading() {
        var reader = ByteReader(unhex("c0000000ffffffff" + "00"))
        XCTAssertThrowsError(try reader.readLength("huge")) { error in
            XCTAssertEqual(error as? QUICDecodeError, .lengthExceedsInput("huge", length: 0xffff_ffff, available: 1))
        }
    }
}

final class PacketNumberTests: XCTestCase {
    /// RFC 9000 Appendix A.2 and A.3 examples.
    func testRFCExamples() {
        XCTAssertEqual(PacketNumber.encodedLength(0xac5c02, largestAcked: 0xabe8b3), 2)
        XCTAssertEqual(PacketNumber.encodedLength(0xace8fe, largestAcked: 0xabe8b3), 3)
        XCTAssertEqual(PacketNumber.decode(truncated: 0x9b32, length: 2, largest: 0xa82f30ea), 0xa82f9b32)
    }

    func testRoundTripAcrossWindows() {
        var generator = SplitMix(seed: 9)
        for _ in 0..<2000 {
            let largest = UInt64.random(in: 0..<(1 << 40), using: &generator)
            let full = largest + UInt64.random(in: 1..<(1 << 20), using: &generator)
            let length = PacketNumber.encodedLength(full, largestAcked: largest)
            let truncated = full & ((1 << UInt64(length * 8)) - 1)
            XCTAssertEqual(PacketNumber.decode(truncated: truncated, length: length, largest: largest), full)
        }
        // The first packet of a space, and numbers near the top of the range, neither wrap nor trap.
        XCTAssertEqual(PacketNumber.decode(truncated: 0, length: 1, largest: nil), 0)
        XCTAssertEqual(PacketNumber.decode(truncated: 0xff, length: 1, largest: PacketNumber.max - 1), PacketNumber.max)
        XCTAssertEqual(PacketNumber.encodedLength(0, largestAcked: nil), 1)
        XCTAssertEqual(PacketNumber.encodedLength(PacketNumber.max, largestAcked: nil), 4)
    }
}

final class PacketHeaderTests: XCTestCase {
    let dcid = try! ConnectionID(unhex("8394c8f03e515708"))
    let scid = try! ConnectionID(unhex("f067a5502a4262b5"))

    func testInitialWithTokenRoundTrip() throws {
        let header = LongHeader(type: .initial, destination: dcid, source: scid, token: Array("token".utf8))
        var bytes: [UInt8] = []
        header.encode(packetNumber: 7, packetNumberLength: 2, payloadLength: 30, into: &bytes)
        bytes += [UInt8](repeating: 0xAA, count: 30)
        let packet = try PacketParser.parse(bytes[...], shortHeaderCIDLength: 8)
        XCTAssertEqual(packet.header, .long(header))
        XCTAssertEqual(packet.bytes.count, bytes.count)
        XCTAssertEqual(packet.packetNumberOffset, bytes.count - 30 - 2)
    }

    func testHandshakeAndZeroRTTRoundTrip() throws {
        for type in [LongPacketType.handshake, .zeroRTT] {
            let header = LongHeader(type: type, destination: dcid, source: .empty)
            var bytes: [UInt8] = []
            header.encode(packetNumber: 1, packetNumberLength: 1, payloadLength: 20, into: &bytes)
            bytes += [UInt8](repeating: 1, count: 20)
            XCTAssertEqual(try PacketParser.parse(bytes[...], shortHeaderCIDLength: 0).header, .long(header))
        }
    }

    func testShortHeaderRoundTrip() throws {
        let header = ShortHeader(destination: dcid, spinBit: true)
        var bytes: [UInt8] = []
        header.encode(packetNumber: 0x1234, packetNumberLength: 2, keyPhase: true, into: &bytes)
        bytes += [UInt8](repeating: 2, count: 20)
        let packet = try PacketParser.parse(bytes[...], shortHeaderCIDLength: 8)
        XCTAssertEqual(packet.header, .short(header))
        XCTAssertEqual(packet.packetNumberOffset, 9)
        XCTAssertEqual(packet.bytes.count, bytes.count)
    }

    func testRetryAndVersionNegotiationRoundTrip() throws {
        let retry = RetryPacket(destination: dcid, source: scid, token: Array("retry-token".utf8), integrityTag: [UInt8](repeating: 9, count: 16))
        XCTAssertEqual(try PacketParser.parse(retry.encoded()[...], shortHeaderCIDLength: 8).header, .retry(retry))
        let negotiation = VersionNegotiationPacket(destination: dcid.bytes, source: scid.bytes, versions: [1, 0x6b33_43cf, 0x1a2a_3a4a])
        XCTAssertEqual(try PacketParser.parse(negotiation.encoded(unusedBits: 0x55)[...], shortHeaderCIDLength: 8).header, .versionNegotiation(negotiation))
    }

    func testUnsupportedVersionKeepsTheInvariants() throws {
        // RFC 8999 allows IDs up to 255 bytes in other versions.
        let long = [UInt8](repeating: 3, count: 40)
        let bytes: [UInt8] = [0xC0, 0xff, 0x00, 0x00, 0x1d, 40] + long + [0] + [UInt8](repeating: 0, count: 1200)
        let packet = try PacketParser.parse(bytes[...], shortHeaderCIDLength: 8)
        XCTAssertEqual(packet.header, .unsupportedVersion(version: 0xff00_001d, destination: long, source: []))
        XCTAssertNil(packet.packetNumberOffset)
    }

    func testVersionNegotiationAnswersUnknownVersionsOnly() throws {
        let source = [UInt8](repeating: 7, count: 30)  // longer than v1 allows: fine for another version
        let bytes: [UInt8] = [0xC0, 0x1a, 0x2a, 0x3a, 0x4a, 8] + dcid.bytes + [30] + source + [UInt8](repeating: 0, count: 1200)
        let packet = try PacketParser.parse(bytes[...], shortHeaderCIDLength: 8)
        let answer = try XCTUnwrap(VersionNegotiationPacket.answer(to: packet, datagramSize: bytes.count))
        XCTAssertEqual(answer, VersionNegotiationPacket(destination: source, source: dcid.bytes, versions: [1]))
        // The client reads it back as Version Negotiation addressed to it.
        let parsed = try PacketParser.parse(answer.encoded()[...], shortHeaderCIDLength: 8)
        XCTAssertEqual(parsed.header, .versionNegotiation(answer))
        XCTAssertNil(VersionNegotiationPacket.answer(to: packet, datagramSize: 1199), "small datagrams are not answered")
        var v1: [UInt8] = []
        LongHeader(type: .initial, destination: dcid, source: scid).encode(packetNumber: 0, packetNumberLength: 1, payloadLength: 1200, into: &v1)
        v1 += [UInt8](repeating: 0, count: 1200)
        XCTAssertNil(VersionNegotiationPacket.answer(to: try PacketParser.parse(v1[...], shortHeaderCIDLength: 8), datagramSize: v1.count))
    }

    func testCoalescedPacketsSplit() throws {
        var datagram: [UInt8] = []
        LongHeader(type: .initial, destination: dcid, source: scid).encode(packetNumber: 0, packetNumberLength: 1, payloadLength: 40, into: &datagram)
        datagram += [UInt8](repeating: 1, count: 40)
        let firstEnd = datagram.count
        LongHeader(type: .handshake, destination: dcid, source: scid).encode(packetNumber: 0, packetNumberLength: 1, payloadLength: 40, into: &datagram)
        datagram += [UInt8](repeating: 2, count: 40)
        let secondEnd = datagram.count
        ShortHeader(destination: dcid).encode(packetNumber: 0, packetNumberLength: 1, keyPhase: false, into: &datagram)
        datagram += [UInt8](repeating: 3, count: 40)
        let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: 8)
        XCTAssertNil(split.discardedRemainder)
        XCTAssertEqual(split.packets.count, 3)
        XCTAssertEqual(split.packets.map(\.bytes.endIndex), [firstEnd, secondEnd, datagram.count])
        guard case .long(let first) = split.packets[0].header, case .long(let second) = split.packets[1].header,
            case .short = split.packets[2].header
        else { return XCTFail("wrong packet kinds \(split.packets.map(\.header))") }
        XCTAssertEqual(first.type, .initial)
        XCTAssertEqual(second.type, .handshake)
    }

    func testMalformedSecondPacketKeepsTheFirst() {
        var datagram: [UInt8] = []
        LongHeader(type: .initial, destination: dcid, source: scid).encode(packetNumber: 0, packetNumberLength: 1, payloadLength: 30, into: &datagram)
        datagram += [UInt8](repeating: 1, count: 30)
        datagram += [0x00, 0x01, 0x02]  // Fixed bit clear: not a QUIC packet.
        let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: 8)
        XCTAssertEqual(split.packets.count, 1)
        XCTAssertEqual(split.discardedRemainder, .fixedBitNotSet)
    }

    func testTruncatedHeadersThrowAtEveryCut() throws {
        var bytes: [UInt8] = []
        LongHeader(type: .initial, destination: dcid, source: scid, token: [1, 2, 3]).encode(packetNumber: 0, packetNumberLength: 4, payloadLength: 100, into: &bytes)
        bytes += [UInt8](repeating: 0, count: 100)
        for cut in 0..<bytes.count {
            XCTAssertThrowsError(try PacketParser.parse(bytes[..<cut], shortHeaderCIDLength: 8), "cut at \(cut)")
        }
    }

    func testOversizedFieldsAreRefused() {
        // A v1 connection ID of 21 bytes.
        let long: [UInt8] = [0xC0, 0, 0, 0, 1, 21] + [UInt8](repeating: 0, count: 60)
        XCTAssertThrowsError(try PacketParser.parse(long[...], shortHeaderCIDLength: 8)) { error in
            XCTAssertEqual(error as? QUICDecodeError, .connectionIDTooLong(21))
        }
        // A token length far beyond the datagram.
        let token: [UInt8] = [0xC0, 0, 0, 0, 1, 0, 0, 0xBF, 0xFF, 0xFF, 0xFF] + [UInt8](repeating: 0, count: 30)
        XCTAssertThrowsError(try PacketParser.parse(token[...], shortHeaderCIDLength: 8)) { error in
            guard case .lengthExceedsInput("token length", _, _)? = error as? QUICDecodeError else { return XCTFail("\(error)") }
        }
        // A packet Length beyond the datagram.
        let length: [UInt8] = [0xE0, 0, 0, 0, 1, 0, 0, 0x44, 0xFF] + [UInt8](repeating: 0, count: 30)
        XCTAssertThrowsError(try PacketParser.parse(length[...], shortHeaderCIDLength: 8))
        // A Retry too short for its tag.
        XCTAssertThrowsError(try PacketParser.parse(([0xF0, 0, 0, 0, 1, 0, 0] + [UInt8](repeating: 0, count: 15))[...], shortHeaderCIDLength: 8))
    }

    func testRandomDatagramsNeverTrap() {
        var generator = SplitMix(seed: 1)
        for _ in 0..<5000 {
            let datagram = generator.bytes(Int.random(in: 0..<300, using: &generator))
            let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: Int.random(in: 0...20, using: &generator))
            // Every packet lies inside the datagram and they follow each other.
            var end = 0
            for packet in split.packets {
                XCTAssertEqual(packet.bytes.startIndex, end)
                end = packet.bytes.endIndex
            }
            XCTAssertLessThanOrEqual(end, datagram.count)
        }
    }
}
