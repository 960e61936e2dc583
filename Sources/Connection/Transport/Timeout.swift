import Synchronization

/// Thrown by `withTimeout` when `what` did not finish within `limit`.
public struct TimeoutError: Error, CustomStringConvertible, Sendable {
    public let what: String
    public let limit: Duration

    public init(what: String, limit: Duration) {
        self.what = what
        self.limit = limit
    }

    /// `limit` in seconds.
    public var seconds: Double { Double(limit.components.seconds) + Double(limit.components.attoseconds) / 1e18 }

    public var description: String { "\(what) timed out after \(seconds.formatted(.number.precision(.fractionLength(0...1)))) s" }
}

/// Runs `body`, but gives up after `limit`: the caller gets `TimeoutError`
/// at the deadline and `body`'s task is cancelled, without waiting for it to
/// notice (a task group would wait; an await that ignores cancellation, such
/// as a stream negotiation bounded by its own deadline, would hold the caller).
public func withTimeout<T: Sendable>(
    _ limit: Duration, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = TimeoutRace<T>()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { continuation in
            race.arm(continuation)
            // Not a child task on purpose: on time-out the caller resumes at once, and a body
            // that ignores cancellation is left to end by itself instead of holding the caller.
            let work = Task {
                do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
            }
            // Cancelled once the race is decided (`onFinish`).
            let timer = Task {
                try? await Task.sleep(for: limit)
                // The body is cancelled before the caller resumes.
                race.finish(.failure(TimeoutError(what: what, limit: limit)), first: { work.cancel() })
            }
            race.onFinish { timer.cancel() }
            race.onCancel { work.cancel() }
        }
    } onCancel: {
        race.cancel()
    }
}

/// Resumes a continuation once, with whichever result comes first.
final class TimeoutRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, Error>?
        var early: Result<T, Error>?
        var finished = false
        var cancelled = false
        var onFinish: (@Sendable () -> Void)?
        var onCancel: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    func arm(_ continuation: CheckedContinuation<T, Error>) {
        let early = state.withLock { state -> Result<T, Error>? in
            state.continuation = continuation
            return state.early
        }
        if let early { deliver(early) }
    }

    /// Delivers `result` if nothing was delivered yet, running `first` before.
    func finish(_ result: Result<T, Error>, first: () -> Void = {}) {
        let isFirst = state.withLock { state -> Bool in
            guard !state.finished else { return false }
            state.finished = true
            return true
        }
        guard isFirst else { return }
        first()
        deliver(result)
    }

    private func deliver(_ result: Result<T, Error>) {
        let (continuation, onFinish) = state.withLock { state -> (CheckedContinuation<T, Error>?, (@Sendable () -> Void)?) in
            guard let continuation = state.continuation else {
                state.early = result
                return (nil, nil)
            }
            state.continuation = nil
            defer { state.onFinish = nil }
            return (continuation, state.onFinish)
        }
        onFinish?()
        continuation?.resume(with: result)
    }

    /// Runs `action` once a result is delivered (at once if it was).
    func onFinish(_ action: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            guard state.finished, state.continuation == nil else {
                state.onFinish = action
                return false
            }
            return true
        }
        if now { action() }
    }

    /// Runs `action` if the caller is cancelled (at once if it was).
    func onCancel(_ action: @escaping @Sendable () -> Void) {
        let now = state.withLock { state -> Bool in
            state.onCancel = action
            return state.cancelled
        }
        if now { action() }
    }

    /// The caller was cancelled: the body is cancelled and the caller gets its outcome.
    func cancel() {
        let action = state.withLock { state -> (@Sendable () -> Void)? in
            state.cancelled = true
            return state.onCancel
        }
        action?()
    }
}
