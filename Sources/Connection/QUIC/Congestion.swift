/// NewReno congestion control of RFC 9002 §7, counted in bytes: slow start,
/// congestion avoidance, and one halving per recovery period.
public struct NewReno: Sendable, Equatable {
    public let maxDatagramSize: Int
    public private(set) var window: Int
    public private(set) var slowStartThreshold = Int.max
    /// Bytes of ack-eliciting packets sent and neither acknowledged, lost nor discarded.
    public private(set) var bytesInFlight = 0
    /// Packets sent before this moment belong to the recovery period that began then.
    private var recoveryStart: ContinuousClock.Instant?

    public init(maxDatagramSize: Int = 1200) {
        self.maxDatagramSize = maxDatagramSize
        // kInitialWindow: ten datagrams, at most max(14 720, two datagrams).
        window = min(10 * maxDatagramSize, max(14720, 2 * maxDatagramSize))
    }

    public var minimumWindow: Int { 2 * maxDatagramSize }

    /// Whether an ack-eliciting packet may go out now (one may overshoot the window).
    public var canSend: Bool { bytesInFlight < window }

    public mutating func sent(_ bytes: Int) {
        bytesInFlight += bytes
    }

    public mutating func acknowledged(_ bytes: Int, sentAt: ContinuousClock.Instant) {
        bytesInFlight = max(0, bytesInFlight - bytes)
        // Packets from before the recovery began do not grow the window (§7.3.2).
        if let recoveryStart, sentAt <= recoveryStart { return }
        if window < slowStartThreshold {
            window += bytes
        } else {
            window += max(1, maxDatagramSize * bytes / window)
        }
    }

    /// Packets declared lost, the newest sent at `newestSentAt`: one halving per recovery period (§7.3.2).
    public mutating func lost(_ bytes: Int, newestSentAt: ContinuousClock.Instant, now: ContinuousClock.Instant) {
        bytesInFlight = max(0, bytesInFlight - bytes)
        if let recoveryStart, newestSentAt <= recoveryStart { return }
        recoveryStart = now
        slowStartThreshold = max(window / 2, minimumWindow)
        window = slowStartThreshold
    }

    /// Packets no longer counted (their space discarded, or resent after a probe timeout).
    public mutating func forget(_ bytes: Int) {
        bytesInFlight = max(0, bytesInFlight - bytes)
    }
}
