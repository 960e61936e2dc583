import Synchronization

/// Hands every event to each current subscriber, as its own `AsyncStream`.
///
/// - A subscriber sees the events yielded after it subscribed, in the order
///   they were yielded (delivery is serialized, so two emitters on different
///   threads never reach two subscribers in different orders).
/// - No lock is held while a stream is handed an event or finished. Handing
///   over resumes the consumer's task, which takes that task's status lock;
///   cancelling the task holds that lock while the stream's termination
///   handler takes ours. Holding ours across the hand-over deadlocked (one
///   thread in each order): so events queue, and whichever emitter finds
///   no delivery under way delivers the queue, outside the lock.
/// - A subscriber is removed when its stream terminates (its consumer was
///   cancelled or dropped the stream).
/// - `finish()` ends every stream; a subscription after it gets a stream that
///   is already finished, so that nobody waits for events that cannot come.
/// - Slow subscribers: each stream buffers at most `bufferingNewest` events;
///   when it is full, the oldest buffered event is dropped (counted in
///   `droppedEvents`). Emitters never wait for a subscriber, and memory stays
///   bounded however slow it is.
public final class EventBroadcaster<Event: Sendable>: Sendable {
    private struct Subscriber {
        let continuation: AsyncStream<Event>.Continuation
        /// Events numbered above this were yielded after it subscribed.
        let since: UInt64
    }
    private enum Delivery {
        case event(Event, number: UInt64)
        case finish
    }
    private struct State {
        var subscribers: [UInt64: Subscriber] = [:]
        var nextID: UInt64 = 0
        /// The number of the last event yielded.
        var lastEvent: UInt64 = 0
        /// What waits to be delivered, in order, and whether someone delivers it now.
        var queue: [Delivery] = []
        var delivering = false
        var finished = false
        var dropped = 0

        /// Claims the delivery if nobody has it; whether the caller now delivers.
        mutating func startDelivering() -> Bool {
            guard !delivering else { return false }
            delivering = true
            return true
        }
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
            state.subscribers[state.nextID] = Subscriber(continuation: continuation, since: state.lastEvent)
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

    /// Gives `event` to every subscriber (ignored after `finish`). Never waits:
    /// if another thread is delivering, it delivers this event too.
    public func yield(_ event: Event) {
        let deliver = state.withLock { state -> Bool in
            guard !state.finished else { return false }
            state.lastEvent += 1
            state.queue.append(.event(event, number: state.lastEvent))
            return state.startDelivering()
        }
        if deliver { deliverQueue() }
    }

    /// Ends every subscriber's stream (after the events yielded before), now
    /// and for later subscriptions.
    public func finish() {
        let deliver = state.withLock { state -> Bool in
            guard !state.finished else { return false }
            state.finished = true
            state.queue.append(.finish)
            return state.startDelivering()
        }
        if deliver { deliverQueue() }
    }

    /// Delivers the queue, outside the lock, until it is empty.
    private func deliverQueue() {
        while true {
            let next = state.withLock { state -> (Delivery, [Subscriber])? in
                guard !state.queue.isEmpty else {
                    state.delivering = false
                    return nil
                }
                let delivery = state.queue.removeFirst()
                let subscribers = Array(state.subscribers.values)
                if case .finish = delivery { state.subscribers = [:] }
                return (delivery, subscribers)
            }
            guard let (delivery, subscribers) = next else { return }
            switch delivery {
            case .event(let event, let number):
                var dropped = 0
                for subscriber in subscribers where subscriber.since < number {
                    if case .dropped = subscriber.continuation.yield(event) { dropped += 1 }
                }
                if dropped > 0 { state.withLock { $0.dropped += dropped } }
            case .finish:
                // Finishing runs `onTermination`, which takes the lock.
                for subscriber in subscribers { subscriber.continuation.finish() }
            }
        }
    }

    /// Subscribers whose stream has not terminated.
    public var subscriberCount: Int { state.withLock { $0.subscribers.count } }

    /// Events dropped from full subscriber buffers so far (all subscribers together).
    public var droppedEvents: Int { state.withLock { $0.dropped } }

    /// Whether `finish()` was called.
    public var isFinished: Bool { state.withLock { $0.finished } }
}
