import Identity

/// Which relays to hold reservations on, sans-IO (go-libp2p's autorelay, in
/// short): fed what AutoNAT says, the relays we know of, and how reservations
/// went, it answers with reservations to make or give up.
///
/// Reservations are wanted while we are not reachable from outside: when
/// AutoNAT says so (`unreachable`), or when it has said nothing for
/// `unknownGrace` and we know no public address of ours. Then `desiredRelays`
/// candidates are reserved on, in order of source (named relays, bootstrap
/// peers, relays identify told us about) and then of arrival. A candidate that
/// refused, or whose reservation was lost, waits out a backoff (doubling from
/// `backoff` to `maxBackoff`) while another takes its place. Once we are
/// reachable every reservation is given up.
public struct AutoRelay: Sendable {
    public struct Configuration: Sendable {
        /// Reservations held at once.
        public var desiredRelays = 2
        /// Reservations are made when reachability stays unknown this long.
        public var unknownGrace: Duration = .seconds(15)
        /// A failed candidate's first wait, doubled at each further failure.
        public var backoff: Duration = .seconds(10)
        public var maxBackoff: Duration = .seconds(600)
        /// Candidates remembered at once (the oldest discovered ones are forgotten first).
        public var maxCandidates = 64

        public init() {}
    }

    /// What AutoNAT (or the caller) knows of our reachability.
    public enum Reachability: Sendable, Equatable {
        case unknown
        /// Peers can dial us from the internet: no relay is needed.
        case reachable
        /// They cannot (behind a NAT, or reachable on a LAN only).
        case unreachable
    }

    /// Where a candidate came from, best first.
    public enum Source: Int, Sendable, Comparable {
        /// Named by the user (`--relay`).
        case configured
        /// A bootstrap peer: many public nodes offer hop.
        case bootstrap
        /// Identify says it offers `/libp2p/circuit/relay/0.2.0/hop`.
        case discovered

        public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    }

    public enum Action: Sendable, Hashable {
        case reserve(PeerID)
        /// Close the reservation (or stop making it).
        case release(PeerID)
    }

    struct Candidate: Sendable {
        var source: Source
        /// What identify says; nil until it has spoken.
        var offersHop: Bool?
        var arrival: UInt64
        var failures = 0
        var retryAt: ContinuousClock.Instant?
    }

    enum Slot: Sendable, Equatable {
        case reserving
        case reserved
    }

    public let configuration: Configuration
    private var reachability = Reachability.unknown
    private var unknownSince: ContinuousClock.Instant
    private var publicAddressKnown = false
    private var candidates: [PeerID: Candidate] = [:]
    private var arrivals: UInt64 = 0
    private var slots: [PeerID: Slot] = [:]

    public init(configuration: Configuration = .init(), now: ContinuousClock.Instant) {
        self.configuration = configuration
        self.unknownSince = now
    }

    /// The relays reserved on, or being reserved on.
    public var active: [PeerID: Bool] { slots.mapValues { $0 == .reserved } }

    /// Whether `peer` is a candidate already.
    public func isCandidate(_ peer: PeerID) -> Bool { candidates[peer] != nil }

    /// Whether reservations are wanted at `now`.
    public func wantsRelays(now: ContinuousClock.Instant) -> Bool {
        switch reachability {
        case .reachable: false
        case .unreachable: true
        case .unknown: !publicAddressKnown && now - unknownSince >= configuration.unknownGrace
        }
    }

    /// When `tick` should be called next (a grace period or backoff ending), if ever.
    public func nextDeadline(now: ContinuousClock.Instant) -> ContinuousClock.Instant? {
        var deadlines: [ContinuousClock.Instant] = []
        if reachability == .unknown, !publicAddressKnown, now - unknownSince < configuration.unknownGrace {
            deadlines.append(unknownSince + configuration.unknownGrace)
        }
        if wantsRelays(now: now), slots.count < configuration.desiredRelays {
            deadlines += candidates.values.compactMap(\.retryAt).filter { $0 > now }
        }
        return deadlines.min()
    }

    public mutating func setReachability(_ new: Reachability, now: ContinuousClock.Instant) -> [Action] {
        if new == .unknown, reachability != .unknown { unknownSince = now }
        reachability = new
        return plan(now: now)
    }

    /// Whether we know an address of ours that is public (an unknown
    /// reachability then waits for AutoNAT instead of reserving).
    public mutating func setPublicAddressKnown(_ known: Bool, now: ContinuousClock.Instant) -> [Action] {
        publicAddressKnown = known
        return plan(now: now)
    }

    /// A relay we may reserve on; `offersHop` is what identify said, if it has.
    /// A known candidate keeps its best source and takes the news of `offersHop`.
    public mutating func addCandidate(
        _ peer: PeerID, source: Source, offersHop: Bool?, now: ContinuousClock.Instant
    ) -> [Action] {
        if var known = candidates[peer] {
            known.source = min(known.source, source)
            if let offersHop { known.offersHop = offersHop }
            candidates[peer] = known
        } else {
            if candidates.count >= configuration.maxCandidates, !forgetOneCandidate() { return [] }
            arrivals += 1
            candidates[peer] = Candidate(source: source, offersHop: offersHop, arrival: arrivals)
        }
        var actions: [Action] = []
        // A relay that turns out not to offer hop is given up at once.
        if offersHop == false, candidates[peer]?.source != .configured, slots.removeValue(forKey: peer) != nil {
            actions.append(.release(peer))
        }
        return actions + plan(now: now)
    }

    /// Forgets the newest discovered candidate that holds no slot; false if there is none.
    private mutating func forgetOneCandidate() -> Bool {
        let forgettable = candidates.filter { $0.value.source == .discovered && slots[$0.key] == nil }
        guard let newest = forgettable.max(by: { $0.value.arrival < $1.value.arrival }) else { return false }
        candidates.removeValue(forKey: newest.key)
        return true
    }

    public mutating func reserved(_ peer: PeerID, now: ContinuousClock.Instant) -> [Action] {
        guard slots[peer] != nil else { return [.release(peer)] }
        slots[peer] = .reserved
        candidates[peer]?.failures = 0
        candidates[peer]?.retryAt = nil
        return plan(now: now)
    }

    /// The reservation could not be made, or was lost and could not be renewed:
    /// the candidate backs off and another takes its place.
    public mutating func reservationFailed(_ peer: PeerID, now: ContinuousClock.Instant) -> [Action] {
        let held = slots.removeValue(forKey: peer) != nil
        if var candidate = candidates[peer] {
            candidate.failures += 1
            let factor = 1 << min(candidate.failures - 1, 16)
            candidate.retryAt = now + min(configuration.backoff * factor, configuration.maxBackoff)
            candidates[peer] = candidate
        }
        // The caller's reservation may still be open (a lost one keeps refreshing): close it.
        return (held ? [.release(peer)] : []) + plan(now: now)
    }

    /// Time passed: a grace period or a backoff may have ended.
    public mutating func tick(now: ContinuousClock.Instant) -> [Action] {
        plan(now: now)
    }

    private mutating func plan(now: ContinuousClock.Instant) -> [Action] {
        guard wantsRelays(now: now) else {
            let released = slots.keys.sorted { $0.bytes.lexicographicallyPrecedes($1.bytes) }
            slots = [:]
            return released.map { .release($0) }
        }
        var actions: [Action] = []
        let ready = candidates.filter { peer, candidate in
            // Named relays are tried at once; others once identify says they offer hop.
            slots[peer] == nil && (candidate.source == .configured || candidate.offersHop == true)
                && (candidate.retryAt.map { $0 <= now } ?? true)
        }.sorted { ($0.value.source, $0.value.arrival) < ($1.value.source, $1.value.arrival) }
        for (peer, _) in ready where slots.count < configuration.desiredRelays {
            slots[peer] = .reserving
            actions.append(.reserve(peer))
        }
        return actions
    }
}
