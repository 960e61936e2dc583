import Synchronization

/// The RPCs waiting to go to one peer, bounded: when full, new RPCs are dropped
/// (and counted by the caller), so a slow or stuck peer never makes us grow.
///
/// The sending task takes everything queued at once and writes it as one
/// buffer: RPCs produced together (an IDONTWANT and the message it precedes,
/// GRAFTs and gossip of one heartbeat) cost one write, not one each.
final class RPCOutbox: Sendable {
    private struct State {
        var queued: [OutboundRPC] = []
        var finished = false
        var waiter: CheckedContinuation<[OutboundRPC]?, Never>?
    }

    private let state = Mutex(State())
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Queues `rpc`; false when the queue is full (or finished) and it was dropped.
    func enqueue(_ rpc: OutboundRPC) -> Bool {
        let (accepted, waiter) = state.withLock { state -> (Bool, CheckedContinuation<[OutboundRPC]?, Never>?) in
            guard !state.finished, state.queued.count < limit else { return (false, nil) }
            if let waiter = state.waiter {
                state.waiter = nil
                return (true, waiter)
            }
            state.queued.append(rpc)
            return (true, nil)
        }
        waiter?.resume(returning: [rpc])
        return accepted
    }

    /// No more RPCs: the sender gets what is queued, then nil.
    func finish() {
        let waiter = state.withLock { state -> CheckedContinuation<[OutboundRPC]?, Never>? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: nil)
    }

    /// Whether the sender is parked in `next()`, and how many RPCs wait for it
    /// (what the queue's tests wait for).
    var snapshot: (senderWaiting: Bool, queued: Int) {
        state.withLock { ($0.waiter != nil, $0.queued.count) }
    }

    /// Everything queued (waiting while nothing is), or nil once finished and drained.
    func next() async -> [OutboundRPC]? {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> [OutboundRPC]?? in
                if !state.queued.isEmpty {
                    defer { state.queued.removeAll(keepingCapacity: true) }
                    return .some(state.queued)
                }
                if state.finished { return .some(nil) }
                state.waiter = continuation
                return .none
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
