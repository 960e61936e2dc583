/// Spaces out a burst of publishes, sans-IO: up to `burst` go at once, the
/// rest one every `interval` (a generic cell rate algorithm).
///
/// go-libp2p-pubsub puts every received message in a validation queue of 32
/// and drops what does not fit (`message validation throttled: queue full`):
/// 100 lines pasted into a chat at once reached a go peer as 31 to 52. At
/// the default rate (16 at once, then one per 5 ms, 200 a second) its
/// validation workers empty the queue between two messages.
public struct PublishPacer: Sendable {
    public let burst: Int
    public let interval: Duration
    /// When the next publish would be due if none went early (the "theoretical arrival time").
    private var due: ContinuousClock.Instant

    public init(burst: Int = 16, interval: Duration = .milliseconds(5), now: ContinuousClock.Instant) {
        precondition(burst >= 1 && interval >= .zero, "a pacer needs a burst of at least 1 and a non-negative interval")
        self.burst = burst
        self.interval = interval
        self.due = now
    }

    /// Takes the next slot: how long to wait before publishing (zero within the burst).
    public mutating func reserve(now: ContinuousClock.Instant) -> Duration {
        if due < now { due = now }
        let early = interval * (burst - 1)
        let wait = due - now > early ? due - now - early : .zero
        due += interval
        return wait
    }
}
