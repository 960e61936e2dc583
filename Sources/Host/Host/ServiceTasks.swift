import Synchronization
import Transport

/// The work a protocol service started: its background tasks and the inbound
/// streams its handlers are serving. The service's `stop()` calls `stop()`
/// here after removing its stream handlers, and returns once everything the
/// service started has ended.
///
/// Each piece of work runs in a task this set owns: `stop` resets the streams
/// being served (a handler blocked on a read or a write sees the reset),
/// cancels every task and awaits them all. A set once stopped takes no more
/// work: a stream that arrives between the handler's removal and `stop` is
/// reset, and `spawn` refuses.
public final class ServiceTasks: Sendable {
    private struct State {
        var stopped = false
        var nextID: UInt64 = 0
        var tasks: [UInt64: Task<Void, Never>] = [:]
        var streams: [UInt64: MuxedStream] = [:]
    }
    private let state = Mutex(State())

    public init() {}

    /// Tasks running (background work and streams being served).
    public var running: Int { state.withLock { $0.tasks.count } }

    /// Whether `stop` was called.
    public var isStopped: Bool { state.withLock { $0.stopped } }

    /// Runs `body` in a task of the set (ended by `stop`); false, and `body`
    /// does not run, once the set is stopped.
    @discardableResult
    public func spawn(_ body: @escaping @Sendable () async -> Void) -> Bool {
        start(serving: nil, body) != nil
    }

    /// Serves `stream` with `body` in a task of the set and returns when it is
    /// done: call it from the stream handler. `stop` resets the stream and
    /// cancels the task. Once the set is stopped the stream is reset at once.
    public func serve(_ stream: MuxedStream, _ body: @escaping @Sendable (MuxedStream) async -> Void) async {
        guard let task = start(serving: stream, { await body(stream) }) else {
            stream.reset()
            return
        }
        await task.value
    }

    /// Refuses new work, resets the streams being served, cancels every task
    /// and returns once all of them have ended.
    public func stop() async {
        let (tasks, streams) = state.withLock { state in
            state.stopped = true
            return (Array(state.tasks.values), Array(state.streams.values))
        }
        for stream in streams { stream.reset() }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    private func start(serving stream: MuxedStream?, _ body: @escaping @Sendable () async -> Void) -> Task<Void, Never>? {
        state.withLock { state in
            guard !state.stopped else { return nil }
            let id = state.nextID
            state.nextID += 1
            // Owned by this set: `stop` cancels and awaits it. Made under the
            // lock, so it is in `tasks` before it can remove itself.
            let task = Task {
                await body()
                self.finished(id)
            }
            state.tasks[id] = task
            if let stream { state.streams[id] = stream }
            return task
        }
    }

    private func finished(_ id: UInt64) {
        state.withLock { state in
            state.tasks[id] = nil
            state.streams[id] = nil
        }
    }
}
