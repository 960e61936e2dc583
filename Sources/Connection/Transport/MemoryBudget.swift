import Identity
import Multiformats
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

    private struct State {
        var used = 0
        var usedByPeer: [PeerID: Int] = [:]
        var usedByNetwork: [SourceNetwork: Int] = [:]
        var refused = 0
    }
    private let state = Mutex(State())

    /// `limitPerNetwork` nil: the whole limit (no network share).
    public init(limit: Int, limitPerPeer: Int, limitPerNetwork: Int? = nil, limitLoopback: Bool = false) {
        self.limit = max(0, limit)
        self.limitPerPeer = max(0, min(limitPerPeer, limit))
        self.limitPerNetwork = max(0, min(limitPerNetwork ?? limit, limit))
        self.limitLoopback = limitLoopback
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
            let peerUsed = state.usedByPeer[peer] ?? 0
            let networkUsed = network.map { state.usedByNetwork[$0] ?? 0 } ?? 0
            let refusal: Refusal?
            if state.used + bytes > Self.share(of: limit, priority) {
                refusal = .total
            } else if network != nil, networkUsed + bytes > Self.share(of: limitPerNetwork, priority) {
                refusal = .perNetwork
            } else if peerUsed + bytes > Self.share(of: limitPerPeer, priority) {
                refusal = .perPeer
            } else {
                refusal = nil
            }
            if refusal != nil {
                if counted { state.refused += 1 }
                return refusal
            }
            state.used += bytes
            state.usedByPeer[peer] = peerUsed + bytes
            if let network { state.usedByNetwork[network] = networkUsed + bytes }
            return nil
        }
    }

    /// Gives back `bytes` reserved for `peer` (from `network`, as reserved).
    public func release(_ bytes: Int, for peer: PeerID, from network: SourceNetwork? = nil) {
        guard bytes > 0 else { return }
        state.withLock { state in
            state.used -= bytes
            let left = (state.usedByPeer[peer] ?? 0) - bytes
            state.usedByPeer[peer] = left > 0 ? left : nil
            if let network {
                let left = (state.usedByNetwork[network] ?? 0) - bytes
                state.usedByNetwork[network] = left > 0 ? left : nil
            }
        }
    }

    static func share(of limit: Int, _ priority: UInt8) -> Int {
        Int((Int64(limit) * (Int64(priority) + 1)) / 256)
    }
}

/// One connection's reservations in a `MemoryBudget`, per stream, so that a
/// stream's are given back when it leaves (and all at teardown). Value type,
/// owned by the stream table.
public struct StreamMemoryLedger {
    let budget: MemoryBudget?
    let peer: PeerID?
    /// The network the connection comes from, charged too (nil: none).
    let network: SourceNetwork?
    /// Reserved per stream: its receive window, and its queued writes.
    private var windows: [UInt32: Int] = [:]
    private var queued: [UInt32: Int] = [:]

    public init(budget: MemoryBudget?, peer: PeerID?, remoteAddress: Multiaddr? = nil) {
        self.budget = budget
        self.peer = peer
        self.network = remoteAddress.flatMap { budget?.network(of: $0) }
    }

    /// A new stream reserves its initial window; the refusal when it does not fit.
    mutating func admit(_ id: UInt32, window: UInt32) -> MemoryBudget.Refusal? {
        guard let budget, let peer else { return nil }
        if let refusal = budget.reserve(Int(window), for: peer, from: network, priority: MemoryBudget.stream) { return refusal }
        windows[id, default: 0] += Int(window)
        return nil
    }

    /// Reserves up to `bytes` of window growth (all or none): what may grow.
    mutating func reserveGrowth(_ id: UInt32, upTo bytes: UInt32) -> UInt32 {
        guard let budget, let peer else { return bytes }
        guard bytes > 0, windows[id] != nil,
            budget.reserve(Int(bytes), for: peer, from: network, priority: MemoryBudget.growth, counted: false) == nil
        else { return 0 }
        windows[id, default: 0] += Int(bytes)
        return bytes
    }

    /// Gives back growth reserved and not used.
    mutating func unusedGrowth(_ id: UInt32, _ bytes: UInt32) {
        guard let budget, let peer, bytes > 0, let reserved = windows[id] else { return }
        windows[id] = reserved - Int(bytes)
        budget.release(Int(bytes), for: peer, from: network)
    }

    /// A write of `bytes` queued on the stream; the refusal when it does not fit.
    mutating func queue(_ id: UInt32, bytes: Int) -> MemoryBudget.Refusal? {
        guard let budget, let peer else { return nil }
        if let refusal = budget.reserve(bytes, for: peer, from: network, priority: MemoryBudget.always) { return refusal }
        queued[id, default: 0] += bytes
        return nil
    }

    /// The stream's queue holds `bytes` now (some went out): gives back the rest.
    mutating func queueShrank(_ id: UInt32, to bytes: Int) {
        guard let budget, let peer, let reserved = queued[id], reserved > bytes else { return }
        queued[id] = bytes > 0 ? bytes : nil
        budget.release(reserved - bytes, for: peer, from: network)
    }

    /// The stream is gone: everything it reserved goes back.
    mutating func remove(_ id: UInt32) {
        guard let budget, let peer else { return }
        let total = (windows.removeValue(forKey: id) ?? 0) + (queued.removeValue(forKey: id) ?? 0)
        budget.release(total, for: peer, from: network)
    }

    /// The connection is gone.
    mutating func removeAll() {
        guard let budget, let peer else { return }
        let total = windows.values.reduce(0, +) + queued.values.reduce(0, +)
        windows = [:]
        queued = [:]
        budget.release(total, for: peer, from: network)
    }

    /// Bytes this connection holds reserved.
    var reserved: Int { windows.values.reduce(0, +) + queued.values.reduce(0, +) }
}
