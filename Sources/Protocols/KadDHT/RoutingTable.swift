import Identity

/// The routing table: k-buckets indexed by the common prefix length of a peer's
/// key with ours. Only peers that answered a DHT request (so serve the protocol)
/// enter. A full bucket keeps its old entries, which have proved to stay up, and
/// queues newcomers as replacements; a replacement takes the place of an entry
/// only when that entry fails (Kademlia's preference for long-lived peers).
public struct RoutingTable: Sendable {
    /// Time as the table takes it (an input: the table reads no clock).
    public typealias Instant = ContinuousClock.Instant

    /// A peer in a bucket: its id, its Kademlia key, when it entered and when it last answered.
    public struct Entry: Sendable, Equatable {
        public let peer: PeerID
        public let key: KadKey
        public let added: Instant
        public var lastSeen: Instant
    }

    struct Bucket: Sendable {
        var entries: [Entry] = []
        /// Peers that answered while the bucket was full, most recent last.
        var replacements: [PeerID] = []
        var lastRefreshed: Instant
    }

    /// What `peerResponded` did.
    public enum Update: Sendable, Equatable {
        case added
        case refreshed
        /// The bucket is full: the peer waits as a replacement.
        case queued
        /// Our own id.
        case ignored
    }

    public let localPeer: PeerID
    public let localKey: KadKey
    public let bucketSize: Int
    /// Bucket i holds peers sharing exactly i leading bits with us; grown as needed.
    private(set) var buckets: [Bucket] = []
    private var bucketOf: [PeerID: Int] = [:]

    public init(localPeer: PeerID, bucketSize: Int = 20) {
        self.localPeer = localPeer
        self.localKey = KadKey(hashing: localPeer.bytes)
        self.bucketSize = bucketSize
    }

    public var count: Int { bucketOf.count }
    public var isEmpty: Bool { bucketOf.isEmpty }
    public var peers: [PeerID] { Array(bucketOf.keys) }
    public func contains(_ peer: PeerID) -> Bool { bucketOf[peer] != nil }

    /// The bucket index of a key (its common prefix length with ours, at most 255).
    public func bucketIndex(_ key: KadKey) -> Int {
        min(localKey.commonPrefixLength(with: key), 255)
    }

    /// The entries of a bucket (for inspection and tests).
    public func entries(inBucket index: Int) -> [Entry] {
        index < buckets.count ? buckets[index].entries : []
    }

    public func replacements(inBucket index: Int) -> [PeerID] {
        index < buckets.count ? buckets[index].replacements : []
    }

    /// Records that `peer` answered a DHT request at `now`.
    @discardableResult
    public mutating func peerResponded(_ peer: PeerID, now: Instant, key: KadKey? = nil) -> Update {
        guard peer != localPeer else { return .ignored }
        if let index = bucketOf[peer] {
            if let at = buckets[index].entries.firstIndex(where: { $0.peer == peer }) {
                buckets[index].entries[at].lastSeen = now
            }
            return .refreshed
        }
        let key = key ?? KadKey(hashing: peer.bytes)
        let index = bucketIndex(key)
        while buckets.count <= index { buckets.append(Bucket(lastRefreshed: now)) }
        if buckets[index].entries.count < bucketSize {
            buckets[index].entries.append(Entry(peer: peer, key: key, added: now, lastSeen: now))
            bucketOf[peer] = index
            buckets[index].replacements.removeAll { $0 == peer }
            return .added
        }
        var replacements = buckets[index].replacements
        replacements.removeAll { $0 == peer }
        replacements.append(peer)
        if replacements.count > bucketSize { replacements.removeFirst(replacements.count - bucketSize) }
        buckets[index].replacements = replacements
        return .queued
    }

    /// Records that `peer` failed (timed out, refused the protocol, unreachable):
    /// it leaves the table and the most recent replacement of its bucket, if
    /// any, takes its place. Returns that replacement.
    @discardableResult
    public mutating func peerFailed(_ peer: PeerID, now: Instant) -> PeerID? {
        guard let index = bucketOf.removeValue(forKey: peer) else {
            // A queued replacement that failed is no candidate any more.
            let index = bucketIndex(KadKey(hashing: peer.bytes))
            if index < buckets.count { buckets[index].replacements.removeAll { $0 == peer } }
            return nil
        }
        buckets[index].entries.removeAll { $0.peer == peer }
        guard let replacement = buckets[index].replacements.popLast() else { return nil }
        buckets[index].entries.append(
            Entry(peer: replacement, key: KadKey(hashing: replacement.bytes), added: now, lastSeen: now))
        bucketOf[replacement] = index
        return replacement
    }

    /// Up to `count` peers closest to `target`, closest first.
    public func closest(to target: KadKey, count: Int, excluding: PeerID? = nil) -> [PeerID] {
        guard count > 0 else { return [] }
        // Keeps the best `count` in order as it goes: few inserts once it is full.
        var best: [(distance: KadKey, peer: PeerID)] = []
        best.reserveCapacity(count + 1)
        for bucket in buckets {
            for entry in bucket.entries where entry.peer != excluding {
                let distance = entry.key.distance(to: target)
                if best.count == count, let last = best.last, !(distance < last.distance) { continue }
                let at = best.partitioningIndex { distance < $0.distance }
                best.insert((distance, entry.peer), at: at)
                if best.count > count { best.removeLast() }
            }
        }
        return best.map(\.peer)
    }

    /// Notes that a lookup of a key in bucket `index` finished (the bucket is fresh).
    public mutating func markRefreshed(bucket index: Int, now: Instant) {
        if index < buckets.count { buckets[index].lastRefreshed = now }
    }

    /// Buckets up to `maxIndex` not refreshed for `interval` (those worth a random lookup).
    public func bucketsNeedingRefresh(now: Instant, interval: Duration, maxIndex: Int = 15) -> [Int] {
        let last = min(buckets.count, maxIndex + 1)
        return (0..<last).filter { now - buckets[$0].lastRefreshed >= interval }
    }
}

/// The admission checks: peers identify announced as DHT servers, asked a
/// request before they enter the routing table. Bounded, so that many
/// identities announcing the protocol at once cost at most `maxInFlight`
/// streams at a time; the others wait their turn (at most `maxWaiting`, the
/// newest beyond dropped: they enter later if they answer a lookup).
struct AdmissionChecks: Sendable {
    static let maxInFlight = 16
    static let maxWaiting = 256
    private(set) var inFlight: Set<PeerID> = []
    private(set) var waiting: [PeerID] = []

    /// Whether to check `peer` now; if not, it may wait its turn (not when it
    /// is in the table, or being checked or waiting already).
    mutating func begin(_ peer: PeerID, known: Bool) -> Bool {
        guard !known, !inFlight.contains(peer), !waiting.contains(peer) else { return false }
        guard inFlight.count < Self.maxInFlight else {
            if waiting.count < Self.maxWaiting { waiting.append(peer) }
            return false
        }
        inFlight.insert(peer)
        return true
    }

    /// `peer`'s check is over: the next to check, if one waits.
    mutating func end(_ peer: PeerID) -> PeerID? {
        inFlight.remove(peer)
        guard !waiting.isEmpty else { return nil }
        let next = waiting.removeFirst()
        inFlight.insert(next)
        return next
    }
}
