import Identity
import Multiformats

/// What a relay allows: reservations (how long, how many in all and per IP),
/// circuits (how many in all and per peer) and each circuit's limit.
/// go-libp2p's defaults.
public struct RelayLimits: Sendable, Equatable {
    /// How long a reservation lasts (seconds); the client refreshes before.
    public var reservationTTL: UInt64 = 3600
    public var maxReservations = 128
    public var maxReservationsPerIP = 8
    public var maxCircuits = 1024
    /// Open circuits a peer may be part of, as source or target.
    public var maxCircuitsPerPeer = 16
    /// Each circuit's duration and bytes per direction.
    public var circuit = CircuitLimit(duration: 120, data: 1 << 17)

    /// Addresses we keep from a reservation answer.
    static let maxAddresses = 16

    public init() {}
}

/// The relay's bookkeeping, sans-IO: reservations with their expiry and the
/// requester's IP, open circuits per peer; decides every hop request from the
/// current time (Unix seconds) given as input.
public struct RelayResources: Sendable {
    public let limits: RelayLimits

    struct Reservation: Sendable {
        var expire: UInt64
        var ip: [UInt8]?
    }

    private(set) var reservations: [PeerID: Reservation] = [:]
    private(set) var circuitsPerPeer: [PeerID: Int] = [:]
    private(set) var circuits = 0

    public init(limits: RelayLimits) {
        self.limits = limits
    }

    public var reservationCount: Int { reservations.count }
    public var circuitCount: Int { circuits }

    /// A reservation for `peer`, whose connection comes from `ip` (nil when
    /// the address has no IP, e.g. in-memory). A peer that holds one refreshes
    /// it; reservations over a relayed connection are refused. Returns the
    /// expiry, or the status to refuse with.
    public mutating func reserve(
        peer: PeerID, ip: [UInt8]?, overRelayedConnection: Bool, now: UInt64
    ) -> Result<UInt64, RelayStatusError> {
        guard !overRelayedConnection else { return .failure(.init(.permissionDenied)) }
        expire(now: now)
        let expiry = now + limits.reservationTTL
        if reservations[peer] != nil {
            reservations[peer] = Reservation(expire: expiry, ip: ip)
            return .success(expiry)
        }
        guard reservations.count < limits.maxReservations else {
            return .failure(.init(.reservationRefused))
        }
        if let ip, reservations.values.count(where: { $0.ip == ip }) >= limits.maxReservationsPerIP {
            return .failure(.init(.reservationRefused))
        }
        reservations[peer] = Reservation(expire: expiry, ip: ip)
        return .success(expiry)
    }

    /// Whether `target` holds a live reservation.
    public func hasReservation(_ target: PeerID, now: UInt64) -> Bool {
        reservations[target].map { $0.expire > now } ?? false
    }

    /// Opens a circuit from `source` to `target`: the target must hold a live
    /// reservation and both must be under their circuit limits. Every success
    /// is matched by one `closeCircuit`.
    public mutating func openCircuit(
        from source: PeerID, to target: PeerID, overRelayedConnection: Bool, now: UInt64
    ) -> Result<CircuitLimit, RelayStatusError> {
        guard !overRelayedConnection else { return .failure(.init(.permissionDenied)) }
        guard hasReservation(target, now: now) else { return .failure(.init(.noReservation)) }
        guard circuits < limits.maxCircuits,
            circuitsPerPeer[source, default: 0] < limits.maxCircuitsPerPeer,
            circuitsPerPeer[target, default: 0] < limits.maxCircuitsPerPeer
        else { return .failure(.init(.resourceLimitExceeded)) }
        circuits += 1
        circuitsPerPeer[source, default: 0] += 1
        circuitsPerPeer[target, default: 0] += 1
        return .success(limits.circuit)
    }

    public mutating func closeCircuit(from source: PeerID, to target: PeerID) {
        circuits = max(0, circuits - 1)
        for peer in [source, target] {
            let left = circuitsPerPeer[peer, default: 0] - 1
            circuitsPerPeer[peer] = left > 0 ? left : nil
        }
    }

    /// Drops the reservations that have expired.
    public mutating func expire(now: UInt64) {
        reservations = reservations.filter { $0.value.expire > now }
    }

    /// The peer's reservation ends (its connection to us closed).
    public mutating func cancelReservation(_ peer: PeerID) {
        reservations[peer] = nil
    }
}

/// A refusal with the spec's status code (an `Error` for `Result`).
public struct RelayStatusError: Error, Sendable, Equatable {
    public let status: RelayStatus
    public init(_ status: RelayStatus) { self.status = status }
}

/// How much one direction of a circuit may still carry, sans-IO: each chunk
/// read asks how many of its bytes may pass; once the budget is spent the
/// relay resets the circuit.
public struct CircuitBudget: Sendable, Equatable {
    /// Bytes left (nil: unlimited).
    public private(set) var remaining: UInt64?

    public init(limit: UInt64?) {
        remaining = limit
    }

    /// How many of `count` bytes may be forwarded now (all, a prefix, or none).
    public mutating func take(_ count: Int) -> Int {
        guard let left = remaining else { return count }
        let allowed = Int(min(UInt64(count), left))
        remaining = left - UInt64(allowed)
        return allowed
    }

    /// Whether the budget is spent.
    public var isExhausted: Bool { remaining == 0 }
}

extension Multiaddr {
    /// The IP address this address starts with, if any (for per-IP limits).
    var ipBytes: [UInt8]? {
        switch components.first {
        case .ip4(let bytes)?, .ip6(let bytes)?: bytes
        default: nil
        }
    }
}
