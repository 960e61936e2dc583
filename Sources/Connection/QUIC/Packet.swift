/// A connection ID: at most 20 bytes in QUIC v1 (RFC 9000 §17.2).
public struct ConnectionID: Hashable, Sendable, CustomStringConvertible {
    public static let maxLength = 20
    public let bytes: [UInt8]

    public init(_ bytes: some Collection<UInt8>) throws(QUICDecodeError) {
        guard bytes.count <= Self.maxLength else { throw .connectionIDTooLong(bytes.count) }
        self.bytes = Array(bytes)
    }

    public static let empty = try! ConnectionID([])  // Zero bytes are always within the limit.

    /// A fresh random ID (8 bytes unless asked: long enough to be unguessable, short on the wire).
    public static func random(length: Int = 8) -> ConnectionID {
        var generator = SystemRandomNumberGenerator()
        return try! ConnectionID((0..<min(length, maxLength)).map { _ in UInt8.random(in: .min ... .max, using: &generator) })  // Bounded above.
    }

    public var count: Int { bytes.count }
    public var description: String { bytes.hexString }
}

public enum QUICVersion {
    public static let v1: UInt32 = 0x0000_0001
    /// The version field of a Version Negotiation packet.
    public static let negotiation: UInt32 = 0
}

/// The long header packets that carry a packet number and payload.
public enum LongPacketType: UInt8, Sendable, Equatable, CaseIterable {
    case initial = 0
    case zeroRTT = 1
    case handshake = 2
}

/// Initial, 0-RTT and Handshake headers (RFC 9000 §17.2), without the
/// packet number and Length, which depend on the payload being protected.
public struct LongHeader: Equatable, Sendable {
    public var type: LongPacketType
    public var version: UInt32
    public var destination: ConnectionID
    public var source: ConnectionID
    /// Initial packets only (§17.2.2); empty in the others.
    public var token: [UInt8]

    public init(type: LongPacketType, version: UInt32 = QUICVersion.v1, destination: ConnectionID, source: ConnectionID, token: [UInt8] = []) {
        self.type = type
        self.version = version
        self.destination = destination
        self.source = source
        self.token = token
    }

    /// The unprotected header through the packet number. `payloadLength`
    /// is what follows the packet number (frames and AEAD tag); the Length
    /// field covers both, on 2 bytes when it fits so a packet's size is known
    /// before its payload is (4 bytes otherwise).
    public func encode(packetNumber: UInt64, packetNumberLength: Int, payloadLength: Int, into bytes: inout [UInt8]) {
        precondition((1...4).contains(packetNumberLength))
        bytes.append(0xC0 | type.rawValue << 4 | UInt8(packetNumberLength - 1))
        bytes.appendUInt32(version)
        bytes.append(UInt8(destination.count))
        bytes.append(contentsOf: destination.bytes)
        bytes.append(UInt8(source.count))
        bytes.append(contentsOf: source.bytes)
        if type == .initial { bytes.appendLengthPrefixed(token) }
        let length = UInt64(packetNumberLength + payloadLength)
        VarInt.encode(length, length: length < (1 << 14) ? 2 : 4, into: &bytes)
        PacketNumber.append(packetNumber, length: packetNumberLength, into: &bytes)
    }
}

/// The 1-RTT header (§17.3.1). The key phase is header-protected, so it is
/// read after protection is removed, not here.
public struct ShortHeader: Equatable, Sendable {
    public var destination: ConnectionID
    public var spinBit: Bool

    public init(destination: ConnectionID, spinBit: Bool = false) {
        self.destination = destination
        self.spinBit = spinBit
    }

    public func encode(packetNumber: UInt64, packetNumberLength: Int, keyPhase: Bool, into bytes: inout [UInt8]) {
        precondition((1...4).contains(packetNumberLength))
        bytes.append(0x40 | (spinBit ? 0x20 : 0) | (keyPhase ? 0x04 : 0) | UInt8(packetNumberLength - 1))
        bytes.append(contentsOf: destination.bytes)
        PacketNumber.append(packetNumber, length: packetNumberLength, into: &bytes)
    }
}

/// A Retry packet (§17.2.5); its tag is checked with `RetryIntegrity`.
public struct RetryPacket: Equatable, Sendable {
    /// The Retry Integrity Tag's length.
    public static let tagLength = 16

    public var version: UInt32
    public var destination: ConnectionID
    public var source: ConnectionID
    public var token: [UInt8]
    public var integrityTag: [UInt8]

    public init(version: UInt32 = QUICVersion.v1, destination: ConnectionID, source: ConnectionID, token: [UInt8], integrityTag: [UInt8]) {
        self.version = version
        self.destination = destination
        self.source = source
        self.token = token
        self.integrityTag = integrityTag
    }

    /// Everything but the tag: what the tag authenticates (after the original DCID).
    public func encodedWithoutTag(unusedBits: UInt8 = 0) -> [UInt8] {
        var bytes: [UInt8] = [0xF0 | (unusedBits & 0x0F)]
        bytes.appendUInt32(version)
        bytes.append(UInt8(destination.count))
        bytes.append(contentsOf: destination.bytes)
        bytes.append(UInt8(source.count))
        bytes.append(contentsOf: source.bytes)
        bytes.append(contentsOf: token)
        return bytes
    }

    public func encoded(unusedBits: UInt8 = 0) -> [UInt8] {
        encodedWithoutTag(unusedBits: unusedBits) + integrityTag
    }
}

/// Version Negotiation (§17.2.1): connection IDs here follow the version-
/// independent rules of RFC 8999 (up to 255 bytes), so they are kept as bytes.
public struct VersionNegotiationPacket: Equatable, Sendable {
    public var destination: [UInt8]
    public var source: [UInt8]
    public var versions: [UInt32]

    public init(destination: [UInt8], source: [UInt8], versions: [UInt32]) {
        self.destination = destination
        self.source = source
        self.versions = versions
    }

    public func encoded(unusedBits: UInt8 = 0) -> [UInt8] {
        var bytes: [UInt8] = [0x80 | (unusedBits & 0x7F)]
        bytes.appendUInt32(QUICVersion.negotiation)
        bytes.append(UInt8(min(destination.count, 255)))
        bytes.append(contentsOf: destination.prefix(255))
        bytes.append(UInt8(min(source.count, 255)))
        bytes.append(contentsOf: source.prefix(255))
        for version in versions { bytes.appendUInt32(version) }
        return bytes
    }
}

extension VersionNegotiationPacket {
    /// A server's answer to a long header packet of a version it does not
    /// speak (RFC 9000 §6.1): the client's IDs swapped and our versions. nil
    /// for other packets, and for datagrams under 1200 bytes, which a server
    /// leaves unanswered so that it cannot be used to amplify (§14.1).
    public static func answer(to packet: ProtectedPacket, datagramSize: Int, versions: [UInt32] = [QUICVersion.v1]) -> VersionNegotiationPacket? {
        guard case .unsupportedVersion(let version, let destination, let source) = packet.header, datagramSize >= 1200,
            !versions.contains(version)
        else { return nil }
        return VersionNegotiationPacket(destination: source, source: destination, versions: versions)
    }
}

/// What can be read of a packet before its protection is removed.
public enum PacketHeader: Equatable, Sendable {
    case long(LongHeader)
    case short(ShortHeader)
    case retry(RetryPacket)
    case versionNegotiation(VersionNegotiationPacket)
    /// A long header of a version other than 1: only the RFC 8999 invariants
    /// can be read, enough for a server to answer with Version Negotiation.
    case unsupportedVersion(version: UInt32, destination: [UInt8], source: [UInt8])
}

/// One packet cut from a datagram, still protected.
public struct ProtectedPacket: Equatable, Sendable {
    public var header: PacketHeader
    /// The packet from its first byte to the end of its payload.
    public var bytes: ArraySlice<UInt8>
    /// Where the packet number starts, counted from the first byte; nil for
    /// packets without one (Retry, Version Negotiation, unsupported versions).
    public var packetNumberOffset: Int?
}

/// The packets of one UDP datagram (§12.2). A malformed packet ends the
/// split: those before it are kept and the error says why the rest was dropped.
public struct DatagramPackets: Sendable {
    public var packets: [ProtectedPacket]
    public var discardedRemainder: QUICDecodeError?
}

public enum PacketParser {
    /// Cuts a datagram into its coalesced packets. A short header packet
    /// takes the rest of the datagram, so its destination ID length must be
    /// known: the length of the IDs this endpoint issues.
    public static func split(datagram: ArraySlice<UInt8>, shortHeaderCIDLength: Int) -> DatagramPackets {
        var packets: [ProtectedPacket] = []
        var rest = datagram
        while !rest.isEmpty {
            do {
                let packet = try parse(rest, shortHeaderCIDLength: shortHeaderCIDLength)
                packets.append(packet)
                rest = rest[packet.bytes.endIndex...]
            } catch {
                return DatagramPackets(packets: packets, discardedRemainder: error)
            }
        }
        return DatagramPackets(packets: packets, discardedRemainder: nil)
    }

    public static func split(datagram: [UInt8], shortHeaderCIDLength: Int) -> DatagramPackets {
        split(datagram: datagram[...], shortHeaderCIDLength: shortHeaderCIDLength)
    }

    /// Parses the packet at the start of `bytes`.
    public static func parse(_ bytes: ArraySlice<UInt8>, shortHeaderCIDLength: Int) throws(QUICDecodeError) -> ProtectedPacket {
        var reader = ByteReader(bytes)
        let first = try reader.readByte("first byte")
        guard first & 0x80 != 0 else {
            guard first & 0x40 != 0 else { throw .fixedBitNotSet }
            let destination = try ConnectionID(reader.readBytes(shortHeaderCIDLength, "destination connection ID"))
            let header = ShortHeader(destination: destination, spinBit: first & 0x20 != 0)
            return ProtectedPacket(header: .short(header), bytes: bytes, packetNumberOffset: reader.offset)
        }
        let version = try reader.readUInt32("version")
        if version != QUICVersion.v1 {
            // RFC 8999: connection IDs of any version are at most 255 bytes, with 1-byte lengths.
            let destination = try reader.readBytes(Int(reader.readByte("destination connection ID length")), "destination connection ID")
            let source = try reader.readBytes(Int(reader.readByte("source connection ID length")), "source connection ID")
            if version == QUICVersion.negotiation {
                guard reader.remaining % 4 == 0 else { throw .trailingBytes("supported versions") }
                var versions: [UInt32] = []
                versions.reserveCapacity(reader.remaining / 4)
                while !reader.isAtEnd { versions.append(try reader.readUInt32("supported version")) }
                let packet = VersionNegotiationPacket(destination: Array(destination), source: Array(source), versions: versions)
                return ProtectedPacket(header: .versionNegotiation(packet), bytes: bytes, packetNumberOffset: nil)
            }
            // The rest of the datagram: its length field, if any, is version-specific.
            return ProtectedPacket(
                header: .unsupportedVersion(version: version, destination: Array(destination), source: Array(source)),
                bytes: bytes, packetNumberOffset: nil)
        }
        guard first & 0x40 != 0 else { throw .fixedBitNotSet }
        let destination = try readConnectionID(&reader, "destination connection ID")
        let source = try readConnectionID(&reader, "source connection ID")
        let typeBits = (first >> 4) & 0x03
        guard let type = LongPacketType(rawValue: typeBits) else {
            // Retry: the token runs to the 16-byte tag at the end of the datagram.
            guard reader.remaining >= RetryPacket.tagLength else {
                throw .lengthExceedsInput("retry integrity tag", length: UInt64(RetryPacket.tagLength), available: reader.remaining)
            }
            let token = try reader.readBytes(reader.remaining - RetryPacket.tagLength, "retry token")
            let tag = reader.readRest()
            let packet = RetryPacket(version: version, destination: destination, source: source, token: Array(token), integrityTag: Array(tag))
            return ProtectedPacket(header: .retry(packet), bytes: bytes, packetNumberOffset: nil)
        }
        var token: [UInt8] = []
        if type == .initial {
            token = Array(try reader.readBytes(reader.readLength("token length"), "token"))
        }
        let length = try reader.readLength("packet length")
        let packetNumberOffset = reader.offset
        let end = bytes.startIndex + packetNumberOffset + length
        let header = LongHeader(type: type, version: version, destination: destination, source: source, token: token)
        return ProtectedPacket(header: .long(header), bytes: bytes[..<end], packetNumberOffset: packetNumberOffset)
    }

    static func readConnectionID(_ reader: inout ByteReader, _ field: String) throws(QUICDecodeError) -> ConnectionID {
        let length = Int(try reader.readByte(field + " length"))
        guard length <= ConnectionID.maxLength else { throw .connectionIDTooLong(length) }
        return try ConnectionID(reader.readBytes(length, field))
    }
}

extension Collection<UInt8> {
    var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
