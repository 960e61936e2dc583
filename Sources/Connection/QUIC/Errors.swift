/// Why received bytes could not be decoded. Each case names the field or rule
/// that failed; `transportError` is the code to close the connection with.
public enum QUICDecodeError: Error, Equatable, Sendable {
    /// The input ended inside the named field.
    case truncated(String)
    /// A length (or count) in the named field is larger than what remains.
    case lengthExceedsInput(String, length: UInt64, available: Int)
    /// A value is outside what the named field allows.
    case valueOutOfRange(String, value: UInt64)
    /// Connection IDs are at most 20 bytes in QUIC v1.
    case connectionIDTooLong(Int)
    /// The fixed bit (0x40) of a packet's first byte was 0.
    case fixedBitNotSet
    /// A frame type this implementation does not know; RFC 9000 §12.4 makes it an error.
    case unknownFrameType(UInt64)
    /// A frame type not encoded on the fewest bytes (RFC 9000 §12.4).
    case nonMinimalFrameType(UInt64)
    /// ACK ranges that reach below packet number 0.
    case invalidACKRange
    /// A frame that the rules of §19 forbid (empty NEW_TOKEN, retire_prior_to above the sequence number, ...).
    case invalidFrame(String)
    /// A transport parameter present twice.
    case duplicateTransportParameter(UInt64)
    /// A transport parameter with a value the rules of §18.2 forbid.
    case invalidTransportParameter(UInt64, String)
    /// Bytes left over inside a field whose length was given.
    case trailingBytes(String)

    /// The transport error code (RFC 9000 §20.1) a connection closes with.
    public var transportError: TransportErrorCode {
        switch self {
        case .duplicateTransportParameter, .invalidTransportParameter: .transportParameterError
        case .unknownFrameType, .nonMinimalFrameType, .invalidACKRange, .invalidFrame: .frameEncodingError
        case .truncated, .lengthExceedsInput, .trailingBytes, .valueOutOfRange, .connectionIDTooLong: .frameEncodingError
        case .fixedBitNotSet: .protocolViolation
        }
    }
}

/// Transport error codes of RFC 9000 §20.1 (CONNECTION_CLOSE type 0x1c).
public struct TransportErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let noError = Self(rawValue: 0x00)
    public static let internalError = Self(rawValue: 0x01)
    public static let connectionRefused = Self(rawValue: 0x02)
    public static let flowControlError = Self(rawValue: 0x03)
    public static let streamLimitError = Self(rawValue: 0x04)
    public static let streamStateError = Self(rawValue: 0x05)
    public static let finalSizeError = Self(rawValue: 0x06)
    public static let frameEncodingError = Self(rawValue: 0x07)
    public static let transportParameterError = Self(rawValue: 0x08)
    public static let connectionIDLimitError = Self(rawValue: 0x09)
    public static let protocolViolation = Self(rawValue: 0x0a)
    public static let invalidToken = Self(rawValue: 0x0b)
    public static let applicationError = Self(rawValue: 0x0c)
    public static let cryptoBufferExceeded = Self(rawValue: 0x0d)
    public static let keyUpdateError = Self(rawValue: 0x0e)
    public static let aeadLimitReached = Self(rawValue: 0x0f)
    public static let noViablePath = Self(rawValue: 0x10)
    /// CRYPTO_ERROR: 0x0100 plus the TLS alert.
    public static func cryptoError(alert: UInt8) -> Self { Self(rawValue: 0x0100 | UInt64(alert)) }

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
