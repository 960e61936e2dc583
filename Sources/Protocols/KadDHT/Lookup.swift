import Identity

/// The iterative lookup of Kademlia, sans-IO: feed it answers, failures and the
/// time; it says whom to ask next and when it is done. It keeps `alpha`
/// requests in flight to the closest peers not yet asked, and stops when the
/// `k` closest peers it has seen (leaving out those that failed) have all
/// answered, or when nobody is left to ask. Bounded: it keeps at most
/// `maxCandidates` peers and sends at most `maxRequests` requests, whatever
/// the answers say.
public struct Lookup: Sendable {
    /// Time as the lookup takes it (an input: the lookup reads no clock).
    public typealias Instant = ContinuousClock.Instant

    enum PeerState: Sendable, Equatable {
        case notAsked
        case waiting(deadline: Instant)
        case answered
        case failed
    }

    struct Candidate: Sendable {
        let peer: PeerID
        let distance: KadKey
        /// How many answers it took to learn of this peer (a seed is 1 hop).
        let hops: Int
        var state: PeerState
    }

    public let target: KadKey
    public let alpha: Int
    public let k: Int
    public let requestTimeout: Duration
    public let maxCandidates: Int
    public let maxRequests: Int
    private let localPeer: PeerID
    /// Sorted by distance to the target, closest first.
    private var candidates: [Candidate] = []
    private var seen: Set<PeerID> = []
    public private(set) var requestsSent = 0
    public private(set) var answers = 0
    public private(set) var failures = 0

    public init(
        target: KadKey, localPeer: PeerID, seeds: [PeerID], alpha: Int = 3, k: Int = 20,
        requestTimeout: Duration = .seconds(10), maxCandidates: Int? = nil, maxRequests: Int? = nil
    ) {
        self.target = target
        self.localPeer = localPeer
        self.alpha = max(1, alpha)
        self.k = max(1, k)
        self.requestTimeout = requestTimeout
        self.maxCandidates = maxCandidates ?? 8 * self.k
        self.maxRequests = maxRequests ?? 16 * self.k
        add(seeds, hops: 1)
    }

    private mutating func add(_ peers: [PeerID], hops: Int) {
        for peer in peers where peer != localPeer && !seen.contains(peer) {
            seen.insert(peer)
            let candidate = Candidate(
                peer: peer, distance: KadKey(hashing: peer.bytes).distance(to: target), hops: hops, state: .notAsked)
            let at = candidates.partitioningIndex { $0.distance >= candidate.distance }
            candidates.insert(candidate, at: at)
        }
        // Drop the farthest peers not asked yet beyond the bound; asked ones stay to be accounted for.
        var index = candidates.count - 1
        while candidates.count > maxCandidates && index >= 0 {
            if candidates[index].state == .notAsked { candidates.remove(at: index) }
            index -= 1
        }
    }

    private func index(of peer: PeerID) -> Int? {
        candidates.firstIndex { $0.peer == peer }
    }

    private var inFlight: Int {
        candidates.reduce(0) { count, candidate in
            if case .waiting = candidate.state { return count + 1 }
            return count
        }
    }

    /// The positions of the `k` closest peers that have not failed.
    private var closestLive: [Int] {
        var result: [Int] = []
        for (index, candidate) in candidates.enumerated() where candidate.state != .failed {
            result.append(index)
            if result.count == k { break }
        }
        return result
    }

    public var isFinished: Bool {
        let live = closestLive
        if live.allSatisfy({ candidates[$0].state == .answered }) { return true }
        if inFlight > 0 { return false }
        return requestsSent >= maxRequests || !live.contains { candidates[$0].state == .notAsked }
    }

    /// The peers to send a request to now (keeping `alpha` in flight); each is
    /// waiting from now on until it answers, fails or times out.
    public mutating func nextRequests(now: Instant) -> [PeerID] {
        guard !isFinished else { return [] }
        var free = alpha - inFlight
        var peers: [PeerID] = []
        for index in closestLive where free > 0 && requestsSent < maxRequests {
            guard candidates[index].state == .notAsked else { continue }
            candidates[index].state = .waiting(deadline: now + requestTimeout)
            requestsSent += 1
            free -= 1
            peers.append(candidates[index].peer)
        }
        return peers
    }

    /// `peer` answered with `closerPeers`.
    public mutating func received(from peer: PeerID, closerPeers: [PeerID]) {
        guard let at = index(of: peer), case .waiting = candidates[at].state else { return }
        candidates[at].state = .answered
        answers += 1
        add(closerPeers, hops: candidates[at].hops + 1)
    }

    /// `peer` could not be asked or gave no usable answer: it is dropped.
    public mutating func failed(_ peer: PeerID) {
        guard let at = index(of: peer), case .waiting = candidates[at].state else { return }
        candidates[at].state = .failed
        failures += 1
    }

    /// Fails every request whose time is up; returns those peers.
    public mutating func expire(now: Instant) -> [PeerID] {
        var expired: [PeerID] = []
        for index in candidates.indices {
            if case .waiting(let deadline) = candidates[index].state, deadline <= now {
                candidates[index].state = .failed
                failures += 1
                expired.append(candidates[index].peer)
            }
        }
        return expired
    }

    /// When the earliest request in flight times out.
    public var nextDeadline: Instant? {
        candidates.compactMap { candidate -> Instant? in
            if case .waiting(let deadline) = candidate.state { return deadline }
            return nil
        }.min()
    }

    /// The closest peers that answered, closest first (at most `k`).
    public var closestAnswered: [PeerID] {
        Array(candidates.lazy.filter { $0.state == .answered }.prefix(k).map(\.peer))
    }

    /// How many answers it took to learn of `peer` (nil if never seen or dropped).
    public func hops(to peer: PeerID) -> Int? {
        index(of: peer).map { candidates[$0].hops }
    }
}

extension Array {
    /// The first index whose element satisfies `belongsToSecondPart`, for a
    /// predicate false then true along the array (binary search).
    func partitioningIndex(where belongsToSecondPart: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsToSecondPart(self[mid]) { high = mid } else { low = mid + 1 }
        }
        return low
    }
}
