/// A server's preferred address (RFC 9000 §18.2, preferred_address).
public struct PreferredAddress: Equatable, Sendable {
    public var ipv4Address: [UInt8]  // 4 bytes
    public var ipv4Port: UInt16
    public var ipv6Address: [UInt8]  // 16 bytes
    public var ipv6Port: UInt16
    public var connectionID: ConnectionID
    public var statelessResetToken: [UInt8]  // 16 bytes

    public init(ipv4Address: [UInt8], ipv4Port: UInt16, ipv6Address: [UInt8], ipv6Port: UInt16, connectionID: ConnectionID, statelessResetToken: [UInt8]) {
        self.ipv4Address = ipv4Address
        self.ipv4Port = ipv4Port
        self.ipv6Address = ipv6Address
        self.ipv6Port = ipv6Port
        self.connectionID = connectionID
        self.statelessResetToken = statelessResetToken
    }
}

/// The transport parameters of RFC 9000 §18, with their defaults. Unknown
/// parameters are skipped when decoding (§18.1: reserved ones must be ignored).
public struct TransportParameters: Equatable, Sendable {
    public var originalDestinationConnectionID: ConnectionID?
    /// Milliseconds; 0 means no idle timeout.
    public var maxIdleTimeout: UInt64 = 0
    public var statelessResetToken: [UInt8]?
    public var maxUDPPayloadSize: UInt64 = 65527
    public var initialMaxData: UInt64 = 0
    public var initialMaxStreamDataBidiLocal: UInt64 = 0
    public var initialMaxStreamDataBidiRemote: UInt64 = 0
    public var initialMaxStreamDataUni: UInt64 = 0
    public var initialMaxStreamsBidi: UInt64 = 0
    public var initialMaxStreamsUni: UInt64 = 0
    public var ackDelayExponent: UInt64 = 3
    /// Milliseconds.
    public var maxAckDelay: UInt64 = 25
    public var disableActiveMigration = false
    public var preferredAddress: PreferredAddress?
    public var activeConnectionIDLimit: UInt64 = 2
    public var initialSourceConnectionID: ConnectionID?
    public var retrySourceConnectionID: ConnectionID?

    public init() {}

    enum ID: UInt64 {
        case originalDestinationConnectionID = 0x00
        case maxIdleTimeout = 0x01
        case statelessResetToken = 0x02
        case maxUDPPayloadSize = 0x03
        case initialMaxData = 0x04
        case initialMaxStreamDataBidiLocal = 0x05
        case initialMaxStreamDataBidiRemote = 0x06
        case initialMaxStreamDataUni = 0x07
        case initialMaxStreamsBidi = 0x08
        case initialMaxStreamsUni = 0x09
        case ackDelayExponent = 0x0a
        case maxAckDelay = 0x0b
        case disableActiveMigration = 0x0c
        case preferredAddress = 0x0d
        case activeConnectionIDLimit = 0x0e
        case initialSourceConnectionID = 0x0f
        case retrySourceConnectionID = 0x10
    }

    /// Sends every parameter that differs from its default (and the
    /// connection IDs that are set), in ID order.
    public func encoded() -> [UInt8] {
        var bytes: [UInt8] = []
        func put(_ id: ID, _ value: [UInt8]) {
            bytes.appendVarInt(id.rawValue)
            bytes.appendLengthPrefixed(value)
        }
        func putInteger(_ id: ID, _ value: UInt64, default defaultValue: UInt64) {
            if value != defaultValue { put(id, VarInt.encoded(value)) }
        }
        if let id = originalDestinationConnectionID { put(.originalDestinationConnectionID, id.bytes) }
        putInteger(.maxIdleTimeout, maxIdleTimeout, default: 0)
        if let token = statelessResetToken { put(.statelessResetToken, token) }
        putInteger(.maxUDPPayloadSize, maxUDPPayloadSize, default: 65527)
        putInteger(.initialMaxData, initialMaxData, default: 0)
        putInteger(.initialMaxStreamDataBidiLocal, initialMaxStreamDataBidiLocal, default: 0)
        putInteger(.initialMaxStreamDataBidiRemote, initialMaxStreamDataBidiRemote, default: 0)
        putInteger(.initialMaxStreamDataUni, initialMaxStreamDataUni, default: 0)
        putInteger(.initialMaxStreamsBidi, initialMaxStreamsBidi, default: 0)
        putInteger(.initialMaxStreamsUni, initialMaxStreamsUni, default: 0)
        putInteger(.ackDelayExponent, ackDelayExponent, default: 3)
        putInteger(.maxAckDelay, maxAckDelay, default: 25)
        if disableActiveMigration { put(.disableActiveMigration, []) }
        if let address = preferredAddress {
            var value: [UInt8] = address.ipv4Address
            value += [UInt8(address.ipv4Port >> 8), UInt8(address.ipv4Port & 0xFF)]
            value += address.ipv6Address
            value += [UInt8(address.ipv6Port >> 8), UInt8(address.ipv6Port & 0xFF)]
            value.append(UInt8(address.connectionID.count))
            value += address.connectionID.bytes
            value += address.statelessResetToken
            put(.preferredAddress, value)
        }
        putInteger(.activeConnectionIDLimit, activeConnectionIDLimit, default: 2)
        if let id = initialSourceConnectionID { put(.initialSourceConnectionID, id.bytes) }
        if let id = retrySourceConnectionID { put(.retrySourceConnectionID, id.bytes) }
        return bytes
    }

    /// Decodes the peer's parameters. `fromServer` says who sent them: a
    /// client must not send the server-only ones (§18.2).
    public init(decoding bytes: some Collection<UInt8>, fromServer: Bool) throws(QUICDecodeError) {
        let input = Array(bytes)
        var reader = ByteReader(input)
        var seen: Set<UInt64> = []
        while !reader.isAtEnd {
            let rawID = try reader.readVarInt("transport parameter ID")
            let value = try reader.readBytes(reader.readLength("transport parameter length"), "transport parameter value")
            guard seen.insert(rawID).inserted else { throw .duplicateTransportParameter(rawID) }
            guard let id = ID(rawValue: rawID) else { continue }
            try apply(id, value, fromServer: fromServer)
        }
    }

    private mutating func apply(_ id: ID, _ value: ArraySlice<UInt8>, fromServer: Bool) throws(QUICDecodeError) {
        func invalid(_ why: String) -> QUICDecodeError { .invalidTransportParameter(id.rawValue, why) }
        func integer() throws(QUICDecodeError) -> UInt64 {
            var reader = ByteReader(value)
            let number: UInt64
            do { number = try reader.readVarInt("transport parameter") } catch { throw invalid("not a varint") }
            guard reader.isAtEnd else { throw invalid("bytes after its varint") }
            return number
        }
        func connectionID() throws(QUICDecodeError) -> ConnectionID {
            guard value.count <= ConnectionID.maxLength else { throw invalid("connection ID longer than 20 bytes") }
            return try ConnectionID(value)
        }
        switch id {
        case .originalDestinationConnectionID, .statelessResetToken, .preferredAddress, .retrySourceConnectionID:
            guard fromServer else { throw invalid("sent by a client") }
        default:
            break
        }
        switch id {
        case .originalDestinationConnectionID: originalDestinationConnectionID = try connectionID()
        case .maxIdleTimeout: maxIdleTimeout = try integer()
        case .statelessResetToken:
            guard value.count == 16 else { throw invalid("not 16 bytes") }
            statelessResetToken = Array(value)
        case .maxUDPPayloadSize:
            maxUDPPayloadSize = try integer()
            guard maxUDPPayloadSize >= 1200 else { throw invalid("below 1200") }
        case .initialMaxData: initialMaxData = try integer()
        case .initialMaxStreamDataBidiLocal: initialMaxStreamDataBidiLocal = try integer()
        case .initialMaxStreamDataBidiRemote: initialMaxStreamDataBidiRemote = try integer()
        case .initialMaxStreamDataUni: initialMaxStreamDataUni = try integer()
        case .initialMaxStreamsBidi:
            initialMaxStreamsBidi = try integer()
            guard initialMaxStreamsBidi <= Frame.maxStreamCount else { throw invalid("above 2^60") }
        case .initialMaxStreamsUni:
            initialMaxStreamsUni = try integer()
            guard initialMaxStreamsUni <= Frame.maxStreamCount else { throw invalid("above 2^60") }
        case .ackDelayExponent:
            ackDelayExponent = try integer()
            guard ackDelayExponent <= 20 else { throw invalid("above 20") }
        case .maxAckDelay:
            maxAckDelay = try integer()
            guard maxAckDelay < 1 << 14 else { throw invalid("2^14 or above") }
        case .disableActiveMigration:
            guard value.isEmpty else { throw invalid("not empty") }
            disableActiveMigration = true
        case .preferredAddress:
            var reader = ByteReader(value)
            do throws(QUICDecodeError) {
                let ipv4 = Array(try reader.readBytes(4, "IPv4 address"))
                let ipv4Port = UInt16(try reader.readUInt(2, "IPv4 port"))
                let ipv6 = Array(try reader.readBytes(16, "IPv6 address"))
                let ipv6Port = UInt16(try reader.readUInt(2, "IPv6 port"))
                let length = Int(try reader.readByte("connection ID length"))
                guard (1...ConnectionID.maxLength).contains(length) else { throw invalid("connection ID length \(length)") }
                let cid = try ConnectionID(reader.readBytes(length, "connection ID"))
                let token = Array(try reader.readBytes(16, "stateless reset token"))
                guard reader.isAtEnd else { throw invalid("trailing bytes") }
                preferredAddress = PreferredAddress(
                    ipv4Address: ipv4, ipv4Port: ipv4Port, ipv6Address: ipv6, ipv6Port: ipv6Port, connectionID: cid, statelessResetToken: token)
            } catch {
                if case .invalidTransportParameter = error { throw error }
                throw invalid("truncated")
            }
        case .activeConnectionIDLimit:
            activeConnectionIDLimit = try integer()
            guard activeConnectionIDLimit >= 2 else { throw invalid("below 2") }
        case .initialSourceConnectionID: initialSourceConnectionID = try connectionID()
        case .retrySourceConnectionID: retrySourceConnectionID = try connectionID()
        }
    }
}

extension TransportParameters {
    /// Limits for a connection that carries a few streams: 1 MiB per
    /// connection, 256 KiB per stream, 100 bidirectional streams, 30 s idle.
    public static var defaultLimits: TransportParameters {
        var parameters = TransportParameters()
        parameters.maxIdleTimeout = 30_000
        parameters.initialMaxData = 1 << 20
        parameters.initialMaxStreamDataBidiLocal = 1 << 18
        parameters.initialMaxStreamDataBidiRemote = 1 << 18
        parameters.initialMaxStreamDataUni = 1 << 18
        parameters.initialMaxStreamsBidi = 100
        parameters.initialMaxStreamsUni = 0
        return parameters
    }
}
