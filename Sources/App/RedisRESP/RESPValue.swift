/// A RESP2 value (the Redis serialisation protocol): what a Redis server answers.
public enum RESPValue: Sendable, Equatable {
    /// `+OK`
    case simpleString(String)
    /// `-ERR ...`: the server refused the command.
    case error(String)
    /// `:42`
    case integer(Int64)
    /// `$N` and N bytes; nil for the null bulk string `$-1`.
    case bulkString([UInt8]?)
    /// `*N` and N values; nil for the null array `*-1` (e.g. BLPOP timing out).
    case array([RESPValue]?)

    /// A bulk or simple string as UTF-8 text.
    public var text: String? {
        switch self {
        case .simpleString(let text): return text
        case .bulkString(let bytes?): return String(decoding: bytes, as: UTF8.self)
        default: return nil
        }
    }
}

/// Why bytes from the server are not RESP2 (or exceed what we accept).
public enum RESPError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A value starts with a byte that is no RESP2 type.
    case unknownType(UInt8)
    /// A header or simple line is not a number where one is needed, or is malformed.
    case malformedLine(String)
    /// A line longer than the limit without its CRLF.
    case lineTooLong(limit: Int)
    /// A bulk string longer than the limit.
    case bulkTooLong(length: Int, limit: Int)
    /// An array with more elements than the limit.
    case arrayTooLong(count: Int, limit: Int)
    /// Arrays nested deeper than the limit.
    case nestedTooDeep(limit: Int)
    /// A bulk string's payload is not followed by CRLF.
    case missingTerminator

    public var description: String {
        switch self {
        case .unknownType(let byte): return "RESP: unknown type byte 0x\(String(byte, radix: 16))"
        case .malformedLine(let why): return "RESP: malformed line: \(why)"
        case .lineTooLong(let limit): return "RESP: line longer than \(limit) bytes"
        case .bulkTooLong(let length, let limit): return "RESP: bulk string of \(length) bytes (limit \(limit))"
        case .arrayTooLong(let count, let limit): return "RESP: array of \(count) elements (limit \(limit))"
        case .nestedTooDeep(let limit): return "RESP: arrays nested deeper than \(limit)"
        case .missingTerminator: return "RESP: bulk string not followed by CRLF"
        }
    }
}

/// Encodes a command the way clients send them: an array of bulk strings.
public enum RESPEncoder {
    public static func command(_ arguments: [String]) -> [UInt8] {
        var out: [UInt8] = Array("*\(arguments.count)\r\n".utf8)
        for argument in arguments {
            let bytes = Array(argument.utf8)
            out += Array("$\(bytes.count)\r\n".utf8)
            out += bytes
            out += [13, 10]
        }
        return out
    }
}
