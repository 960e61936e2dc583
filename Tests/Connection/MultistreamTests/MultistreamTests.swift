import Multistream
import NIOCore
import TestKit
import XCTest

final class MultistreamTests: XCTestCase {
    /// Runs two negotiations against each other, delivering bytes `step` at a time.
    func negotiate(
        _ initiator: inout MultistreamNegotiation, _ responder: inout MultistreamNegotiation, step: Int,
        extraFromInitiator: [UInt8] = []
    ) throws -> (String?, String?, ByteBuffer) {
        var toResponder = ByteBuffer()
        var toInitiator = ByteBuffer()
        initiator.start(into: &toResponder)
        responder.start(into: &toInitiator)
        var initiatorResult: String?
        var responderResult: String?
        var responderLeftover = ByteBuffer()
        var sentExtra = false
        for _ in 0..<10_000 {
            if toResponder.readableBytes == 0 && toInitiator.readableBytes == 0 {
                if initiatorResult != nil && !sentExtra && !extraFromInitiator.isEmpty {
                    toResponder.writeBytes(extraFromInitiator)
                    sentExtra = true
                    continue
                }
                break
            }
            if toResponder.readableBytes > 0 {
                var chunk = toResponder.readSlice(length: min(step, toResponder.readableBytes))!
                if responderResult == nil {
                    responderResult = try responder.receive(&chunk, output: &toInitiator)
                    if responderResult != nil { responderLeftover.writeBuffer(&chunk) }
                } else {
                    responderLeftover.writeBuffer(&chunk)
                }
            }
            if toInitiator.readableBytes > 0 {
                var chunk = toInitiator.readSlice(length: min(step, toInitiator.readableBytes))!
                if initiatorResult == nil {
                    initiatorResult = try initiator.receive(&chunk, output: &toResponder)
                    // The initiator pipelines extra data right after its final proposal here.
                    if initiatorResult != nil && !extraFromInitiator.isEmpty && !sentExtra {
                        toResponder.writeBytes(extraFromInitiator)
                        sentExtra = true
                    }
                }
            }
        }
        return (initiatorResult, responderResult, responderLeftover)
    }

    func testAgreesAtEveryFragmentation() throws {
        for step in [1, 2, 3, 5, 7, 64, 1000] {
            var initiator = MultistreamNegotiation.initiator(protocols: ["/a/1", "/noise"])
            var responder = MultistreamNegotiation.responder { $0 == "/noise" }
            let (i, r, leftover) = try negotiate(&initiator, &responder, step: step, extraFromInitiator: [1, 2, 3])
            XCTAssertEqual(i, "/noise", "step \(step)")
            XCTAssertEqual(r, "/noise", "step \(step)")
            XCTAssertEqual(Array(leftover.readableBytesView), [1, 2, 3], "step \(step)")
        }
    }

    func testWireFormat() {
        var out = ByteBuffer()
        MultistreamNegotiation.writeMessage("/multistream/1.0.0", into: &out)
        XCTAssertEqual(Array(out.readableBytesView), [19] + Array("/multistream/1.0.0\n".utf8))
        var initiator = MultistreamNegotiation.initiator(protocols: ["/yamux/1.0.0"])
        var hello = ByteBuffer()
        initiator.start(into: &hello)
        XCTAssertEqual(
            Array(hello.readableBytesView),
            [19] + Array("/multistream/1.0.0\n".utf8) + [13] + Array("/yamux/1.0.0\n".utf8))
    }

    func testNoneSupported() throws {
        var initiator = MultistreamNegotiation.initiator(protocols: ["/a", "/b"])
        var responder = MultistreamNegotiation.responder { _ in false }
        XCTAssertThrowsError(try negotiate(&initiator, &responder, step: 100)) { error in
            XCTAssertEqual(error as? MultistreamError, .protocolsNotSupported(["/a", "/b"]))
        }
    }

    func feed(_ negotiation: inout MultistreamNegotiation, _ bytes: [UInt8]) throws -> String? {
        var input = ByteBuffer(bytes: bytes)
        var output = ByteBuffer()
        return try negotiation.receive(&input, output: &output)
    }

    func message(_ text: String) -> [UInt8] {
        var out = ByteBuffer()
        MultistreamNegotiation.writeMessage(text, into: &out)
        return Array(out.readableBytesView)
    }

    func testErrors() {
        var wrongHeader = MultistreamNegotiation.responder { _ in true }
        XCTAssertThrowsError(try feed(&wrongHeader, message("/multistream/2.0.0"))) {
            XCTAssertEqual($0 as? MultistreamError, .wrongHeader("/multistream/2.0.0"))
        }
        var tooLong = MultistreamNegotiation.responder { _ in true }
        XCTAssertThrowsError(try feed(&tooLong, [0xff, 0xff, 0x7f])) {
            guard case .messageTooLong = $0 as? MultistreamError else { return XCTFail("\($0)") }
        }
        var noNewline = MultistreamNegotiation.responder { _ in true }
        XCTAssertThrowsError(try feed(&noNewline, [3, 0x61, 0x62, 0x63])) {
            XCTAssertEqual($0 as? MultistreamError, .missingNewline)
        }
        var badUTF8 = MultistreamNegotiation.responder { _ in true }
        XCTAssertThrowsError(try feed(&badUTF8, message("/multistream/1.0.0") + [3, 0xff, 0xfe, 0x0a])) {
            XCTAssertEqual($0 as? MultistreamError, .invalidUTF8)
        }
        var rounds = MultistreamNegotiation.responder(limits: MultistreamLimits(maxRounds: 3)) { _ in false }
        var flood = message("/multistream/1.0.0")
        for _ in 0..<5 { flood += message("/nope") }
        XCTAssertThrowsError(try feed(&rounds, flood)) { XCTAssertEqual($0 as? MultistreamError, .tooManyRounds(3)) }
        var unexpected = MultistreamNegotiation.initiator(protocols: ["/a"])
        XCTAssertThrowsError(try feed(&unexpected, message("/multistream/1.0.0") + message("/b"))) {
            XCTAssertEqual($0 as? MultistreamError, .unexpectedMessage("/b"))
        }
    }

    func testPartialInputWaits() throws {
        var responder = MultistreamNegotiation.responder { _ in true }
        let bytes = message("/multistream/1.0.0") + message("/x")
        for byte in bytes.dropLast() {
            XCTAssertNil(try feed(&responder, [byte]))
        }
        XCTAssertEqual(try feed(&responder, [bytes.last!]), "/x")
    }

    func testRandomInputNeverCrashes() {
        var random = SplitMix(seed: 9)
        func next() -> UInt64 { random.next() }
        for _ in 0..<5000 {
            var negotiation = next() % 2 == 0
                ? MultistreamNegotiation.responder { _ in true } : MultistreamNegotiation.initiator(protocols: ["/a"])
            var bytes = (0..<Int(next() % 64)).map { _ in UInt8(truncatingIfNeeded: next()) }
            if next() % 2 == 0 { bytes = message("/multistream/1.0.0") + bytes }
            _ = try? feed(&negotiation, bytes)
        }
    }
}
