import TestKit
import XCTest

@testable import QUIC

final class ReassemblyBufferTests: XCTestCase {
    func testOutOfOrderOverlappingAndRepeatedPiecesComeOutInOrder() throws {
        var buffer = ReassemblyBuffer(limit: 100)
        try buffer.insert([5, 6, 7], at: 5)
        XCTAssertEqual(buffer.read(), [])
        try buffer.insert([0, 1, 2], at: 0)
        XCTAssertEqual(buffer.read(), [0, 1, 2])
        try buffer.insert([2, 3, 4, 5], at: 2)  // overlaps both sides
        try buffer.insert([0, 1], at: 0)  // already read
        XCTAssertEqual(buffer.read(), [3, 4, 5, 6, 7])
        try buffer.insert([8, 9], at: 8, fin: true)
        XCTAssertEqual(buffer.read(), [8, 9])
        XCTAssertTrue(buffer.isComplete)
    }

    func testRandomSplitsAndOrdersReassembleTheOriginal() throws {
        var generator = SplitMix(seed: 10)
        for _ in 0..<200 {
            let original = generator.bytes(Int.random(in: 1..<2000, using: &generator))
            var pieces: [(UInt64, [UInt8], Bool)] = []
            var offset = 0
            while offset < original.count {
                let length = min(original.count - offset, Int.random(in: 1...300, using: &generator))
                pieces.append((UInt64(offset), Array(original[offset..<(offset + length)]), offset + length == original.count))
                offset += length
            }
            pieces += pieces.prefix(3)  // duplicates
            pieces.shuffle(using: &generator)
            var buffer = ReassemblyBuffer(limit: 4096)
            var out: [UInt8] = []
            for (offset, data, fin) in pieces {
                try buffer.insert(data, at: offset, fin: fin)
                out += buffer.read()
            }
            XCTAssertEqual(out, original)
            XCTAssertTrue(buffer.isComplete)
        }
    }

    func testOverlapsAreHeldOnce() throws {
        var buffer = ReassemblyBuffer(limit: 1000)
        // The same 100 bytes sent as many overlapping pieces, none readable (the first byte is missing).
        let data = [UInt8](0..<100)
        for start in stride(from: 1, to: 90, by: 3) {
            try buffer.insert(Array(data[start..<(start + 10)]), at: UInt64(start))
        }
        try buffer.insert(Array(data[1..<100]), at: 1)
        XCTAssertEqual(buffer.bufferedBytes, 99)
        try buffer.insert([0], at: 0)
        XCTAssertEqual(buffer.read(), data)
        XCTAssertEqual(buffer.bufferedBytes, 0)
    }

    func testLimitsAndFinalSizeAreEnforced() {
        var buffer = ReassemblyBuffer(limit: 10)
        XCTAssertThrowsError(try buffer.insert([UInt8](repeating: 0, count: 11), at: 0)) { error in
            XCTAssertEqual(error as? ReassemblyError, .limitExceeded(end: 11, limit: 10))
        }
        XCTAssertNoThrow(try buffer.insert([1, 2], at: 3, fin: true))
        XCTAssertThrowsError(try buffer.insert([1], at: 5)) { XCTAssertEqual($0 as? ReassemblyError, .finalSizeChanged) }
        XCTAssertThrowsError(try buffer.insert([1], at: 3, fin: true)) { XCTAssertEqual($0 as? ReassemblyError, .finalSizeChanged) }
        // A FIN below data already received.
        var other = ReassemblyBuffer(limit: 100)
        XCTAssertNoThrow(try other.insert([1, 2, 3], at: 10))
        XCTAssertThrowsError(try other.insert([1], at: 0, fin: true)) { XCTAssertEqual($0 as? ReassemblyError, .finalSizeChanged) }
    }

    /// Random overlapping pieces (retransmissions cut differently) in random order.
    func testRandomOverlappingPiecesReassembleTheOriginal() throws {
        var generator = SplitMix(seed: 11)
        for _ in 0..<300 {
            let original = generator.bytes(Int.random(in: 1..<3000, using: &generator))
            var pieces: [(UInt64, [UInt8])] = []
            for _ in 0..<Int.random(in: 1...40, using: &generator) {
                let start = Int.random(in: 0..<original.count, using: &generator)
                let length = Int.random(in: 1...min(400, original.count - start), using: &generator)
                pieces.append((UInt64(start), Array(original[start..<(start + length)])))
            }
            // Whatever the random pieces left uncovered arrives last, in order.
            var offset = 0
            while offset < original.count {
                let length = min(original.count - offset, 500)
                pieces.append((UInt64(offset), Array(original[offset..<(offset + length)])))
                offset += length
            }
            let tail = pieces.count - (original.count + 499) / 500
            pieces[..<tail].shuffle(using: &generator)
            var buffer = ReassemblyBuffer(limit: 4096)
            var out: [UInt8] = []
            for (offset, data) in pieces {
                try buffer.insert(data, at: offset, fin: offset + UInt64(data.count) == original.count)
                out += buffer.read()
                XCTAssertLessThanOrEqual(buffer.bufferedBytes, original.count - out.count)
            }
            XCTAssertEqual(out, original)
            XCTAssertTrue(buffer.isComplete)
            XCTAssertEqual(buffer.bufferedBytes, 0)
        }
    }

    /// A window's worth of packets behind one lost packet is one piece, not
    /// one per packet: a lossy but honest peer is not taken for a fragmenter.
    func testInOrderDataBehindAGapIsOnePiece() throws {
        var buffer = ReassemblyBuffer(limit: 4 << 20)
        let packet = 1150
        for index in 1..<3000 {
            try buffer.insert([UInt8](repeating: UInt8(index & 0xff), count: packet), at: UInt64(index * packet))
        }
        XCTAssertEqual(buffer.read(), [], "the first packet is missing")
        try buffer.insert([UInt8](repeating: 0, count: packet), at: 0)
        XCTAssertEqual(buffer.read().count, 3000 * packet)
        XCTAssertEqual(buffer.bufferedBytes, 0)
    }

    func testFragmentationIsBounded() {
        var buffer = ReassemblyBuffer(limit: 1 << 20)
        // One-byte pieces with gaps between them, none readable.
        var refused: ReassemblyError?
        for index in 0..<1000 {
            do {
                try buffer.insert([1], at: UInt64(2 * index + 1))
            } catch {
                refused = error
                break
            }
        }
        XCTAssertEqual(refused, .tooFragmented)
    }
}

final class NewRenoTests: XCTestCase {
    func testSlowStartAvoidanceAndOneHalvingPerRecovery() {
        var reno = NewReno()
        let start = ContinuousClock.now
        XCTAssertEqual(reno.window, 12000)
        reno.sent(1200)
        reno.acknowledged(1200, sentAt: start)
        XCTAssertEqual(reno.window, 13200, "slow start adds what was acknowledged")
        reno.sent(6000)
        reno.lost(1200, newestSentAt: start + .milliseconds(1), now: start + .milliseconds(10))
        XCTAssertEqual(reno.window, 6600)
        XCTAssertEqual(reno.slowStartThreshold, 6600)
        // A second loss of a packet sent before the recovery began does not halve again.
        reno.lost(1200, newestSentAt: start + .milliseconds(2), now: start + .milliseconds(11))
        XCTAssertEqual(reno.window, 6600)
        // Nor does an ACK of such a packet grow the window.
        reno.acknowledged(1200, sentAt: start + .milliseconds(3))
        XCTAssertEqual(reno.window, 6600)
        // After the recovery: congestion avoidance, about one datagram per window acknowledged.
        reno.sent(6600)
        reno.acknowledged(6600, sentAt: start + .milliseconds(20))
        XCTAssertEqual(reno.window, 6600 + 1200)
        XCTAssertEqual(reno.bytesInFlight, 6000 - 3 * 1200, "the 6000 sent, less what was lost or acknowledged")
        // Never below two datagrams.
        for step in 0..<10 { reno.lost(0, newestSentAt: start + .seconds(step + 1), now: start + .seconds(step + 1) + .milliseconds(1)) }
        XCTAssertEqual(reno.window, reno.minimumWindow)
    }
}

final class SendBufferTests: XCTestCase {
    func testNewDataWithinLimitsThenLostDataFirst() {
        var buffer = SendBuffer()
        buffer.write(Array(0..<10), fin: true)
        let first = buffer.next(maxLength: 4, limit: 100)
        XCTAssertEqual(first?.offset, 0)
        XCTAssertEqual(first?.data, [0, 1, 2, 3])
        XCTAssertEqual(first?.fin, false)
        // Flow control stops at 6.
        let second = buffer.next(maxLength: 100, limit: 6)
        XCTAssertEqual(second?.data, [4, 5])
        XCTAssertNil(buffer.next(maxLength: 100, limit: 6))
        // What was lost goes before new data, cut to fit.
        buffer.markLost(offset: 0, length: 4, fin: false)
        XCTAssertEqual(buffer.next(maxLength: 3, limit: 6)?.data, [0, 1, 2])
        XCTAssertEqual(buffer.next(maxLength: 3, limit: 6)?.data, [3])
        let last = buffer.next(maxLength: 100, limit: 100)
        XCTAssertEqual(last?.data, [6, 7, 8, 9])
        XCTAssertEqual(last?.fin, true)
        XCTAssertFalse(buffer.hasPending)
    }

    func testDoneOnceEverythingAndTheFinAreAcknowledged() {
        var buffer = SendBuffer()
        buffer.write(Array(0..<10), fin: true)
        let first = buffer.next(maxLength: 6, limit: 100)!
        let second = buffer.next(maxLength: 6, limit: 100)!
        buffer.markAcked(offset: second.offset, length: second.data.count, fin: second.fin)
        XCTAssertFalse(buffer.isDone, "bytes 0..<6 are not acknowledged yet")
        buffer.markAcked(offset: first.offset, length: first.data.count, fin: first.fin)
        XCTAssertTrue(buffer.isDone)
        // A reset side is done at once and sends nothing more.
        var other = SendBuffer()
        other.write([1, 2, 3], fin: false)
        _ = other.next(maxLength: 2, limit: 100)
        XCTAssertEqual(other.resetSending(), 2)
        XCTAssertTrue(other.isDone)
        XCTAssertNil(other.next(maxLength: 10, limit: 100))
    }

    func testAFinAloneIsSent() {
        var buffer = SendBuffer()
        buffer.write([1], fin: false)
        _ = buffer.next(maxLength: 10, limit: 10)
        buffer.write([], fin: true)
        let fin = buffer.next(maxLength: 10, limit: 10)
        XCTAssertEqual(fin?.offset, 1)
        XCTAssertEqual(fin?.data, [])
        XCTAssertEqual(fin?.fin, true)
    }
}
