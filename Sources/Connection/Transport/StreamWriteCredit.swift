import Synchronization

/// How much a stream's writer may hand to the event loop before it waits,
/// shared by the writer's task and the connection's event loop.
///
/// A write is counted here and handed over without waiting for the event loop
/// to encrypt and send it, so the writer prepares its next chunk meanwhile (a
/// round trip per write cost more than the bytes of a 64 KiB chunk). Bytes
/// handed over and not yet processed, plus bytes Yamux still queues for lack of
/// window, stay under the limit (plus the one write being made): memory stays
/// bounded. An error (reset, closed connection) is kept and thrown by the next
/// write.
package final class StreamWriteCredit: Sendable {
    private struct State {
        /// Handed to the event loop, not yet taken into the Yamux session.
        var inFlight = 0
        /// Queued in the Yamux session, waiting for the remote's window.
        var queued = 0
        var error: TransportError?
        var waiters: [UInt64: CheckedContinuation<Void, Error>] = [:]
        var nextWaiter: UInt64 = 0
    }

    private let state = Mutex(State())
    let limit: Int
    /// A waiting writer is woken once its bytes fall to this (half the limit):
    /// it then hands over several writes per wake-up, not one.
    let resumeLevel: Int

    package init(limit: Int) {
        self.limit = limit
        self.resumeLevel = limit / 2
    }

    /// Whether a writer is parked waiting for room (tests wait for this state).
    var hasWaitingWriter: Bool { state.withLock { !$0.waiters.isEmpty } }

    // MARK: Writer side

    /// Counts `bytes` as handed over, once there is room; throws the stream's
    /// error, or `CancellationError` if the task is cancelled while waiting.
    func acquire(_ bytes: Int) async throws {
        while true {
            let waiter: UInt64? = try state.withLock { state throws(TransportError) -> UInt64? in
                if let error = state.error { throw error }
                guard state.inFlight + state.queued >= limit else {
                    state.inFlight += bytes
                    return nil
                }
                state.nextWaiter += 1
                return state.nextWaiter
            }
            guard let id = waiter else { return }
            try await wait(id)
        }
    }

    private func wait(_ id: UInt64) async throws {
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, Error>) in
                let ready: Result<Bool, TransportError> = state.withLock { state in
                    if let error = state.error { return .failure(error) }
                    if state.inFlight + state.queued < limit { return .success(true) }
                    state.waiters[id] = continuation
                    return .success(false)
                }
                switch ready {
                case .success(true): continuation.resume()
                case .success(false):
                    // Cancelled before the waiter was installed: the handler found nothing to end.
                    if Task.isCancelled { resume(id, throwing: CancellationError()) }
                case .failure(let error): continuation.resume(throwing: error)
                }
            }
        } onCancel: {
            resume(id, throwing: CancellationError())
        }
    }

    private func resume(_ id: UInt64, throwing error: Error) {
        let waiter = state.withLock { $0.waiters.removeValue(forKey: id) }
        waiter?.resume(throwing: error)
    }

    /// The error that ended the stream for writing, if any.
    var error: TransportError? { state.withLock { $0.error } }

    // MARK: Event loop side

    /// A write of `bytes` was taken into the session, which now queues `queued` bytes of the stream.
    package func processed(_ bytes: Int, queued: Int) {
        update { state in
            state.inFlight -= bytes
            state.queued = queued
        }
    }

    /// The stream's queue changed (the remote opened its window).
    package func queuedChanged(_ queued: Int) {
        update { $0.queued = queued }
    }

    private func update(_ change: (inout State) -> Void) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Error>] in
            change(&state)
            guard state.inFlight + state.queued <= resumeLevel, !state.waiters.isEmpty else { return [] }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume() }
    }

    /// The stream takes no more writes: every later write throws `error` (the first error stays).
    package func fail(_ error: TransportError) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Error>] in
            if state.error == nil { state.error = error }
            defer { state.waiters = [:] }
            return Array(state.waiters.values)
        }
        for waiter in waiters { waiter.resume(throwing: error) }
    }

    /// Whether writers are waiting (the stream must not be forgotten yet).
    var hasWaiters: Bool { state.withLock { !$0.waiters.isEmpty } }
}
