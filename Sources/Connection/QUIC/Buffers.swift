/// Why received stream or CRYPTO data was refused.
public enum ReassemblyError: Error, Equatable, Sendable {
    /// Data past the limit the receiver allowed (FLOW_CONTROL_ERROR, or CRYPTO_BUFFER_EXCEEDED for CRYPTO).
    case limitExceeded(end: UInt64, limit: UInt64)
    /// A final size that differs from an earlier one, or data past it (FINAL_SIZE_ERROR).
    case finalSizeChanged
    /// Too many separate pieces waiting for a gap to fill.
    case tooFragmented
}

/// Data received at offsets (CRYPTO or STREAM frames), out of order and
/// possibly repeated, handed on in order. Only bytes not held yet are kept,
/// so memory is bounded by `limit` minus what was read. Held bytes form
/// pieces that never touch (data that meets a piece joins it), so
/// `maxPieces` bounds the gaps a peer leaves, not the packets that arrive
/// behind one lost packet (a window's worth after a loss is one piece).
public struct ReassemblyBuffer: Sendable {
    public private(set) var readOffset: UInt64 = 0
    /// The highest offset (exclusive) the peer may send to.
    public var limit: UInt64
    public private(set) var finalSize: UInt64?
    /// The highest offset received, for connection-level flow control.
    public private(set) var highestOffset: UInt64 = 0
    /// Sorted by start; each ends before the next one starts (never touching).
    private var pieces: [(start: UInt64, bytes: [UInt8])] = []
    static let maxPieces = 256

    public init(limit: UInt64) {
        self.limit = limit
    }

    public mutating func insert(_ data: [UInt8], at offset: UInt64, fin: Bool = false) throws(ReassemblyError) {
        let end = offset + UInt64(data.count)  // Frames bound offset + length below 2^62.
        if let finalSize, end > finalSize || (fin && end != finalSize) { throw .finalSizeChanged }
        if fin {
            guard end >= highestOffset else { throw .finalSizeChanged }
            finalSize = end
        }
        guard end <= limit else { throw .limitExceeded(end: end, limit: limit) }
        highestOffset = max(highestOffset, end)
        let start = max(offset, readOffset)
        guard end > start else { return }
        func slice(_ from: UInt64, _ to: UInt64) -> ArraySlice<UInt8> { data[Int(from - offset)..<Int(to - offset)] }
        // The pieces that overlap or touch [start, end): lo..<hi.
        var lo = 0
        var high = pieces.count
        while lo < high {
            let middle = (lo + high) / 2
            if pieces[middle].start + UInt64(pieces[middle].bytes.count) < start { lo = middle + 1 } else { high = middle }
        }
        var hi = lo
        while hi < pieces.count, pieces[hi].start <= end { hi += 1 }
        guard lo < hi else {
            guard pieces.count < Self.maxPieces else { throw .tooFragmented }
            pieces.insert((start, Array(slice(start, end))), at: lo)
            return
        }
        // One piece from the first to the last of them, gaps filled from `data`.
        // Grown in place from the first piece when the new data does not start
        // before it (in-order data behind a gap appends, without copying what is held).
        let first = pieces[lo].start
        var cursor = first + UInt64(pieces[lo].bytes.count)
        var merged: [UInt8]
        if start < first {
            merged = Array(slice(start, first))
            merged += pieces[lo].bytes
        } else {
            merged = pieces[lo].bytes
            pieces[lo].bytes = []  // `merged` is then the only reference: appends do not copy.
        }
        for index in (lo + 1)..<max(lo + 1, hi) {
            let piece = pieces[index]
            if piece.start > cursor { merged += slice(cursor, piece.start) }
            merged += piece.bytes
            cursor = piece.start + UInt64(piece.bytes.count)
        }
        if cursor < end { merged += slice(cursor, end) }
        pieces.replaceSubrange(lo..<hi, with: [(start: min(start, first), bytes: merged)])
    }

    /// Everything contiguous from the read offset, consumed.
    public mutating func read() -> [UInt8] {
        guard let first = pieces.first, first.start == readOffset else { return [] }
        pieces.removeFirst()
        readOffset += UInt64(first.bytes.count)
        return first.bytes
    }

    /// Bytes held beyond the read offset.
    public var bufferedBytes: Int { pieces.reduce(0) { $0 + $1.bytes.count } }

    /// All data up to the final size was read.
    public var isComplete: Bool { finalSize == readOffset }
}

/// Data to send at offsets (a stream's or a CRYPTO stream's): new bytes in
/// order, and ranges declared lost to send again. Bytes are let go once
/// acknowledged from the start, so a long transfer holds only what is in flight
/// and queued.
struct SendBuffer: Sendable {
    /// The bytes from `base` on are `data[head...]`; those below it were
    /// acknowledged and dropped. Dropping only moves `head`; the array is
    /// compacted once the dead front is as large as the rest (amortised O(1)
    /// per byte, where moving the rest down at every ACK was quadratic).
    private var data: [UInt8] = []
    private var head = 0
    private var base: UInt64 = 0
    /// The next byte never sent.
    private(set) var sentOffset: UInt64 = 0
    private var lost: [(offset: UInt64, length: Int, fin: Bool)] = []
    private(set) var finWritten = false
    private(set) var finSent = false
    /// Acknowledged ranges, merged, in order.
    private var acked: [Range<UInt64>] = []
    private(set) var finAcked = false
    /// We reset the send side (our own reset, or answering STOP_SENDING): nothing more goes out.
    private(set) var reset = false

    var totalLength: UInt64 { base + UInt64(data.count - head) }

    /// Written but never sent: what still waits for flow control or the congestion window.
    var unsentBytes: Int { reset ? 0 : Int(totalLength - sentOffset) }

    mutating func write(_ bytes: [UInt8], fin: Bool) {
        data += bytes
        if fin { finWritten = true }
    }

    var hasPending: Bool { !reset && (!lost.isEmpty || sentOffset < totalLength || (finWritten && !finSent)) }

    /// The next piece to send, at most `maxLength` bytes and not past `limit`
    /// (flow control; lost data was within it already). nil when nothing fits.
    mutating func next(maxLength: Int, limit: UInt64) -> (offset: UInt64, data: [UInt8], fin: Bool)? {
        guard !reset else { return nil }
        while !lost.isEmpty {
            var piece = lost.removeFirst()
            // Part of it may have been acknowledged (an earlier copy arrived late) and dropped.
            if piece.offset < base {
                let skip = Int(min(base - piece.offset, UInt64(piece.length)))
                piece = (base, piece.length - skip, piece.fin)
                if piece.length == 0 && !piece.fin { continue }
            }
            if piece.length > maxLength {
                lost.insert((piece.offset + UInt64(maxLength), piece.length - maxLength, piece.fin), at: 0)
                piece = (piece.offset, maxLength, false)
            }
            let start = head + Int(piece.offset - base)
            return (piece.offset, Array(data[start..<(start + piece.length)]), piece.fin)
        }
        let available = Int(min(totalLength, limit) - min(sentOffset, limit))
        let length = min(available, maxLength)
        let reachesEnd = sentOffset + UInt64(length) == totalLength
        let fin = finWritten && !finSent && reachesEnd
        guard length > 0 || fin else { return nil }
        let start = sentOffset
        sentOffset += UInt64(length)
        if fin { finSent = true }
        let index = head + Int(start - base)
        return (start, Array(data[index..<(index + length)]), fin)
    }

    /// A sent piece was lost: it goes out again before new data.
    mutating func markLost(offset: UInt64, length: Int, fin: Bool) {
        guard !reset else { return }
        // Already acknowledged through another copy: nothing to resend.
        if offset + UInt64(length) <= base, !fin { return }
        lost.append((offset, length, fin))
    }

    /// A sent piece was acknowledged.
    mutating func markAcked(offset: UInt64, length: Int, fin: Bool) {
        if fin { finAcked = true }
        guard length > 0 else { return }
        var ranges = acked + [offset..<(offset + UInt64(length))]
        ranges.sort { $0.lowerBound < $1.lowerBound }
        var merged: [Range<UInt64>] = []
        for range in ranges {
            if let last = merged.last, range.lowerBound <= last.upperBound {
                merged[merged.count - 1] = last.lowerBound..<max(last.upperBound, range.upperBound)
            } else {
                merged.append(range)
            }
        }
        acked = merged
        dropAcknowledgedPrefix()
    }

    /// Lets go of the bytes acknowledged from the start.
    private mutating func dropAcknowledgedPrefix() {
        guard let first = acked.first, first.lowerBound == 0, first.upperBound > base else { return }
        let droppable = min(Int(first.upperBound - base), data.count - head)
        guard droppable > 0 else { return }
        head += droppable
        base += UInt64(droppable)
        if head == data.count {
            data.removeAll(keepingCapacity: data.capacity <= 1 << 20)
            head = 0
        } else if head >= 65_536, head >= data.count - head {
            data.removeFirst(head)
            head = 0
        }
    }

    /// Everything written, FIN included, reached the peer (or the side was reset).
    var isDone: Bool {
        if reset { return true }
        guard finWritten, finAcked else { return false }
        return totalLength == 0 || (acked.count == 1 && acked[0] == 0..<totalLength)
    }

    /// Gives up the send side; returns the final size to put in RESET_STREAM.
    mutating func resetSending() -> UInt64 {
        reset = true
        lost = []
        data = []
        head = 0
        base = sentOffset
        return sentOffset
    }
}
