import TestKit
import XCTest

@testable import QUIC

final class FrameTests: XCTestCase {
    static let cid = try! ConnectionID(unhex("0102030405060708"))

    /// One of each frame of RFC 9000 §19, with the variants (ACK with ranges
    /// and ECN, STREAM with every flag combination, both CONNECTION_CLOSE types).
    static var everyFrame: [Frame] {
        var frames: [Frame] = [
            .padding(count: 3), .ping,
            .ack(try! ACKFrame(ranges: [100...105], delay: 7)),
            .ack(try! ACKFrame(ranges: [90...100, 50...80, 2...2, 0...0], delay: 1000, ecn: ECNCounts(ect0: 5, ect1: 6, ce: 7))),
            .resetStream(streamID: 4, errorCode: 0x101, finalSize: 1 << 40),
            .stopSending(streamID: 8, errorCode: 3),
            .crypto(offset: 0, data: Array("client hello".utf8)),
            .crypto(offset: 1 << 20, data: []),
            .newToken([1, 2, 3, 4]),
            .maxData(1 << 50), .maxStreamData(streamID: 0, maximum: 65536),
            .maxStreams(bidirectional: true, maximum: 100), .maxStreams(bidirectional: false, maximum: 1 << 60),
            .dataBlocked(limit: 99), .streamDataBlocked(streamID: 3, limit: 12),
            .streamsBlocked(bidirectional: true, limit: 1), .streamsBlocked(bidirectional: false, limit: 2),
            .newConnectionID(sequence: 3, retirePriorTo: 1, connectionID: cid, resetToken: [UInt8](repeating: 0xEE, count: 16)),
            .retireConnectionID(sequence: 2),
            .pathChallenge([1, 2, 3, 4, 5, 6, 7, 8]), .pathResponse([8, 7, 6, 5, 4, 3, 2, 1]),
            .connectionClose(.transport(code: .protocolViolation, frameType: 0x06, reason: Array("bad crypto".utf8))),
            .connectionClose(.application(code: 0x42, reason: [])),
            .handshakeDone,
        ]
        for offset: UInt64 in [0, 1000] {
            for fin in [false, true] {
                frames.append(.stream(StreamFrame(streamID: 4, offset: offset, data: Array("hello".utf8), fin: fin, explicitLength: true)))
            }
        }
        return frames
    }

    func testEveryFrameRoundTrips() throws {
        for frame in Self.everyFrame {
            XCTAssertEqual(try Frame.decodeAll(frame.encoded), [frame], "\(frame)")
        }
        // All of them in one payload, as a packet carries them.
        var payload: [UInt8] = []
        for frame in Self.everyFrame { frame.encode(into: &payload) }
        XCTAssertEqual(try Frame.decodeAll(payload), Self.everyFrame)
    }

    func testStreamFlagsOnTheWire() throws {
        for type: UInt8 in 0x08...0x0f {
            var bytes: [UInt8] = [type, 0x04]
            if type & 0x04 != 0 { bytes += [0x44, 0x00] }  // offset 1024 on 2 bytes
            if type & 0x02 != 0 { bytes += [0x03] }
            bytes += [0x61, 0x62, 0x63]
            let frames = try Frame.decodeAll(bytes)
            XCTAssertEqual(frames.count, 1)
            guard case .stream(let stream) = frames[0] else { return XCTFail("not STREAM: \(frames)") }
            XCTAssertEqual(stream.streamID, 4)
            XCTAssertEqual(stream.offset, type & 0x04 != 0 ? 1024 : 0)
            XCTAssertEqual(stream.fin, type & 0x01 != 0)
            XCTAssertEqual(stream.explicitLength, type & 0x02 != 0)
            XCTAssertEqual(stream.data, Array("abc".utf8))
            XCTAssertEqual(Frame.stream(stream).encoded.first, type, "type 0x\(String(type, radix: 16)) re-encodes with its flags")
        }
        // Without LEN the data runs to the end of the packet.
        let last = Frame.stream(StreamFrame(streamID: 1, offset: 5, data: [9, 9], fin: true, explicitLength: false))
        XCTAssertEqual(try Frame.decodeAll(Frame.ping.encoded + last.encoded), [.ping, last])
    }

    func testACKRangesOnTheWire() throws {
        // Largest 100, first range 10 (90...100), gap 8 and length 30 (50...80).
        let frames = try Frame.decodeAll(unhex("02 40 64 05 01 0a 08 1e"))
        XCTAssertEqual(frames, [.ack(try ACKFrame(ranges: [90...100, 50...80], delay: 5))])
        XCTAssertThrowsError(try ACKFrame(ranges: [10...20, 21...30]))  // ascending
        XCTAssertThrowsError(try ACKFrame(ranges: [10...20, 5...9]))  // adjacent: no gap
        XCTAssertThrowsError(try ACKFrame(ranges: []))
    }

    func testTruncatedFramesThrowAtEveryCut() {
        for frame in Self.everyFrame {
            let bytes = frame.encoded
            if case .padding = frame { continue }  // Any prefix of padding is padding.
            if case .stream(let stream) = frame, !stream.explicitLength { continue }
            for cut in 1..<bytes.count {
                // A cut inside a STREAM/CRYPTO payload with an explicit length must throw too.
                XCTAssertThrowsError(try Frame.decodeAll(bytes[..<cut]), "\(frame) cut at \(cut)") { error in
                    XCTAssertTrue(error is QUICDecodeError)
                }
            }
        }
    }

    func testOversizedAndInvalidFramesAreRefused() {
        func refuses(_ text: String, _ expected: QUICDecodeError? = nil, line: UInt = #line) {
            XCTAssertThrowsError(try Frame.decodeAll(unhex(text)), line: line) { error in
                if let expected { XCTAssertEqual(error as? QUICDecodeError, expected, line: line) }
            }
        }
        refuses("02 0a 00 bfffffff 00")  // 2^30-1 ACK ranges in a few bytes
        refuses("02 05 00 00 06", .invalidACKRange)  // first range below 0
        refuses("02 05 00 01 02 03 05", .invalidACKRange)  // a gap below 0
        refuses("06 ffffffffffffffff 05 6162636465", .valueOutOfRange("CRYPTO offset + length", value: VarInt.max))
        refuses("06 00 4100 00")  // CRYPTO length beyond the payload
        refuses("0e 00 ffffffffffffffff 01 61", .valueOutOfRange("STREAM offset + length", value: VarInt.max))  // offset 2^62-1 + 1 byte
        refuses("07 00", .invalidFrame("NEW_TOKEN with an empty token"))
        refuses("12 d000000000000001", .valueOutOfRange("MAX_STREAMS maximum", value: (1 << 60) + 1))
        refuses("17 d000000000000001")
        refuses("18 01 02 08 0102030405060708 " + String(repeating: "ee", count: 16), .invalidFrame("NEW_CONNECTION_ID retire prior to above its sequence number"))
        refuses("18 01 00 15 " + String(repeating: "aa", count: 21 + 16), .invalidFrame("NEW_CONNECTION_ID length 21 outside 1...20"))
        refuses("18 01 00 00 " + String(repeating: "ee", count: 16))
        refuses("1c 01 00 7fff 6161", nil)  // reason longer than the frame
        refuses("1f", .unknownFrameType(0x1f))
        refuses("4001", .nonMinimalFrameType(0x01))  // PING on two bytes
    }

    func testRandomPayloadsNeverTrap() {
        var generator = SplitMix(seed: 2)
        var decoded = 0
        for _ in 0..<20000 {
            var payload = generator.bytes(Int.random(in: 1..<64, using: &generator))
            // Mostly known frame types, so decoding gets past the first byte.
            payload[0] = UInt8.random(in: 0...0x1f, using: &generator)
            if let frames = try? Frame.decodeAll(payload) {
                decoded += 1
                // What decodes re-encodes to something that decodes to the same frames.
                var again: [UInt8] = []
                for frame in frames { frame.encode(into: &again) }
                XCTAssertEqual(try? Frame.decodeAll(again), frames)
            }
        }
        XCTAssertGreaterThan(decoded, 100)
    }

    func testFramesPermittedPerLevel() {
        XCTAssertTrue(Frame.crypto(offset: 0, data: []).isAllowed(at: .initial))
        XCTAssertFalse(Frame.crypto(offset: 0, data: []).isAllowed(at: .zeroRTT))
        XCTAssertFalse(Frame.stream(StreamFrame(streamID: 0, data: [])).isAllowed(at: .handshake))
        XCTAssertTrue(Frame.stream(StreamFrame(streamID: 0, data: [])).isAllowed(at: .zeroRTT))
        XCTAssertFalse(Frame.handshakeDone.isAllowed(at: .handshake))
        XCTAssertFalse(Frame.connectionClose(.application(code: 0, reason: [])).isAllowed(at: .initial))
        XCTAssertTrue(Frame.connectionClose(.transport(code: .noError, frameType: 0, reason: [])).isAllowed(at: .initial))
        XCTAssertFalse(Frame.ack(try! ACKFrame(ranges: [0...0])).isAckEliciting)
        XCTAssertTrue(Frame.ping.isAckEliciting)
    }
}

final class TransportParametersTests: XCTestCase {
    static var full: TransportParameters {
        var parameters = TransportParameters()
        parameters.originalDestinationConnectionID = try! ConnectionID(unhex("8394c8f03e515708"))
        parameters.maxIdleTimeout = 30000
        parameters.statelessResetToken = [UInt8](repeating: 0x5A, count: 16)
        parameters.maxUDPPayloadSize = 1452
        parameters.initialMaxData = 1 << 20
        parameters.initialMaxStreamDataBidiLocal = 1 << 18
        parameters.initialMaxStreamDataBidiRemote = 1 << 18
        parameters.initialMaxStreamDataUni = 1 << 17
        parameters.initialMaxStreamsBidi = 256
        parameters.initialMaxStreamsUni = 16
        parameters.ackDelayExponent = 5
        parameters.maxAckDelay = 40
        parameters.disableActiveMigration = true
        parameters.preferredAddress = PreferredAddress(
            ipv4Address: [192, 0, 2, 1], ipv4Port: 4433, ipv6Address: [UInt8](repeating: 0x20, count: 16), ipv6Port: 4434,
            connectionID: try! ConnectionID([1, 2, 3, 4]), statelessResetToken: [UInt8](repeating: 0x11, count: 16))
        parameters.activeConnectionIDLimit = 8
        parameters.initialSourceConnectionID = try! ConnectionID(unhex("f067a5502a4262b5"))
        parameters.retrySourceConnectionID = try! ConnectionID([9, 9, 9])
        return parameters
    }

    func testRoundTrip() throws {
        XCTAssertEqual(try TransportParameters(decoding: Self.full.encoded(), fromServer: true), Self.full)
        // Defaults are not sent, and decode back to themselves.
        XCTAssertEqual(TransportParameters().encoded(), [])
        XCTAssertEqual(try TransportParameters(decoding: [], fromServer: false), TransportParameters())
    }

    func testUnknownParametersAreSkipped() throws {
        // A reserved (GREASE) ID 31*5+27 = 0xb6 with 3 bytes, then max_idle_timeout 10.
        let bytes = unhex("40b6 03 aabbcc 01 01 0a")
        var expected = TransportParameters()
        expected.maxIdleTimeout = 10
        XCTAssertEqual(try TransportParameters(decoding: bytes, fromServer: false), expected)
    }

    func testInvalidParametersAreRefused() {
        func refuses(_ text: String, fromServer: Bool = true, _ expected: QUICDecodeError, line: UInt = #line) {
            XCTAssertThrowsError(try TransportParameters(decoding: unhex(text), fromServer: fromServer), line: line) { error in
                XCTAssertEqual(error as? QUICDecodeError, expected, line: line)
                XCTAssertEqual((error as? QUICDecodeError)?.transportError, .transportParameterError, line: line)
            }
        }
        refuses("01 01 0a 01 01 0b", .duplicateTransportParameter(1))
        refuses("00 01 aa", fromServer: false, .invalidTransportParameter(0, "sent by a client"))
        refuses("02 02 aaaa", .invalidTransportParameter(2, "not 16 bytes"))
        refuses("03 02 4400", .invalidTransportParameter(3, "below 1200"))
        refuses("0a 01 15", .invalidTransportParameter(0x0a, "above 20"))
        refuses("0b 04 80004000", .invalidTransportParameter(0x0b, "2^14 or above"))
        refuses("0c 01 00", .invalidTransportParameter(0x0c, "not empty"))
        refuses("0e 01 01", .invalidTransportParameter(0x0e, "below 2"))
        refuses("08 08 d000000000000001", .invalidTransportParameter(0x08, "above 2^60"))
        refuses("04 02 05 05", .invalidTransportParameter(0x04, "bytes after its varint"))
        refuses("0f 15 " + String(repeating: "aa", count: 21), .invalidTransportParameter(0x0f, "connection ID longer than 20 bytes"))
        refuses("0d 05 c0000201 11", .invalidTransportParameter(0x0d, "truncated"))
    }

    func testTruncatedAndOversizedLengths() {
        let bytes = Self.full.encoded()
        for cut in 0..<bytes.count {
            // Some cuts end exactly between parameters, which is valid; none may trap.
            _ = try? TransportParameters(decoding: bytes[..<cut], fromServer: true)
        }
        XCTAssertThrowsError(try TransportParameters(decoding: unhex("04 bfffffff 00"), fromServer: true)) { error in
            guard case .lengthExceedsInput? = error as? QUICDecodeError else { return XCTFail("\(error)") }
        }
    }

    func testRandomInputNeverTraps() {
        var generator = SplitMix(seed: 3)
        for _ in 0..<10000 {
            let bytes = generator.bytes(Int.random(in: 0..<80, using: &generator))
            if let parameters = try? TransportParameters(decoding: bytes, fromServer: true) {
                XCTAssertEqual(try? TransportParameters(decoding: parameters.encoded(), fromServer: true), parameters)
            }
        }
    }
}
