import Foundation
import Identity
import Multiformats
import SwiftProtobuf

/// The status codes of circuit relay v2 (the spec's `Status`).
public enum RelayStatus: Int, Sendable, Equatable, CustomStringConvertible {
    case ok = 100
    case reservationRefused = 200
    case resourceLimitExceeded = 201
    case permissionDenied = 202
    case connectionFailed = 203
    case noReservation = 204
    case malformedMessage = 400
    case unexpectedMessage = 401

    public var description: String {
        switch self {
        case .ok: "OK"
        case .reservationRefused: "RESERVATION_REFUSED"
        case .resourceLimitExceeded: "RESOURCE_LIMIT_EXCEEDED"
        case .permissionDenied: "PERMISSION_DENIED"
        case .connectionFailed: "CONNECTION_FAILED"
        case .noReservation: "NO_RESERVATION"
        case .malformedMessage: "MALFORMED_MESSAGE"
        case .unexpectedMessage: "UNEXPECTED_MESSAGE"
        }
    }
}

/// The limits of one relayed connection: how long it may last and how many
/// bytes may cross in each direction (nil: unlimited).
public struct CircuitLimit: Sendable, Equatable {
    public var duration: UInt32?
    public var data: UInt64?

    public init(duration: UInt32?, data: UInt64?) {
        self.duration = duration
        self.data = data
    }

    /// Neither bound. On the wire that is no `limit` field at all (the spec's
    /// unlimited): go-libp2p takes any `Limit`, even an empty one, for a
    /// limited (transient) connection and runs no pubsub over it.
    public static let unlimited = CircuitLimit(duration: nil, data: nil)

    public var isUnlimited: Bool { duration == nil && data == nil }

    /// Nil for no bound: what a message carries (decoded messages never hold an unlimited limit).
    var bounded: CircuitLimit? { isUnlimited ? nil : self }
}

/// A reservation as the relay grants it: when it expires (Unix seconds), the
/// relay's addresses, and the signed voucher.
public struct ReservationGrant: Sendable, Equatable {
    public var expire: UInt64
    public var addresses: [Multiaddr]
    public var voucher: [UInt8]?

    public init(expire: UInt64, addresses: [Multiaddr], voucher: [UInt8]?) {
        self.expire = expire
        self.addresses = addresses
        self.voucher = voucher
    }
}

/// Errors of circuit relay v2.
public enum RelayError: Error, CustomStringConvertible, Sendable {
    /// A message that does not parse or lacks what its type requires.
    case malformed(String)
    /// A message of a type the protocol does not allow at this point.
    case unexpected(String)
    /// The relay or the target answered with a status other than OK.
    case refused(RelayStatus, phase: String)
    /// A reservation voucher that does not verify or names someone else.
    case badVoucher(String)
    /// The address is not a circuit address we can use.
    case badAddress(String)
    /// A step of the protocol failed; keeps its cause.
    case failed(phase: String, underlying: any Error)

    public var description: String {
        switch self {
        case .malformed(let why): "circuit relay: malformed message: \(why)"
        case .unexpected(let why): "circuit relay: unexpected message: \(why)"
        case .refused(let status, let phase): "circuit relay: \(phase) refused with \(status)"
        case .badVoucher(let why): "circuit relay: bad reservation voucher: \(why)"
        case .badAddress(let why): "circuit relay: \(why)"
        case .failed(let phase, let underlying): "circuit relay: \(phase) failed: \(underlying)"
        }
    }

    /// The status the peer should be told for this error, when it is its fault.
    var status: RelayStatus {
        switch self {
        case .unexpected: .unexpectedMessage
        default: .malformedMessage
        }
    }
}

/// A message of the hop protocol (`/libp2p/circuit/relay/0.2.0/hop`).
public enum HopMessage: Sendable, Equatable {
    case reserve
    case connect(PeerID)
    case status(RelayStatus, reservation: ReservationGrant? = nil, limit: CircuitLimit? = nil)

    /// Hop and stop messages are small; go-libp2p's bound.
    public static let maxSize = 4096

    public init(bytes: some Collection<UInt8>) throws(RelayError) {
        let message: Circuit_Pb_HopMessage
        do {
            message = try Circuit_Pb_HopMessage(serializedBytes: Array(bytes))
        } catch {
            throw .malformed("hop message: \(error)")
        }
        guard message.hasType else { throw .malformed("hop message without a type") }
        switch message.type {
        case .reserve:
            self = .reserve
        case .connect:
            guard message.hasPeer else { throw .malformed("CONNECT without a peer") }
            self = .connect(try decodePeer(message.peer))
        case .status:
            guard message.hasStatus else { throw .malformed("STATUS without a status") }
            let status = try decodeStatus(message.status)
            let reservation = message.hasReservation ? try decodeReservation(message.reservation) : nil
            self = .status(status, reservation: reservation, limit: message.hasLimit ? decodeLimit(message.limit).bounded : nil)
        case .UNRECOGNIZED(let value):
            throw .malformed("hop message of unknown type \(value)")
        }
    }

    public func encoded() -> [UInt8] {
        var message = Circuit_Pb_HopMessage()
        switch self {
        case .reserve:
            message.type = .reserve
        case .connect(let peer):
            message.type = .connect
            message.peer = encodePeer(peer)
        case .status(let status, let reservation, let limit):
            message.type = .status
            message.status = Circuit_Pb_Status(rawValue: status.rawValue) ?? .unused
            if let reservation {
                var pb = Circuit_Pb_Reservation()
                pb.expire = reservation.expire
                pb.addrs = reservation.addresses.map { Data($0.bytes) }
                if let voucher = reservation.voucher { pb.voucher = Data(voucher) }
                message.reservation = pb
            }
            if let limit = limit?.bounded { message.limit = encodeLimit(limit) }
        }
        return (try? message.serializedBytes()) ?? []
    }
}

/// A message of the stop protocol (`/libp2p/circuit/relay/0.2.0/stop`).
public enum StopMessage: Sendable, Equatable {
    /// The relay asks us to accept a circuit from `PeerID` under `limit`.
    case connect(PeerID, limit: CircuitLimit?)
    case status(RelayStatus)

    public init(bytes: some Collection<UInt8>) throws(RelayError) {
        let message: Circuit_Pb_StopMessage
        do {
            message = try Circuit_Pb_StopMessage(serializedBytes: Array(bytes))
        } catch {
            throw .malformed("stop message: \(error)")
        }
        guard message.hasType else { throw .malformed("stop message without a type") }
        switch message.type {
        case .connect:
            guard message.hasPeer else { throw .malformed("stop CONNECT without a peer") }
            self = .connect(try decodePeer(message.peer), limit: message.hasLimit ? decodeLimit(message.limit).bounded : nil)
        case .status:
            guard message.hasStatus else { throw .malformed("stop STATUS without a status") }
            self = .status(try decodeStatus(message.status))
        case .UNRECOGNIZED(let value):
            throw .malformed("stop message of unknown type \(value)")
        }
    }

    public func encoded() -> [UInt8] {
        var message = Circuit_Pb_StopMessage()
        switch self {
        case .connect(let peer, let limit):
            message.type = .connect
            message.peer = encodePeer(peer)
            if let limit = limit?.bounded { message.limit = encodeLimit(limit) }
        case .status(let status):
            message.type = .status
            message.status = Circuit_Pb_Status(rawValue: status.rawValue) ?? .unused
        }
        return (try? message.serializedBytes()) ?? []
    }
}

/// A reservation voucher (the spec's `ReservationVoucher` in a signed
/// envelope): the relay's word that `peer` holds a reservation until `expiration`.
public struct ReservationVoucher: Sendable, Equatable {
    public static let domain = "libp2p-relay-rsvp"
    /// The multicodec `libp2p-relay-rsvp` (0x0302), as go-libp2p writes it.
    public static let payloadType: [UInt8] = [0x03, 0x02]

    public let relay: PeerID
    public let peer: PeerID
    public let expiration: UInt64

    public init(relay: PeerID, peer: PeerID, expiration: UInt64) {
        self.relay = relay
        self.peer = peer
        self.expiration = expiration
    }

    /// The voucher in an envelope signed with the relay's key.
    public func sealed(with key: PrivateKey) throws -> [UInt8] {
        var message = Circuit_Pb_ReservationVoucher()
        message.relay = Data(relay.bytes)
        message.peer = Data(peer.bytes)
        message.expiration = expiration
        let envelope = try SignedEnvelope.seal(
            payload: try message.serializedBytes(), payloadType: Self.payloadType, domain: Self.domain, key: key)
        return envelope.marshal()
    }

    /// Opens and verifies a voucher; the signer must be the relay it names.
    public static func open(_ bytes: [UInt8]) throws(RelayError) -> ReservationVoucher {
        let envelope: SignedEnvelope
        do {
            envelope = try SignedEnvelope(marshaled: bytes, domain: domain)
        } catch {
            throw .badVoucher("\(error)")
        }
        guard envelope.payloadType == payloadType else { throw .badVoucher("payload type \(envelope.payloadType)") }
        let message: Circuit_Pb_ReservationVoucher
        do {
            message = try Circuit_Pb_ReservationVoucher(serializedBytes: envelope.payload)
        } catch {
            throw .badVoucher("payload: \(error)")
        }
        guard message.hasRelay, message.hasPeer, message.hasExpiration,
            let relay = try? PeerID(bytes: Array(message.relay)), let peer = try? PeerID(bytes: Array(message.peer))
        else { throw .badVoucher("missing or invalid field") }
        guard PeerID(publicKey: envelope.publicKey) == relay else {
            throw .badVoucher("signed by \(PeerID(publicKey: envelope.publicKey)), not by the relay \(relay)")
        }
        return ReservationVoucher(relay: relay, peer: peer, expiration: message.expiration)
    }
}

// MARK: - Field codecs

private func decodePeer(_ peer: Circuit_Pb_Peer) throws(RelayError) -> PeerID {
    guard peer.hasID else { throw .malformed("peer without an id") }
    do {
        return try PeerID(bytes: Array(peer.id))
    } catch {
        throw .malformed("peer id: \(error)")
    }
}

private func encodePeer(_ peer: PeerID) -> Circuit_Pb_Peer {
    var pb = Circuit_Pb_Peer()
    pb.id = Data(peer.bytes)
    return pb
}

private func decodeStatus(_ status: Circuit_Pb_Status) throws(RelayError) -> RelayStatus {
    guard let known = RelayStatus(rawValue: status.rawValue) else {
        throw .malformed("unknown status \(status.rawValue)")
    }
    return known
}

private func decodeReservation(_ pb: Circuit_Pb_Reservation) throws(RelayError) -> ReservationGrant {
    guard pb.hasExpire else { throw .malformed("reservation without an expiry") }
    return ReservationGrant(
        expire: pb.expire,
        addresses: pb.addrs.prefix(RelayLimits.maxAddresses).compactMap { try? Multiaddr(bytes: Array($0)) },
        voucher: pb.hasVoucher && !pb.voucher.isEmpty ? Array(pb.voucher) : nil)
}

private func decodeLimit(_ pb: Circuit_Pb_Limit) -> CircuitLimit {
    // 0 means unlimited, as absent does (older relays write 0 for no limit).
    CircuitLimit(
        duration: pb.hasDuration && pb.duration > 0 ? pb.duration : nil,
        data: pb.hasData && pb.data > 0 ? pb.data : nil)
}

private func encodeLimit(_ limit: CircuitLimit) -> Circuit_Pb_Limit {
    var pb = Circuit_Pb_Limit()
    if let duration = limit.duration { pb.duration = duration }
    if let data = limit.data { pb.data = data }
    return pb
}
