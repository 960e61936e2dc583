import Identity
import Synchronization
import Transport

/// The inbound pubsub streams (one per peer, and the one it replaced while that
/// drains) and the bytes their RPCs in transit reserve. Lock-guarded, as
/// `RPCOutbox` is on the way out: a read loop accounts for an arriving RPC
/// without crossing into `PubSubCore`, which it enters once per RPC, to hand
/// it over. The core's heartbeat expires what is overdue.
final class InboundRPCBudget: Sendable {
    /// A peer's inbound stream and its RPC in transit, if any.
    struct Entry {
        let slot: UInt64
        let stream: MuxedStream
        /// When the RPC in transit started arriving.
        var rpcStarted: ContinuousClock.Instant?
        /// Bytes the RPC in transit announced (reserved from the shared budget).
        var reserved = 0
        var timedOut = false
        /// Set once a newer stream replaced this one: read until then.
        var drainUntil: ContinuousClock.Instant?
    }

    private struct State {
        var current: [PeerID: Entry] = [:]
        var draining: [PeerID: Entry] = [:]
        var nextSlot: UInt64 = 0
        /// Bytes reserved by RPCs in transit, all peers together.
        var pendingBytes = 0
        var replacedStreams = 0
        var refusedOverBudget = 0
        var incompleteTimeouts = 0
        var stopped = false
    }

    private let state = Mutex(State())
    private let maxPendingBytes: Int
    private let drainTime: Duration
    private let completionTimeout: Duration
    /// The host's memory budget: RPCs in transit reserve there too (their
    /// bytes left the stream's window when the reader took them).
    private let memory: MemoryBudget?
    private let clock = ContinuousClock()

    init(configuration: PubSubConfiguration, memory: MemoryBudget?) {
        self.maxPendingBytes = configuration.maxPendingRPCBytes
        self.drainTime = configuration.replacedStreamDrainTime
        self.completionTimeout = configuration.rpcCompletionTimeout
        self.memory = memory
    }

    /// Makes `stream` its peer's inbound stream; the one it replaces drains
    /// (the peer may have sent on it just before moving to another connection),
    /// and one already draining is reset. Returns the stream's slot and whether
    /// it replaced another, or nil once stopped.
    func adopt(_ stream: MuxedStream) -> (slot: UInt64, replaced: Bool)? {
        let peer = stream.remotePeer
        let now = clock.now
        let (adopted, toReset) = state.withLock { state -> ((UInt64, Bool)?, [MuxedStream]) in
            guard !state.stopped else { return (nil, []) }
            state.nextSlot += 1
            var toReset: [MuxedStream] = []
            let replaced = state.current[peer] != nil
            if var previous = state.current[peer] {
                if let older = state.draining.removeValue(forKey: peer) {
                    unreserve(older.reserved, peer: peer, &state)
                    toReset.append(older.stream)
                }
                previous.drainUntil = now + drainTime
                state.draining[peer] = previous
                state.replacedStreams += 1
            }
            state.current[peer] = Entry(slot: state.nextSlot, stream: stream)
            toReset += expireDrained(now: now, &state)
            return ((state.nextSlot, replaced), toReset)
        }
        for stream in toReset { stream.reset() }
        return adopted
    }

    /// The stream of `slot` ended; true if it was still the peer's current
    /// one (not replaced, nor draining).
    @discardableResult
    func release(_ slot: UInt64, peer: PeerID) -> Bool {
        state.withLock { state in
            if let entry = state.current[peer], entry.slot == slot {
                unreserve(entry.reserved, peer: peer, &state)
                state.current[peer] = nil
                return true
            }
            if let entry = state.draining[peer], entry.slot == slot {
                unreserve(entry.reserved, peer: peer, &state)
                state.draining[peer] = nil
            }
            return false
        }
    }

    /// The first bytes of an RPC arrived on the stream of `slot`: it must be whole within the completion timeout.
    func rpcStarted(_ slot: UInt64, peer: PeerID) {
        let now = clock.now
        state.withLock { state in update(slot, peer: peer, &state) { $0.rpcStarted = now } }
    }

    /// Reserves an arriving RPC's announced length from the shared budget and
    /// the host's; throws when it does not fit.
    func reserve(_ bytes: Int, _ slot: UInt64, peer: PeerID) throws(PubSubError) {
        try state.withLock { (state) throws(PubSubError) in
            try updateEntry(slot, peer: peer, &state) { (entry, state) throws(PubSubError) in
                let available = maxPendingBytes - state.pendingBytes
                guard bytes <= available else {
                    state.refusedOverBudget += 1
                    throw .rpcBudgetExceeded(announced: bytes, available: available)
                }
                guard memory?.reserve(bytes, for: peer, priority: MemoryBudget.always) == nil else {
                    // The host's memory budget has no room for it (for this peer or in all).
                    state.refusedOverBudget += 1
                    throw .rpcBudgetExceeded(announced: bytes, available: 0)
                }
                state.pendingBytes += bytes
                entry.reserved = bytes
            }
        }
    }

    /// The RPC in transit on the stream of `slot` is whole: its reservation goes back.
    func rpcFinished(_ slot: UInt64, peer: PeerID) {
        state.withLock { state in
            updateEntry(slot, peer: peer, &state) { entry, state in
                unreserve(entry.reserved, peer: peer, &state)
                entry.reserved = 0
                entry.rpcStarted = nil
            }
        }
    }

    /// Resets the streams whose RPC in transit is overdue and the replaced ones
    /// whose drain time is over (their readers then end); the peers whose RPC was overdue.
    func expire() -> [PeerID] {
        let now = clock.now
        let cutoff = now - completionTimeout
        let (late, toReset) = state.withLock { state -> ([PeerID], [MuxedStream]) in
            func overdue(_ entry: Entry) -> Bool {
                guard !entry.timedOut, let started = entry.rpcStarted else { return false }
                return started < cutoff
            }
            var late: [PeerID] = []
            var toReset: [MuxedStream] = []
            for (peer, var entry) in state.current where overdue(entry) {
                entry.timedOut = true
                state.current[peer] = entry
                late.append(peer)
                toReset.append(entry.stream)
            }
            for (peer, var entry) in state.draining where overdue(entry) {
                entry.timedOut = true
                state.draining[peer] = entry
                late.append(peer)
                toReset.append(entry.stream)
            }
            state.incompleteTimeouts += late.count
            return (late, toReset + expireDrained(now: now, &state))
        }
        for stream in toReset { stream.reset() }
        return late
    }

    /// No more streams: everything reserved goes back and every stream is reset.
    func stop() {
        let streams = state.withLock { state -> [MuxedStream] in
            state.stopped = true
            let entries = Array(state.current.values) + Array(state.draining.values)
            for entry in entries { unreserve(entry.reserved, peer: entry.stream.remotePeer, &state) }
            state.current = [:]
            state.draining = [:]
            return entries.map(\.stream)
        }
        for stream in streams { stream.reset() }
    }

    /// Inbound streams (current and draining) and the bytes reserved by RPCs still arriving.
    var usage: (streams: Int, pendingRPCBytes: Int) {
        state.withLock { ($0.current.count + $0.draining.count, $0.pendingBytes) }
    }

    /// Streams replaced, RPCs refused over the budget, RPCs not finished in time.
    var counts: (replaced: Int, refusedOverBudget: Int, incompleteTimeouts: Int) {
        state.withLock { ($0.replacedStreams, $0.refusedOverBudget, $0.incompleteTimeouts) }
    }

    // MARK: Under the lock

    /// Changes the entry of `slot`, current or draining (nothing if it is gone).
    private func update<Failure: Error>(
        _ slot: UInt64, peer: PeerID, _ state: inout State, _ change: (inout Entry) throws(Failure) -> Void
    ) throws(Failure) {
        try updateEntry(slot, peer: peer, &state) { (entry, _) throws(Failure) in try change(&entry) }
    }

    private func updateEntry<Failure: Error>(
        _ slot: UInt64, peer: PeerID, _ state: inout State, _ change: (inout Entry, inout State) throws(Failure) -> Void
    ) throws(Failure) {
        if var entry = state.current[peer], entry.slot == slot {
            try change(&entry, &state)
            state.current[peer] = entry
        } else if var entry = state.draining[peer], entry.slot == slot {
            try change(&entry, &state)
            state.draining[peer] = entry
        }
    }

    private func unreserve(_ bytes: Int, peer: PeerID, _ state: inout State) {
        state.pendingBytes -= bytes
        memory?.release(bytes, for: peer)
    }

    /// Drops the replaced streams whose drain time is over; the streams to reset.
    private func expireDrained(now: ContinuousClock.Instant, _ state: inout State) -> [MuxedStream] {
        var toReset: [MuxedStream] = []
        for (peer, entry) in state.draining where (entry.drainUntil ?? now) <= now {
            unreserve(entry.reserved, peer: peer, &state)
            state.draining[peer] = nil
            toReset.append(entry.stream)
        }
        return toReset
    }
}
