/// Packet number truncation and recovery (RFC 9000 §17.1, Appendix A.2-A.3).
public enum PacketNumber {
    /// The largest packet number, 2^62 - 1.
    public static let max: UInt64 = (1 << 62) - 1

    /// How many bytes (1-4) to send `full` on so that the receiver, which has
    /// seen at least `largestAcked`, recovers it: enough bits for twice the
    /// span of packet numbers not yet acknowledged.
    public static func encodedLength(_ full: UInt64, largestAcked: UInt64?) -> Int {
        let unacked: UInt64
        if let largestAcked, largestAcked < full {
            unacked = full - largestAcked
        } else {
            unacked = full &+ 1
        }
        let span = unacked.multipliedReportingOverflow(by: 2)
        let bits = span.overflow ? 64 : UInt64.bitWidth - span.partialValue.leadingZeroBitCount
        return Swift.max(1, Swift.min(4, (bits + 7) / 8))
    }

    /// The low `length` bytes of `full`, big-endian.
    public static func append(_ full: UInt64, length: Int, into bytes: inout [UInt8]) {
        for shift in stride(from: (length - 1) * 8, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: full >> UInt64(shift)))
        }
    }

    /// The full packet number closest to the next expected one whose low
    /// `length` bytes are `truncated`. `largest` is the largest packet number
    /// successfully processed in the space, nil before the first.
    public static func decode(truncated: UInt64, length: Int, largest: UInt64?) -> UInt64 {
        let bits = UInt64(length * 8)
        let expected = largest.map { $0 + 1 } ?? 0
        let window: UInt64 = 1 << bits
        let halfWindow = window / 2
        let mask = window - 1
        let candidate = (expected & ~mask) | (truncated & mask)
        // Written without subtraction below zero or addition past 2^62.
        if candidate + halfWindow <= expected, candidate < (1 << 62) - window {
            return candidate + window
        }
        if candidate > expected + halfWindow, candidate >= window {
            return candidate - window
        }
        return candidate
    }
}
