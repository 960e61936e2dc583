/// QUIC variable-length integers (RFC 9000 §16): the two high bits of the
/// first byte give the length (1, 2, 4 or 8 bytes), the rest is the value.
public enum VarInt {
    /// The largest value the encoding can carry, 2^62 - 1.
    public static let max: UInt64 = (1 << 62) - 1

    /// How many bytes the shortest encoding of `value` takes; nil above `max`.
    public static func encodedLength(_ value: UInt64) -> Int? {
        switch value {
        case 0..<(1 << 6): return 1
        case 0..<(1 << 14): return 2
        case 0..<(1 << 30): return 4
        case 0...max: return 8
        default: return nil
        }
    }

    /// Appends the shortest encoding of `value` (which must be at most `max`:
    /// every caller encodes lengths, offsets and counts that are bounded below it).
    public static func encode(_ value: UInt64, into bytes: inout [UInt8]) {
        guard let length = encodedLength(value) else {
            preconditionFailure("QUIC varint \(value) exceeds 2^62-1")
        }
        encode(value, length: length, into: &bytes)
    }

    /// Appends `value` on exactly `length` bytes (1, 2, 4 or 8), for fields
    /// whose width is fixed before the value is known (a packet's Length).
    public static func encode(_ value: UInt64, length: Int, into bytes: inout [UInt8]) {
        let prefix: UInt64
        switch length {
        case 1: prefix = 0
        case 2: prefix = 1
        case 4: prefix = 2
        case 8: prefix = 3
        default: preconditionFailure("QUIC varint length \(length) is not 1, 2, 4 or 8")
        }
        precondition(value < (1 << (UInt64(length) * 8 - 2)), "QUIC varint \(value) does not fit \(length) bytes")
        let tagged = value | (prefix << (UInt64(length) * 8 - 2))
        for shift in stride(from: (length - 1) * 8, through: 0, by: -8) {
            bytes.append(UInt8(truncatingIfNeeded: tagged >> UInt64(shift)))
        }
    }

    public static func encoded(_ value: UInt64) -> [UInt8] {
        var bytes: [UInt8] = []
        encode(value, into: &bytes)
        return bytes
    }
}

/// A bounds-checked cursor over received bytes: every read either succeeds
/// or throws `QUICDecodeError.truncated` naming the field, so decoders built
/// on it cannot read past their input or trap on it.
public struct ByteReader: Sendable {
    public let bytes: ArraySlice<UInt8>
    public private(set) var position: Int

    public init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        self.position = bytes.startIndex
    }

    public init(_ bytes: [UInt8]) {
        self.init(bytes[...])
    }

    public var remaining: Int { bytes.endIndex - position }
    public var isAtEnd: Bool { position >= bytes.endIndex }
    /// Bytes consumed so far.
    public var offset: Int { position - bytes.startIndex }

    public mutating func readByte(_ field: String) throws(QUICDecodeError) -> UInt8 {
        guard position < bytes.endIndex else { throw .truncated(field) }
        defer { position += 1 }
        return bytes[position]
    }

    public func peekByte(_ field: String) throws(QUICDecodeError) -> UInt8 {
        guard position < bytes.endIndex else { throw .truncated(field) }
        return bytes[position]
    }

    /// `count` bytes; throws without allocating when fewer remain.
    public mutating func readBytes(_ count: Int, _ field: String) throws(QUICDecodeError) -> ArraySlice<UInt8> {
        guard count >= 0, count <= remaining else {
            throw .lengthExceedsInput(field, length: UInt64(clamping: count), available: remaining)
        }
        defer { position += count }
        return bytes[position..<(position + count)]
    }

    /// A varint-prefixed length checked against what is left before anything is read.
    public mutating func readLength(_ field: String) throws(QUICDecodeError) -> Int {
        let length = try readVarInt(field)
        guard length <= UInt64(remaining) else {
            throw .lengthExceedsInput(field, length: length, available: remaining)
        }
        return Int(length)
    }

    public mutating func readRest() -> ArraySlice<UInt8> {
        defer { position = bytes.endIndex }
        return bytes[position...]
    }

    public mutating func readUInt32(_ field: String) throws(QUICDecodeError) -> UInt32 {
        let raw = try readBytes(4, field)
        return raw.reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// An unsigned big-endian integer of 1 to 8 bytes (packet numbers).
    public mutating func readUInt(_ count: Int, _ field: String) throws(QUICDecodeError) -> UInt64 {
        let raw = try readBytes(count, field)
        return raw.reduce(0) { $0 << 8 | UInt64($1) }
    }

    public mutating func readVarInt(_ field: String) throws(QUICDecodeError) -> UInt64 {
        try readVarIntWithLength(field).value
    }

    /// The value and how many bytes it took (frame types must be minimal).
    public mutating func readVarIntWithLength(_ field: String) throws(QUICDecodeError) -> (value: UInt64, length: Int) {
        let first = try peekByte(field)
        let length = 1 << Int(first >> 6)
        let raw = try readBytes(length, field)
        var value = UInt64(first & 0x3F)
        for byte in raw.dropFirst() { value = value << 8 | UInt64(byte) }
        return (value, length)
    }

    public mutating func skip(_ count: Int, _ field: String) throws(QUICDecodeError) {
        _ = try readBytes(count, field)
    }
}

extension Array where Element == UInt8 {
    mutating func appendVarInt(_ value: UInt64) { VarInt.encode(value, into: &self) }

    mutating func appendUInt32(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)])
    }

    /// A varint length followed by the bytes.
    mutating func appendLengthPrefixed(_ bytes: some Collection<UInt8>) {
        appendVarInt(UInt64(bytes.count))
        append(contentsOf: bytes)
    }
}
