import Synchronization

/// Hands every event to each current subscriber, as its own `AsyncStream`.
///
/// - A subscriber sees the events yielded after it subscribed, in the order
///   they were yielded (yielding is serialized, so two emitters on different
///   threads never reach two subscribers in different orders).
/// - A subscriber is removed when its stream terminates (its consumer was
///   cancelled or dropped the stream).
/// - `finish()` ends every stream; a subscription after it gets a stream that
///   is already finished, so that nobody waits for events that cannot come.
/// - Slow subscribers: each stream buffers at most `bufferingNewest` events;
///   when it is full, the oldest buffered event is dropped (counted in
///   `droppedEvents`). Emitters never wait for a subscriber, and memory stays
///   bounded however slow it is.
public final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct State {
        var subscribers: [UInt64: AsyncStream<Event>.Continuation] = [:]
        var nextID: UInt64 = 0
        var finished = false
        var dropped = 0
    }
    private let state = Mutex(State())
    /// Events buffered per subscriber unless a subscription says otherwise.
    public let bufferingNewest: Int

    public init(bufferingNewest: Int) {
        precondition(bufferingNewest > 0, "a subscriber must be able to buffer an event")
        self.bufferingNewest = bufferingNewest
    }

    /// A stream of the events from now on, buffering at most `limit` (the
    /// broadcaster's `bufferingNewest` when nil) unread events.
    public func subscribe(bufferingNewest limit: Int? = nil) -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: Event.self, bufferingPolicy: .bufferingNewest(max(1, limit ?? bufferingNewest)))
        let id = state.withLock { state -> UInt64? in
            guard !state.finished else { return nil }
            state.nextID += 1
            state.subscribers[state.nextID] = continuation
            return state.nextID
        }
        guard let id else {
            continuation.finish()
            return stream
        }
        // Set after registering: a stream terminated in between still finds its entry to remove.
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Gives `event` to every subscriber (ignored after `finish`).
    public func yield(_ event: Event) {
        // `yield` never calls back into us (only finishing or cancelling runs
        // `onTermination`), so holding the lock cannot deadlock.
        state.withLock { state in
            for subscriber in state.subscribers.values {
                if case .dropped = subscriber.yield(event) { state.dropped += 1 }
            }
        }
    }

    /// Ends every subscriber's stream, now and for later subscriptions.
    public func finish() {
        let subscribers = state.withLock { state in
            state.finished = true
            defer { state.subscribers = [:] }
            return Array(state.subscribers.values)
        }
        // Outside the lock: finishing runs `onTermination`, which takes it.
        for subscriber in subscribers { subscriber.finish() }
    }

    /// Subscribers whose stream has not terminated.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Events dropped from full subscriber buffers so far (all subscribers together).
    public var droppedEvents: Int { state.withLock { $0.dropped } }

    /// Whether `finish()` was called.
    public var isFinished: Bool { state.withLock { $0.finished } }
}
