/// Errors decoding an unsigned varint.
public enum VarintError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The input ended inside the varint.
    case truncated
    /// More than 9 bytes, or a value above 2^63 - 1.
    case overflow
    /// A trailing zero byte made the encoding longer than needed (the spec forbids it).
    case notMinimal

    /// True when more input could complete the varint.
    public var isTruncation: Bool { self == .truncated }

    public var description: String {
        switch self {
        case .truncated: return "varint truncated"
        case .overflow: return "varint longer than 9 bytes or above 2^63-1"
        case .notMinimal: return "varint not minimally encoded"
        }
    }
}

/// The multiformats unsigned varint (LEB128, at most 9 bytes, 63 bits).
public enum Varint {
    public static let maxBytes = 9

    /// The encoding of `value` (which must be below 2^63).
    public static func encode(_ value: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        append(value, to: &out)
        return out
    }

    /// Appends the encoding of `value` to `bytes`.
    public static func append(_ value: UInt64, to bytes: inout [UInt8]) {
        var rest = value
        while rest >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: rest) | 0x80)
            rest >>= 7
        }
        bytes.append(UInt8(rest))
    }

    /// The number of bytes `value` encodes to.
    public static func encodedSize(_ value: UInt64) -> Int {
        var size = 1
        var rest = value >> 7
        while rest != 0 {
            size += 1
            rest >>= 7
        }
        return size
    }

    /// Decodes a varint at the start of `bytes`: the value and the bytes it took.
    public static func decode<C: Collection>(_ bytes: C) throws(VarintError) -> (value: UInt64, size: Int)
    where C.Element == UInt8 {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        var size = 0
        for byte in bytes {
            size += 1
            if size > maxBytes { throw .overflow }
            value |= UInt64(byte & 0x7f) << shift
            if byte & 0x80 == 0 {
                if byte == 0 && size > 1 { throw .notMinimal }
                if value > UInt64(Int64.max) { throw .overflow }
                return (value, size)
            }
            // A continuation bit on the ninth byte can only lead past 63 bits.
            if size == maxBytes { throw .overflow }
            shift += 7
        }
        throw .truncated
    }

    /// Decodes two varints at the start of `bytes` (a multihash's code and
    /// length, a CID's version and codec): the values and the bytes both took.
    public static func decodePair(_ bytes: [UInt8]) throws(VarintError) -> (first: UInt64, second: UInt64, size: Int) {
        let (first, firstSize) = try decode(bytes)
        let (second, secondSize) = try decode(bytes[firstSize...])
        return (first, second, firstSize + secondSize)
    }
}
