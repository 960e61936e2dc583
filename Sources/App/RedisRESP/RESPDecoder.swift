/// Decodes RESP2 values from bytes as they arrive, within limits: a server (or
/// anything that answers on its port) cannot make us buffer or nest without bound.
public struct RESPDecoder: Sendable {
    /// Longest header or simple line (`+...`, `-...`, `:...`, `$N`, `*N`) without its CRLF.
    public var maxLineLength = 64 * 1024
    /// Longest bulk string.
    public var maxBulkLength = 512 * 1024
    /// Most elements of one array.
    public var maxArrayCount = 1024
    /// Deepest nesting of arrays (1: an array of scalars).
    public var maxDepth = 8
    /// Most bytes one whole value may take, headers included.
    public var maxValueBytes = 1024 * 1024

    public init() {}

    /// The first complete value in `bytes` and how many bytes it took; nil when
    /// `bytes` holds only part of a value (nothing is consumed then).
    public func decode(_ bytes: UnsafeRawBufferPointer) throws(RESPError) -> (value: RESPValue, consumed: Int)? {
        var cursor = Cursor(bytes: bytes, limit: min(bytes.count, maxValueBytes))
        guard let value = try value(&cursor, depth: 0) else {
            if bytes.count > maxValueBytes { throw .malformedLine("value longer than \(maxValueBytes) bytes") }
            return nil
        }
        return (value, cursor.position)
    }

    /// `decode` over an array of bytes.
    public func decode(_ bytes: [UInt8]) throws(RESPError) -> (value: RESPValue, consumed: Int)? {
        let result: Result<(value: RESPValue, consumed: Int)?, RESPError> = bytes.withUnsafeBytes { raw in
            do throws(RESPError) { return .success(try decode(raw)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private struct Cursor {
        let bytes: UnsafeRawBufferPointer
        /// Bytes past this are not looked at (`maxValueBytes`).
        let limit: Int
        var position = 0
    }

    private func value(_ cursor: inout Cursor, depth: Int) throws(RESPError) -> RESPValue? {
        guard cursor.position < cursor.limit else { return nil }
        let type = cursor.bytes[cursor.position]
        let start = cursor.position
        cursor.position += 1
        guard let line = try line(&cursor) else {
            cursor.position = start
            return nil
        }
        switch type {
        case UInt8(ascii: "+"):
            return .simpleString(String(decoding: line, as: UTF8.self))
        case UInt8(ascii: "-"):
            return .error(String(decoding: line, as: UTF8.self))
        case UInt8(ascii: ":"):
            return .integer(try Self.number(line))
        case UInt8(ascii: "$"):
            let length = try Self.number(line)
            if length == -1 { return .bulkString(nil) }
            guard length >= 0 else { throw .malformedLine("bulk length \(length)") }
            guard length <= maxBulkLength else { throw .bulkTooLong(length: Int(clamping: length), limit: maxBulkLength) }
            let count = Int(length)
            guard cursor.position + count + 2 <= cursor.limit else {
                if cursor.position + count + 2 > maxValueBytes {
                    throw .malformedLine("value longer than \(maxValueBytes) bytes")
                }
                cursor.position = start
                return nil
            }
            let payload = Array(UnsafeRawBufferPointer(rebasing: cursor.bytes[cursor.position..<cursor.position + count]))
            cursor.position += count
            guard cursor.bytes[cursor.position] == 13, cursor.bytes[cursor.position + 1] == 10 else {
                throw .missingTerminator
            }
            cursor.position += 2
            return .bulkString(payload)
        case UInt8(ascii: "*"):
            let count = try Self.number(line)
            if count == -1 { return .array(nil) }
            guard count >= 0 else { throw .malformedLine("array length \(count)") }
            guard count <= maxArrayCount else { throw .arrayTooLong(count: Int(clamping: count), limit: maxArrayCount) }
            guard depth < maxDepth else { throw .nestedTooDeep(limit: maxDepth) }
            var elements: [RESPValue] = []
            elements.reserveCapacity(Int(count))
            for _ in 0..<count {
                guard let element = try value(&cursor, depth: depth + 1) else {
                    cursor.position = start
                    return nil
                }
                elements.append(element)
            }
            return .array(elements)
        default:
            throw .unknownType(type)
        }
    }

    /// The bytes up to the next CRLF (which is consumed); nil if it has not arrived.
    private func line(_ cursor: inout Cursor) throws(RESPError) -> [UInt8]? {
        var index = cursor.position
        while index < cursor.limit {
            if cursor.bytes[index] == 13 {
                guard index + 1 < cursor.limit else { break }  // its LF has not arrived yet
                guard cursor.bytes[index + 1] == 10 else { throw .malformedLine("CR without LF") }
                let line = Array(UnsafeRawBufferPointer(rebasing: cursor.bytes[cursor.position..<index]))
                cursor.position = index + 2
                return line
            }
            if cursor.bytes[index] == 10 { throw .malformedLine("LF without CR") }
            index += 1
            if index - cursor.position > maxLineLength { throw .lineTooLong(limit: maxLineLength) }
        }
        if cursor.limit - cursor.position > maxLineLength + 1 { throw .lineTooLong(limit: maxLineLength) }
        return nil
    }

    private static func number(_ line: [UInt8]) throws(RESPError) -> Int64 {
        let text = String(decoding: line, as: UTF8.self)
        guard line.count <= 20, let value = Int64(text) else { throw .malformedLine("not a number: \(text.prefix(40))") }
        return value
    }
}
