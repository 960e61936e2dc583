/// The four encryption levels (RFC 9001 §2/§4): each names its keys and,
/// except 0-RTT (which shares 1-RTT's), its packet number space.
public enum EncryptionLevel: Int, Sendable, Hashable, CaseIterable, Comparable {
    case initial = 0
    case zeroRTT = 1
    case handshake = 2
    case oneRTT = 3

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The ECN counts an ACK frame may carry (type 0x03).
public struct ECNCounts: Equatable, Sendable {
    public var ect0: UInt64
    public var ect1: UInt64
    public var ce: UInt64

    public init(ect0: UInt64, ect1: UInt64, ce: UInt64) {
        self.ect0 = ect0
        self.ect1 = ect1
        self.ce = ce
    }
}

/// An ACK frame as ranges of packet numbers, largest first, separated by at
/// least one missing number: the shape the wire encoding (gaps and lengths) can express.
public struct ACKFrame: Equatable, Sendable {
    public let ranges: [ClosedRange<UInt64>]
    /// In units of 2^ack_delay_exponent microseconds, as sent.
    public var delay: UInt64
    public var ecn: ECNCounts?

    /// Throws `.invalidACKRange` unless `ranges` is non-empty, descending and
    /// not adjacent (adjacent ranges would be one range).
    public init(ranges: [ClosedRange<UInt64>], delay: UInt64 = 0, ecn: ECNCounts? = nil) throws(QUICDecodeError) {
        guard let first = ranges.first, first.upperBound <= VarInt.max else { throw .invalidACKRange }
        for (previous, next) in zip(ranges, ranges.dropFirst()) where next.upperBound + 1 >= previous.lowerBound {
            throw .invalidACKRange
        }
        self.ranges = ranges
        self.delay = delay
        self.ecn = ecn
    }

    public var largest: UInt64 { ranges[0].upperBound }

    public func contains(_ packetNumber: UInt64) -> Bool {
        ranges.contains { $0.contains(packetNumber) }
    }
}

/// A STREAM frame (types 0x08-0x0f). The OFF bit is sent when the offset is
/// not 0; LEN when `explicitLength` (only the last frame of a packet may omit it).
public struct StreamFrame: Equatable, Sendable {
    public var streamID: UInt64
    public var offset: UInt64
    public var data: [UInt8]
    public var fin: Bool
    public var explicitLength: Bool

    public init(streamID: UInt64, offset: UInt64 = 0, data: [UInt8], fin: Bool = false, explicitLength: Bool = true) {
        self.streamID = streamID
        self.offset = offset
        self.data = data
        self.fin = fin
        self.explicitLength = explicitLength
    }
}

/// CONNECTION_CLOSE (§19.19): a transport error (0x1c), which names the
/// frame type that caused it, or an application's (0x1d).
public enum ConnectionClose: Equatable, Sendable {
    case transport(code: TransportErrorCode, frameType: UInt64, reason: [UInt8])
    case application(code: UInt64, reason: [UInt8])

    public var reasonText: String {
        switch self {
        case .transport(_, _, let reason), .application(_, let reason): String(decoding: reason, as: UTF8.self)
        }
    }
}

/// The frames of RFC 9000 §19.
public enum Frame: Equatable, Sendable {
    /// A run of PADDING bytes (type 0x00), kept as one frame.
    case padding(count: Int)
    case ping
    case ack(ACKFrame)
    case resetStream(streamID: UInt64, errorCode: UInt64, finalSize: UInt64)
    case stopSending(streamID: UInt64, errorCode: UInt64)
    case crypto(offset: UInt64, data: [UInt8])
    case newToken([UInt8])
    case stream(StreamFrame)
    case maxData(UInt64)
    case maxStreamData(streamID: UInt64, maximum: UInt64)
    case maxStreams(bidirectional: Bool, maximum: UInt64)
    case dataBlocked(limit: UInt64)
    case streamDataBlocked(streamID: UInt64, limit: UInt64)
    case streamsBlocked(bidirectional: Bool, limit: UInt64)
    case newConnectionID(sequence: UInt64, retirePriorTo: UInt64, connectionID: ConnectionID, resetToken: [UInt8])
    case retireConnectionID(sequence: UInt64)
    case pathChallenge([UInt8])
    case pathResponse([UInt8])
    case connectionClose(ConnectionClose)
    case handshakeDone

    /// Stream counts cannot exceed 2^60 (§19.11), so stream IDs stay below 2^62.
    public static let maxStreamCount: UInt64 = 1 << 60

    /// Whether receiving it obliges an acknowledgment (RFC 9002 §2).
    public var isAckEliciting: Bool {
        switch self {
        case .padding, .ack, .connectionClose: false
        default: true
        }
    }

    /// The packet types a frame may appear in (RFC 9000 §12.4, Table 3).
    public func isAllowed(at level: EncryptionLevel) -> Bool {
        switch self {
        case .padding, .ping, .connectionClose(.transport): true
        case .ack, .crypto: level != .zeroRTT
        case .newToken, .handshakeDone, .pathResponse: level == .oneRTT
        default: level == .zeroRTT || level == .oneRTT
        }
    }

    // MARK: Encoding

    public func encode(into bytes: inout [UInt8]) {
        switch self {
        case .padding(let count):
            bytes.append(contentsOf: repeatElement(0, count: count))
        case .ping:
            bytes.append(0x01)
        case .ack(let ack):
            bytes.append(ack.ecn == nil ? 0x02 : 0x03)
            bytes.appendVarInt(ack.largest)
            bytes.appendVarInt(ack.delay)
            bytes.appendVarInt(UInt64(ack.ranges.count - 1))
            bytes.appendVarInt(ack.ranges[0].upperBound - ack.ranges[0].lowerBound)
            var smallest = ack.ranges[0].lowerBound
            for range in ack.ranges.dropFirst() {
                bytes.appendVarInt(smallest - range.upperBound - 2)
                bytes.appendVarInt(range.upperBound - range.lowerBound)
                smallest = range.lowerBound
            }
            if let ecn = ack.ecn {
                bytes.appendVarInt(ecn.ect0)
                bytes.appendVarInt(ecn.ect1)
                bytes.appendVarInt(ecn.ce)
            }
        case .resetStream(let streamID, let errorCode, let finalSize):
            bytes.append(0x04)
            bytes.appendVarInt(streamID)
            bytes.appendVarInt(errorCode)
            bytes.appendVarInt(finalSize)
        case .stopSending(let streamID, let errorCode):
            bytes.append(0x05)
            bytes.appendVarInt(streamID)
            bytes.appendVarInt(errorCode)
        case .crypto(let offset, let data):
            bytes.append(0x06)
            bytes.appendVarInt(offset)
            bytes.appendLengthPrefixed(data)
        case .newToken(let token):
            bytes.append(0x07)
            bytes.appendLengthPrefixed(token)
        case .stream(let frame):
            var type: UInt8 = 0x08
            if frame.offset != 0 { type |= 0x04 }
            if frame.explicitLength { type |= 0x02 }
            if frame.fin { type |= 0x01 }
            bytes.append(type)
            bytes.appendVarInt(frame.streamID)
            if frame.offset != 0 { bytes.appendVarInt(frame.offset) }
            if frame.explicitLength { bytes.appendVarInt(UInt64(frame.data.count)) }
            bytes.append(contentsOf: frame.data)
        case .maxData(let maximum):
            bytes.append(0x10)
            bytes.appendVarInt(maximum)
        case .maxStreamData(let streamID, let maximum):
            bytes.append(0x11)
            bytes.appendVarInt(streamID)
            bytes.appendVarInt(maximum)
        case .maxStreams(let bidirectional, let maximum):
            bytes.append(bidirectional ? 0x12 : 0x13)
            bytes.appendVarInt(maximum)
        case .dataBlocked(let limit):
            bytes.append(0x14)
            bytes.appendVarInt(limit)
        case .streamDataBlocked(let streamID, let limit):
            bytes.append(0x15)
            bytes.appendVarInt(streamID)
            bytes.appendVarInt(limit)
        case .streamsBlocked(let bidirectional, let limit):
            bytes.append(bidirectional ? 0x16 : 0x17)
            bytes.appendVarInt(limit)
        case .newConnectionID(let sequence, let retirePriorTo, let connectionID, let resetToken):
            bytes.append(0x18)
            bytes.appendVarInt(sequence)
            bytes.appendVarInt(retirePriorTo)
            bytes.append(UInt8(connectionID.count))
            bytes.append(contentsOf: connectionID.bytes)
            bytes.append(contentsOf: resetToken)
        case .retireConnectionID(let sequence):
            bytes.append(0x19)
            bytes.appendVarInt(sequence)
        case .pathChallenge(let data):
            bytes.append(0x1a)
            bytes.append(contentsOf: data)
        case .pathResponse(let data):
            bytes.append(0x1b)
            bytes.append(contentsOf: data)
        case .connectionClose(.transport(let code, let frameType, let reason)):
            bytes.append(0x1c)
            bytes.appendVarInt(code.rawValue)
            bytes.appendVarInt(frameType)
            bytes.appendLengthPrefixed(reason)
        case .connectionClose(.application(let code, let reason)):
            bytes.append(0x1d)
            bytes.appendVarInt(code)
            bytes.appendLengthPrefixed(reason)
        case .handshakeDone:
            bytes.append(0x1e)
        }
    }

    public var encoded: [UInt8] {
        var bytes: [UInt8] = []
        encode(into: &bytes)
        return bytes
    }

    /// The encoded size, without encoding a STREAM or CRYPTO frame's data (packet building asks this per frame).
    public var encodedSize: Int {
        switch self {
        case .stream(let frame):
            return 1 + VarInt.encodedLength(frame.streamID)! + (frame.offset != 0 ? VarInt.encodedLength(frame.offset)! : 0)
                + (frame.explicitLength ? VarInt.encodedLength(UInt64(frame.data.count))! : 0) + frame.data.count
        case .crypto(let offset, let data):
            return 1 + VarInt.encodedLength(offset)! + VarInt.encodedLength(UInt64(data.count))! + data.count
        default:
            return encoded.count
        }
    }

    // MARK: Decoding

    /// All frames of a decrypted payload.
    public static func decodeAll(_ payload: ArraySlice<UInt8>) throws(QUICDecodeError) -> [Frame] {
        var reader = ByteReader(payload)
        var frames: [Frame] = []
        while !reader.isAtEnd {
            frames.append(try decode(&reader))
        }
        return frames
    }

    public static func decodeAll(_ payload: [UInt8]) throws(QUICDecodeError) -> [Frame] {
        try decodeAll(payload[...])
    }

    /// The frame at the reader's position. Lengths and counts are checked
    /// against what remains before anything is allocated.
    public static func decode(_ reader: inout ByteReader) throws(QUICDecodeError) -> Frame {
        let (type, typeLength) = try reader.readVarIntWithLength("frame type")
        guard typeLength == VarInt.encodedLength(type) else { throw .nonMinimalFrameType(type) }
        switch type {
        case 0x00:
            var count = 1
            while let next = try? reader.peekByte("padding"), next == 0 {
                _ = try reader.readByte("padding")
                count += 1
            }
            return .padding(count: count)
        case 0x01:
            return .ping
        case 0x02, 0x03:
            return .ack(try decodeACK(&reader, withECN: type == 0x03))
        case 0x04:
            return .resetStream(
                streamID: try reader.readVarInt("RESET_STREAM stream ID"),
                errorCode: try reader.readVarInt("RESET_STREAM error code"),
                finalSize: try reader.readVarInt("RESET_STREAM final size"))
        case 0x05:
            return .stopSending(
                streamID: try reader.readVarInt("STOP_SENDING stream ID"),
                errorCode: try reader.readVarInt("STOP_SENDING error code"))
        case 0x06:
            let offset = try reader.readVarInt("CRYPTO offset")
            let data = try reader.readBytes(reader.readLength("CRYPTO length"), "CRYPTO data")
            guard offset + UInt64(data.count) <= VarInt.max else {
                throw .valueOutOfRange("CRYPTO offset + length", value: offset)
            }
            return .crypto(offset: offset, data: Array(data))
        case 0x07:
            let token = try reader.readBytes(reader.readLength("NEW_TOKEN length"), "NEW_TOKEN token")
            guard !token.isEmpty else { throw .invalidFrame("NEW_TOKEN with an empty token") }
            return .newToken(Array(token))
        case 0x08...0x0f:
            let streamID = try reader.readVarInt("STREAM stream ID")
            let offset = type & 0x04 != 0 ? try reader.readVarInt("STREAM offset") : 0
            let explicitLength = type & 0x02 != 0
            let data = explicitLength ? try reader.readBytes(reader.readLength("STREAM length"), "STREAM data") : reader.readRest()
            guard offset + UInt64(data.count) <= VarInt.max else {
                throw .valueOutOfRange("STREAM offset + length", value: offset)
            }
            return .stream(StreamFrame(streamID: streamID, offset: offset, data: Array(data), fin: type & 0x01 != 0, explicitLength: explicitLength))
        case 0x10:
            return .maxData(try reader.readVarInt("MAX_DATA maximum"))
        case 0x11:
            return .maxStreamData(
                streamID: try reader.readVarInt("MAX_STREAM_DATA stream ID"),
                maximum: try reader.readVarInt("MAX_STREAM_DATA maximum"))
        case 0x12, 0x13:
            let maximum = try reader.readVarInt("MAX_STREAMS maximum")
            guard maximum <= maxStreamCount else { throw .valueOutOfRange("MAX_STREAMS maximum", value: maximum) }
            return .maxStreams(bidirectional: type == 0x12, maximum: maximum)
        case 0x14:
            return .dataBlocked(limit: try reader.readVarInt("DATA_BLOCKED limit"))
        case 0x15:
            return .streamDataBlocked(
                streamID: try reader.readVarInt("STREAM_DATA_BLOCKED stream ID"),
                limit: try reader.readVarInt("STREAM_DATA_BLOCKED limit"))
        case 0x16, 0x17:
            let limit = try reader.readVarInt("STREAMS_BLOCKED limit")
            guard limit <= maxStreamCount else { throw .valueOutOfRange("STREAMS_BLOCKED limit", value: limit) }
            return .streamsBlocked(bidirectional: type == 0x16, limit: limit)
        case 0x18:
            let sequence = try reader.readVarInt("NEW_CONNECTION_ID sequence")
            let retirePriorTo = try reader.readVarInt("NEW_CONNECTION_ID retire prior to")
            guard retirePriorTo <= sequence else { throw .invalidFrame("NEW_CONNECTION_ID retire prior to above its sequence number") }
            let length = Int(try reader.readByte("NEW_CONNECTION_ID length"))
            guard (1...ConnectionID.maxLength).contains(length) else {
                throw .invalidFrame("NEW_CONNECTION_ID length \(length) outside 1...20")
            }
            let connectionID = try ConnectionID(reader.readBytes(length, "NEW_CONNECTION_ID connection ID"))
            let token = try reader.readBytes(16, "NEW_CONNECTION_ID stateless reset token")
            return .newConnectionID(sequence: sequence, retirePriorTo: retirePriorTo, connectionID: connectionID, resetToken: Array(token))
        case 0x19:
            return .retireConnectionID(sequence: try reader.readVarInt("RETIRE_CONNECTION_ID sequence"))
        case 0x1a:
            return .pathChallenge(Array(try reader.readBytes(8, "PATH_CHALLENGE data")))
        case 0x1b:
            return .pathResponse(Array(try reader.readBytes(8, "PATH_RESPONSE data")))
        case 0x1c:
            let code = try reader.readVarInt("CONNECTION_CLOSE error code")
            let frameType = try reader.readVarInt("CONNECTION_CLOSE frame type")
            let reason = try reader.readBytes(reader.readLength("CONNECTION_CLOSE reason length"), "CONNECTION_CLOSE reason")
            return .connectionClose(.transport(code: TransportErrorCode(rawValue: code), frameType: frameType, reason: Array(reason)))
        case 0x1d:
            let code = try reader.readVarInt("CONNECTION_CLOSE error code")
            let reason = try reader.readBytes(reader.readLength("CONNECTION_CLOSE reason length"), "CONNECTION_CLOSE reason")
            return .connectionClose(.application(code: code, reason: Array(reason)))
        case 0x1e:
            return .handshakeDone
        default:
            throw .unknownFrameType(type)
        }
    }

    static func decodeACK(_ reader: inout ByteReader, withECN: Bool) throws(QUICDecodeError) -> ACKFrame {
        let largest = try reader.readVarInt("ACK largest acknowledged")
        let delay = try reader.readVarInt("ACK delay")
        let count = try reader.readVarInt("ACK range count")
        // Each range takes at least two bytes: a count beyond that is a lie, refused before reserving.
        guard count <= UInt64(reader.remaining / 2) else {
            throw .lengthExceedsInput("ACK range count", length: count, available: reader.remaining)
        }
        let firstRange = try reader.readVarInt("ACK first range")
        guard firstRange <= largest else { throw .invalidACKRange }
        var ranges: [ClosedRange<UInt64>] = [(largest - firstRange)...largest]
        ranges.reserveCapacity(Int(count) + 1)
        var smallest = largest - firstRange
        for _ in 0..<count {
            let gap = try reader.readVarInt("ACK gap")
            let length = try reader.readVarInt("ACK range length")
            guard smallest >= gap + 2, smallest - gap - 2 >= length else { throw .invalidACKRange }
            let upper = smallest - gap - 2
            smallest = upper - length
            ranges.append(smallest...upper)
        }
        var ecn: ECNCounts?
        if withECN {
            ecn = ECNCounts(
                ect0: try reader.readVarInt("ACK ECT0 count"),
                ect1: try reader.readVarInt("ACK ECT1 count"),
                ce: try reader.readVarInt("ACK ECN-CE count"))
        }
        return try ACKFrame(ranges: ranges, delay: delay, ecn: ecn)
    }
}
