import Multiformats
import NIOCore

/// Buffered reads on a stream for protocols with framed messages
/// (exact lengths, unsigned-varint length prefixes), with limits.
public struct StreamReader: Sendable {
    public let stream: MuxedStream
    private var buffer = ByteBuffer()
    private var ended = false

    public init(_ stream: MuxedStream) {
        self.stream = stream
    }

    /// Errors of framed reads.
    public enum ReadError: Error, CustomStringConvertible, Sendable {
        case endOfStream(wanted: Int, had: Int)
        case messageTooLarge(length: UInt64, limit: Int)
        case badLengthPrefix(String)

        public var description: String {
            switch self {
            case .endOfStream(let wanted, let had): return "stream ended after \(had) of \(wanted) bytes"
            case .messageTooLarge(let length, let limit): return "message of \(length) bytes exceeds the limit of \(limit)"
            case .badLengthPrefix(let why): return "bad length prefix: \(why)"
            }
        }
    }

    /// Reads more data into the buffer; false at the end of the stream.
    private mutating func fill() async throws -> Bool {
        guard !ended else { return false }
        guard var chunk = try await stream.read() else {
            ended = true
            return false
        }
        if buffer.readableBytes == 0 {
            buffer = chunk
        } else {
            buffer.writeBuffer(&chunk)
        }
        return true
    }

    /// Exactly `count` bytes.
    public mutating func readExactly(_ count: Int) async throws -> ByteBuffer {
        while buffer.readableBytes < count {
            guard try await fill() else { throw ReadError.endOfStream(wanted: count, had: buffer.readableBytes) }
        }
        return buffer.readSlice(length: count)!
    }

    /// One unsigned-varint length-prefixed message of at most `maxLength` bytes;
    /// nil if the stream ends cleanly before a new message starts.
    public mutating func readLengthPrefixed(maxLength: Int) async throws -> ByteBuffer? {
        guard let length = try await readVarint() else { return nil }
        guard length <= UInt64(maxLength) else { throw ReadError.messageTooLarge(length: length, limit: maxLength) }
        return try await readExactly(Int(length))
    }

    /// A length-prefixed message that is already wholly buffered, without
    /// waiting for data; nil if none is (for draining a burst of small messages).
    public mutating func takeBufferedLengthPrefixed(maxLength: Int) throws -> ByteBuffer? {
        guard buffer.readableBytes > 0 else { return nil }
        let length: UInt64
        let size: Int
        do {
            (length, size) = try Varint.decode(buffer.readableBytesView)
        } catch where error.isTruncation {
            return nil
        } catch {
            throw ReadError.badLengthPrefix("\(error)")
        }
        guard length <= UInt64(maxLength) else { throw ReadError.messageTooLarge(length: length, limit: maxLength) }
        guard buffer.readableBytes - size >= Int(length) else { return nil }
        buffer.moveReaderIndex(forwardBy: size)
        return buffer.readSlice(length: Int(length))!
    }

    /// The next piece of data, buffered bytes first; nil at the end of the
    /// stream (for streaming a body after a framed header, never held whole).
    public mutating func readChunk() async throws -> ByteBuffer? {
        if buffer.readableBytes > 0 {
            defer { buffer = ByteBuffer() }
            return buffer
        }
        guard try await fill() else { return nil }
        defer { buffer = ByteBuffer() }
        return buffer
    }

    /// One unsigned varint (a length that precedes a streamed body); nil if
    /// the stream ends cleanly before it starts.
    public mutating func readVarint() async throws -> UInt64? {
        while true {
            if buffer.readableBytes > 0 {
                do {
                    let (value, size) = try Varint.decode(buffer.readableBytesView)
                    buffer.moveReaderIndex(forwardBy: size)
                    return value
                } catch where error.isTruncation {
                    // Need more bytes.
                } catch {
                    throw ReadError.badLengthPrefix("\(error)")
                }
            }
            guard try await fill() else {
                if buffer.readableBytes == 0 { return nil }
                throw ReadError.endOfStream(wanted: buffer.readableBytes + 1, had: buffer.readableBytes)
            }
        }
    }

    /// Everything until the end of the stream, at most `maxLength` bytes.
    public mutating func readToEnd(maxLength: Int) async throws -> ByteBuffer {
        while try await fill() {
            if buffer.readableBytes > maxLength {
                throw ReadError.messageTooLarge(length: UInt64(buffer.readableBytes), limit: maxLength)
            }
        }
        return buffer
    }
}

extension ByteBuffer {
    /// Appends an unsigned-varint length prefix and the bytes.
    public mutating func writeLengthPrefixed(_ bytes: some Collection<UInt8>) {
        writeBytes(Varint.encode(UInt64(bytes.count)))
        writeBytes(bytes)
    }
}

extension StreamReader {
    /// Bytes read from the stream and not yet taken as messages.
    public var bufferedBytes: Int { buffer.readableBytes }

    /// Waits for more data and buffers it; false at the end of the stream. For
    /// protocols that wait without a deadline for a message to start, then give
    /// it a deadline to finish.
    public mutating func readMore() async throws -> Bool {
        try await fill()
    }

    /// The length a buffered unsigned-varint prefix announces, without taking
    /// it; nil while the prefix is incomplete.
    public func bufferedLengthPrefix(maxLength: Int) throws -> Int? {
        guard buffer.readableBytes > 0 else { return nil }
        let length: UInt64
        do {
            (length, _) = try Varint.decode(buffer.readableBytesView)
        } catch where error.isTruncation {
            return nil
        } catch {
            throw ReadError.badLengthPrefix("\(error)")
        }
        guard length <= UInt64(maxLength) else { throw ReadError.messageTooLarge(length: length, limit: maxLength) }
        return Int(length)
    }
}
