import Identity
import Multiformats
import NIOCore
import Synchronization

/// What every connection of a host may make it buffer, in all, per peer (as
/// go-libp2p's resource manager's system and peer memory scopes) and per
/// source network (an IPv4 address, an IPv6 /64: see `SourceNetwork`), so that
/// many peer ids from one address cannot take it all (issue 25, row 2).
///
/// Streams reserve their Yamux receive window (what the remote may send
/// before we read) when they open and when the window grows, and writers
/// reserve the data they queue until it is framed; all is given back when the
/// stream ends. A reservation that does not fit is refused: the newest stream
/// is reset (as go-yamux does when it cannot reserve a new stream's window),
/// a window stays as it is, a write fails. What is reserved already keeps
/// being served.
///
/// A reservation's priority (0 to 255) is how much of each limit it may fill:
/// up to `limit × (priority + 1) / 256` (go-libp2p's rule), so that window
/// growth (half) cannot take the room new streams need (seven eighths), nor
/// new streams the room the writes of streams already open need (all).
///
/// Idle reservations are reclaimed (issue 25, row 2): a window granted cannot
/// be taken back in Yamux, so peers at five or more addresses, each within its
/// share, could hold the whole budget with streams that never carry a byte.
/// When a new stream does not fit the total, the budget resets the stream
/// idle longest (no byte either way for `reclaimIdleAfter`) of the scope (a
/// network, or a peer without one) holding the most, and the newcomer takes
/// its room at once. Only scopes holding more than the newcomer's would after
/// it are asked, biggest first, so the few long-lived streams of an honest
/// peer (pubsub's, idle between messages) are not taken while a bigger holder
/// idles, and nothing is reclaimed while the budget has room. Reserving
/// windows lazily (when data arrives) was the other way: it leaves a granted
/// window unbacked, so a burst on many streams must be reset mid-transfer, and
/// bytes read but not yet reported would still be charged to idle streams.
public final class MemoryBudget: Sendable {
    /// Up to the whole limit: writes queued on open streams.
    public static let always: UInt8 = 255
    /// Up to seven eighths: a new stream's initial window.
    public static let stream: UInt8 = 223
    /// Up to half of the limit: window growth (go-yamux reserves it so).
    public static let growth: UInt8 = 127

    public let limit: Int
    public let limitPerPeer: Int
    /// What the connections from one network may make us buffer.
    public let limitPerNetwork: Int
    /// Whether loopback connections count as a network (else they have no network share).
    public let limitLoopback: Bool
    /// A stream that carried no byte either way for this long may be reset to
    /// make room for a newcomer (nil: never).
    public let reclaimIdleAfter: Duration?

    /// One stream of one connection.
    struct StreamKey: Hashable {
        let connection: UInt64
        let stream: UInt32
    }

    /// What a stream holds reserved, and when it last carried a byte.
    struct StreamEntry {
        let peer: PeerID
        let network: SourceNetwork?
        var window = 0
        var queued = 0
        /// Uptime in nanoseconds.
        var lastActive: UInt64
    }

    /// Whom reclaiming charges: a network, or a peer connected from none (loopback).
    enum Scope: Hashable {
        case network(SourceNetwork)
        case peer(PeerID)
    }

    private struct State {
        var used = 0
        var usedByPeer: [PeerID: Int] = [:]
        var usedByNetwork: [SourceNetwork: Int] = [:]
        var refused = 0
        var reclaimed = 0
        var reclaimedByPeer: [PeerID: Int] = [:]
        var streams: [StreamKey: StreamEntry] = [:]
        var streamsByScope: [Scope: Set<StreamKey>] = [:]
        /// Per connection: how to reset one of its streams (on its event loop).
        var reclaimers: [UInt64: @Sendable (UInt32) -> Void] = [:]
        var nextConnection: UInt64 = 1
        /// Uptime (ns) before which no idle stream is looked for again: the last
        /// search found none (each costs a scan of the bigger holders' streams,
        /// and a peer can have many new streams refused in a second).
        var noSearchBefore: UInt64 = 0
    }
    private let state = Mutex(State())

    /// `limitPerNetwork` nil: the whole limit (no network share).
    public init(
        limit: Int, limitPerPeer: Int, limitPerNetwork: Int? = nil, limitLoopback: Bool = false,
        reclaimIdleAfter: Duration? = .seconds(10)
    ) {
        self.limit = max(0, limit)
        self.limitPerPeer = max(0, min(limitPerPeer, limit))
        self.limitPerNetwork = max(0, min(limitPerNetwork ?? limit, limit))
        self.limitLoopback = limitLoopback
        self.reclaimIdleAfter = reclaimIdleAfter
    }

    /// The network a connection from `address` is charged to (nil: none).
    public func network(of address: Multiaddr) -> SourceNetwork? {
        SourceNetwork(address, limitLoopback: limitLoopback)
    }

    /// Bytes reserved now by the connections from `network`.
    public func used(from network: SourceNetwork) -> Int { state.withLock { $0.usedByNetwork[network] ?? 0 } }

    /// Bytes reserved now, in all.
    public var used: Int { state.withLock { $0.used } }

    /// Bytes reserved now by the connections to `peer`.
    public func used(by peer: PeerID) -> Int { state.withLock { $0.usedByPeer[peer] ?? 0 } }

    /// Reservations refused so far (window growth not counted: nothing is refused to the peer).
    public var refusals: Int { state.withLock { $0.refused } }

    /// Idle streams reset so far to make room for new ones.
    public var reclaims: Int { state.withLock { $0.reclaimed } }

    /// Streams of `peer` reset so far to make room for others.
    public func reclaims(of peer: PeerID) -> Int { state.withLock { $0.reclaimedByPeer[peer] ?? 0 } }

    /// Why a reservation was refused, in words (the limit it hit).
    public enum Refusal: Sendable, Equatable {
        case total, perPeer, perNetwork

        public var reason: String {
            switch self {
            case .total: return "memory"
            case .perPeer: return "memory per peer"
            case .perNetwork: return "memory per IP address"
            }
        }
    }

    /// Reserves `bytes` for `peer` (connected from `network`); the limit hit when it does not fit.
    /// `counted`: whether a refusal counts in `refusals`.
    public func reserve(
        _ bytes: Int, for peer: PeerID, from network: SourceNetwork? = nil, priority: UInt8, counted: Bool = true
    ) -> Refusal? {
        guard bytes > 0 else { return nil }
        return state.withLock { state in
            let refusal = take(bytes, for: peer, from: network, priority: priority, in: &state)
            if refusal != nil, counted { state.refused += 1 }
            return refusal
        }
    }

    /// Gives back `bytes` reserved for `peer` (from `network`, as reserved).
    public func release(_ bytes: Int, for peer: PeerID, from network: SourceNetwork? = nil) {
        guard bytes > 0 else { return }
        state.withLock { Self.give(bytes, for: peer, from: network, in: &$0) }
    }

    private func take(_ bytes: Int, for peer: PeerID, from network: SourceNetwork?, priority: UInt8, in state: inout State) -> Refusal? {
        Self.takeShare(bytes, for: peer, from: network, priority: priority, limit: limit, limitPerPeer: limitPerPeer,
            limitPerNetwork: limitPerNetwork, in: &state)
    }

    private static func takeShare(
        _ bytes: Int, for peer: PeerID, from network: SourceNetwork?, priority: UInt8, limit: Int, limitPerPeer: Int,
        limitPerNetwork: Int, in state: inout State
    ) -> Refusal? {
        guard bytes > 0 else { return nil }
        let peerUsed = state.usedByPeer[peer] ?? 0
        let networkUsed = network.map { state.usedByNetwork[$0] ?? 0 } ?? 0
        if state.used + bytes > share(of: limit, priority) { return .total }
        if network != nil, networkUsed + bytes > share(of: limitPerNetwork, priority) { return .perNetwork }
        if peerUsed + bytes > share(of: limitPerPeer, priority) { return .perPeer }
        state.used += bytes
        state.usedByPeer[peer] = peerUsed + bytes
        if let network { state.usedByNetwork[network] = networkUsed + bytes }
        return nil
    }

    private static func give(_ bytes: Int, for peer: PeerID, from network: SourceNetwork?, in state: inout State) {
        guard bytes > 0 else { return }
        state.used -= bytes
        let left = (state.usedByPeer[peer] ?? 0) - bytes
        state.usedByPeer[peer] = left > 0 ? left : nil
        if let network {
            let left = (state.usedByNetwork[network] ?? 0) - bytes
            state.usedByNetwork[network] = left > 0 ? left : nil
        }
    }

    // MARK: Streams

    /// A connection whose streams will reserve; `reclaim` resets one of them
    /// (called outside the lock, from any thread: it must hop to the
    /// connection's event loop). The connection's key.
    func register(reclaim: @escaping @Sendable (UInt32) -> Void) -> UInt64 {
        state.withLock { state in
            let key = state.nextConnection
            state.nextConnection += 1
            state.reclaimers[key] = reclaim
            return key
        }
    }

    /// A new stream reserves `window`; when the total is full, idle streams of
    /// bigger holders are reclaimed for it (reset through their connection).
    func admit(
        _ key: StreamKey, window: Int, peer: PeerID, network: SourceNetwork?, now: UInt64
    ) -> Refusal? {
        let (refusal, victims) = state.withLock { state -> (Refusal?, [(@Sendable (UInt32) -> Void, UInt32)]) in
            var victims: [(@Sendable (UInt32) -> Void, UInt32)] = []
            var refusal = take(window, for: peer, from: network, priority: Self.stream, in: &state)
            // A victim frees at least its own window, so a few are enough (more would be a bug).
            while refusal == .total, victims.count < 4, now >= state.noSearchBefore {
                guard let victim = idleVictim(for: window, peer: peer, network: network, now: now, in: state) else {
                    state.noSearchBefore = now + 1_000_000_000
                    break
                }
                let entry = removeEntry(victim, in: &state)
                if let entry {
                    Self.give(entry.window + entry.queued, for: entry.peer, from: entry.network, in: &state)
                    state.reclaimedByPeer[entry.peer, default: 0] += 1
                }
                state.reclaimed += 1
                if let reclaim = state.reclaimers[victim.connection] { victims.append((reclaim, victim.stream)) }
                refusal = take(window, for: peer, from: network, priority: Self.stream, in: &state)
            }
            if let refusal {
                state.refused += 1
                return (refusal, victims)
            }
            let scopeKey = Self.scope(peer: peer, network: network)
            state.streams[key] = StreamEntry(peer: peer, network: network, window: window, lastActive: now)
            state.streamsByScope[scopeKey, default: []].insert(key)
            return (nil, victims)
        }
        // Outside the lock: the reclaimers hop to their connections' event loops.
        for (reclaim, stream) in victims { reclaim(stream) }
        return refusal
    }

    /// The stream reclaimed for a newcomer of `peer` (from `network`) needing
    /// `bytes`: the one idle longest of the biggest scope, among those holding
    /// more than the newcomer's would with it, that has one idle long enough.
    private func idleVictim(for bytes: Int, peer: PeerID, network: SourceNetwork?, now: UInt64, in state: State) -> StreamKey? {
        guard let reclaimIdleAfter else { return nil }
        let idleNanos = UInt64(max(0, reclaimIdleAfter.components.seconds)) * 1_000_000_000
            + UInt64(max(0, reclaimIdleAfter.components.attoseconds / 1_000_000_000))
        guard now >= idleNanos else { return nil }
        let idleBefore = now - idleNanos
        let own = Self.scope(peer: peer, network: network)
        let ownUsed = used(of: own, in: state) + bytes
        let bigger = state.streamsByScope.keys
            .map { ($0, used(of: $0, in: state)) }
            .filter { $0.0 != own && $0.1 > ownUsed }
            .sorted { $0.1 > $1.1 }
        for (scope, _) in bigger {
            var oldest: (StreamKey, UInt64)?
            for key in state.streamsByScope[scope] ?? [] {
                guard let entry = state.streams[key], entry.lastActive <= idleBefore else { continue }
                if oldest.map({ entry.lastActive < $0.1 }) ?? true { oldest = (key, entry.lastActive) }
            }
            if let oldest { return oldest.0 }
        }
        return nil
    }

    private func used(of scope: Scope, in state: State) -> Int {
        switch scope {
        case .network(let network): state.usedByNetwork[network] ?? 0
        case .peer(let peer): state.usedByPeer[peer] ?? 0
        }
    }

    private static func scope(peer: PeerID, network: SourceNetwork?) -> Scope {
        network.map { .network($0) } ?? .peer(peer)
    }

    private func removeEntry(_ key: StreamKey, in state: inout State) -> StreamEntry? {
        guard let entry = state.streams.removeValue(forKey: key) else { return nil }
        let scope = Self.scope(peer: entry.peer, network: entry.network)
        state.streamsByScope[scope]?.remove(key)
        if state.streamsByScope[scope]?.isEmpty == true { state.streamsByScope[scope] = nil }
        return entry
    }

    /// Reserves up to `bytes` of the stream's window growth (all or none): what may grow.
    /// Nothing for a stream not admitted or reclaimed.
    func grow(_ key: StreamKey, by bytes: Int, now: UInt64) -> Int {
        guard bytes > 0 else { return 0 }
        return state.withLock { state in
            guard var entry = state.streams[key] else { return 0 }
            entry.lastActive = now
            guard take(bytes, for: entry.peer, from: entry.network, priority: Self.growth, in: &state) == nil else {
                state.streams[key] = entry
                return 0
            }
            entry.window += bytes
            state.streams[key] = entry
            return bytes
        }
    }

    /// Gives back `bytes` of the stream's window.
    func shrink(_ key: StreamKey, by bytes: Int) {
        guard bytes > 0 else { return }
        state.withLock { state in
            guard var entry = state.streams[key] else { return }
            let given = min(bytes, entry.window)
            entry.window -= given
            state.streams[key] = entry
            Self.give(given, for: entry.peer, from: entry.network, in: &state)
        }
    }

    /// A write of `bytes` queued on the stream; refused (`.total`) for a stream reclaimed.
    func queue(_ key: StreamKey, bytes: Int, now: UInt64) -> Refusal? {
        guard bytes > 0 else { return nil }
        return state.withLock { state in
            guard var entry = state.streams[key] else { return .total }
            entry.lastActive = now
            if let refusal = take(bytes, for: entry.peer, from: entry.network, priority: Self.always, in: &state) {
                state.streams[key] = entry
                state.refused += 1
                return refusal
            }
            entry.queued += bytes
            state.streams[key] = entry
            return nil
        }
    }

    /// The stream's queue holds `bytes` now (some went out at `now`): gives back the rest.
    func queueShrank(_ key: StreamKey, to bytes: Int, now: UInt64) {
        state.withLock { state in
            guard var entry = state.streams[key] else { return }
            entry.lastActive = now
            let given = max(0, entry.queued - max(0, bytes))
            entry.queued -= given
            state.streams[key] = entry
            Self.give(given, for: entry.peer, from: entry.network, in: &state)
        }
    }

    /// A byte went either way on the stream at `now`.
    func touch(_ key: StreamKey, now: UInt64) {
        state.withLock { state in
            if state.streams[key] != nil { state.streams[key]!.lastActive = now }
        }
    }

    /// The stream is gone: everything it reserved goes back.
    func remove(_ key: StreamKey) {
        state.withLock { state in
            guard let entry = removeEntry(key, in: &state) else { return }
            Self.give(entry.window + entry.queued, for: entry.peer, from: entry.network, in: &state)
        }
    }

    /// The connection is gone: its streams' reservations go back, and its reclaimer.
    func removeConnection(_ connection: UInt64, streams: some Sequence<UInt32>) {
        state.withLock { state in
            state.reclaimers[connection] = nil
            for stream in streams {
                guard let entry = removeEntry(StreamKey(connection: connection, stream: stream), in: &state) else { continue }
                Self.give(entry.window + entry.queued, for: entry.peer, from: entry.network, in: &state)
            }
        }
    }

    /// Bytes the given streams hold reserved.
    func reserved(_ connection: UInt64, streams: some Sequence<UInt32>) -> Int {
        state.withLock { state in
            streams.reduce(0) { total, stream in
                let entry = state.streams[StreamKey(connection: connection, stream: stream)]
                return total + (entry.map { $0.window + $0.queued } ?? 0)
            }
        }
    }

    static func share(of limit: Int, _ priority: UInt8) -> Int {
        Int((Int64(limit) * (Int64(priority) + 1)) / 256)
    }
}


/// One connection's streams in a `MemoryBudget`: each reserves its receive
/// window and its queued writes, given back when it leaves (and all at
/// teardown), and says when it last carried a byte (for reclaiming idle
/// streams). Value type, owned by the stream table.
public struct StreamMemoryLedger {
    let budget: MemoryBudget?
    let peer: PeerID?
    /// The network the connection comes from, charged too (nil: none).
    let network: SourceNetwork?
    /// The connection's key in the budget.
    private let connection: UInt64
    /// Streams admitted, and the last second each was seen active (a budget
    /// update at most once a second per stream, not once a frame).
    private var lastTouched: [UInt32: UInt64] = [:]

    /// `reclaim` resets a stream the budget took back for a newcomer: called
    /// from any thread, it must hop to the connection's event loop.
    public init(
        budget: MemoryBudget?, peer: PeerID?, remoteAddress: Multiaddr? = nil,
        reclaim: @escaping @Sendable (UInt32) -> Void = { _ in }
    ) {
        self.budget = budget
        self.peer = peer
        self.network = remoteAddress.flatMap { budget?.network(of: $0) }
        self.connection = (peer != nil ? budget?.register(reclaim: reclaim) : nil) ?? 0
    }

    private func key(_ id: UInt32) -> MemoryBudget.StreamKey { .init(connection: connection, stream: id) }

    /// A new stream reserves its initial window; the refusal when it does not fit.
    mutating func admit(_ id: UInt32, window: UInt32, now: NIODeadline) -> MemoryBudget.Refusal? {
        guard let budget, let peer else { return nil }
        let nanos = now.uptimeNanoseconds
        if let refusal = budget.admit(key(id), window: Int(window), peer: peer, network: network, now: nanos) {
            return refusal
        }
        lastTouched[id] = nanos / 1_000_000_000
        return nil
    }

    /// Reserves up to `bytes` of window growth (all or none): what may grow.
    mutating func reserveGrowth(_ id: UInt32, upTo bytes: UInt32, now: NIODeadline) -> UInt32 {
        guard let budget, peer != nil else { return bytes }
        guard bytes > 0, lastTouched[id] != nil else { return 0 }
        lastTouched[id] = now.uptimeNanoseconds / 1_000_000_000
        return UInt32(budget.grow(key(id), by: Int(bytes), now: now.uptimeNanoseconds))
    }

    /// Gives back growth reserved and not used.
    mutating func unusedGrowth(_ id: UInt32, _ bytes: UInt32) {
        guard let budget, peer != nil, bytes > 0, lastTouched[id] != nil else { return }
        budget.shrink(key(id), by: Int(bytes))
    }

    /// A write of `bytes` queued on the stream; the refusal when it does not fit.
    mutating func queue(_ id: UInt32, bytes: Int, now: NIODeadline) -> MemoryBudget.Refusal? {
        guard let budget, peer != nil, bytes > 0 else { return nil }
        if lastTouched[id] != nil { lastTouched[id] = now.uptimeNanoseconds / 1_000_000_000 }
        return budget.queue(key(id), bytes: bytes, now: now.uptimeNanoseconds)
    }

    /// The stream's queue holds `bytes` now (some went out): gives back the rest.
    mutating func queueShrank(_ id: UInt32, to bytes: Int, now: NIODeadline) {
        guard let budget, peer != nil, lastTouched[id] != nil else { return }
        lastTouched[id] = now.uptimeNanoseconds / 1_000_000_000
        budget.queueShrank(key(id), to: bytes, now: now.uptimeNanoseconds)
    }

    /// Bytes arrived on the stream: it is not idle.
    mutating func touch(_ id: UInt32, now: NIODeadline) {
        guard let budget, let last = lastTouched[id] else { return }
        let second = now.uptimeNanoseconds / 1_000_000_000
        guard second != last else { return }
        lastTouched[id] = second
        budget.touch(key(id), now: now.uptimeNanoseconds)
    }

    /// The stream is gone: everything it reserved goes back.
    mutating func remove(_ id: UInt32) {
        guard let budget, lastTouched.removeValue(forKey: id) != nil else { return }
        budget.remove(key(id))
    }

    /// The connection is gone.
    mutating func removeAll() {
        guard let budget, peer != nil else { return }
        budget.removeConnection(connection, streams: lastTouched.keys)
        lastTouched = [:]
    }

    /// Bytes this connection holds reserved.
    var reserved: Int { budget?.reserved(connection, streams: lastTouched.keys) ?? 0 }
}
