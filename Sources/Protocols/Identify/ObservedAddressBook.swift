import Identity
import Multiformats

/// The addresses peers tell us (identify's `observedAddr`) they see us at,
/// sans-IO: an address counts as confirmed once `threshold` distinct peers
/// reported it within `ttl`, and only confirmed ones are advertised (one peer
/// must not make us announce an address of its choosing). Bounded in
/// addresses and in observers per address.
public struct ObservedAddressBook: Sendable {
    public let threshold: Int
    public let ttl: Duration
    static let maxAddresses = 64
    static let maxObserversPerAddress = 16

    private var observers: [Multiaddr: [PeerID: ContinuousClock.Instant]] = [:]

    public init(threshold: Int = 2, ttl: Duration = .seconds(30 * 60)) {
        self.threshold = threshold
        self.ttl = ttl
    }

    /// `observer` says it sees us at `address`. Relayed and non-IP addresses are ignored.
    public mutating func record(_ address: Multiaddr, by observer: PeerID, now: ContinuousClock.Instant) {
        let parts = address.components
        guard let first = parts.first, !parts.contains(.p2pCircuit) else { return }
        switch first {
        case .ip4, .ip6: break
        default: return
        }
        expire(now: now)
        if observers[address] == nil {
            guard observers.count < Self.maxAddresses else { return }
        }
        var seen = observers[address, default: [:]]
        guard seen[observer] != nil || seen.count < Self.maxObserversPerAddress else { return }
        seen[observer] = now
        observers[address] = seen
    }

    /// Addresses seen by at least `threshold` peers, most observed first.
    public func confirmed(now: ContinuousClock.Instant) -> [Multiaddr] {
        observers.compactMap { address, seen -> (Multiaddr, Int)? in
            let live = seen.values.count { now - $0 < ttl }
            return live >= threshold ? (address, live) : nil
        }
        .sorted { $0.1 != $1.1 ? $0.1 > $1.1 : $0.0.description < $1.0.description }
        .map(\.0)
    }

    /// Every address reported, confirmed or not (for hole punching, which tries them).
    public var all: [Multiaddr] { Array(observers.keys) }

    private mutating func expire(now: ContinuousClock.Instant) {
        for (address, seen) in observers {
            let live = seen.filter { now - $0.value < ttl }
            observers[address] = live.isEmpty ? nil : live
        }
    }
}
