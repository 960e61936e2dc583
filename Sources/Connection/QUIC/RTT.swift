/// Round-trip time estimation of RFC 9002 §5, and the probe timeout it gives (§6.2.1).
public struct RTTEstimator: Sendable, Equatable {
    public private(set) var latest: Duration?
    public private(set) var minimum: Duration?
    public private(set) var smoothed: Duration
    public private(set) var variance: Duration

    /// Before any sample: kInitialRtt (333 ms) and half of it as the variance.
    public init(initial: Duration = .milliseconds(333)) {
        smoothed = initial
        variance = initial / 2
    }

    /// A sample from a newly acknowledged, ack-eliciting largest packet.
    /// `ackDelay` is what the peer reported (already capped at its max_ack_delay
    /// once the handshake is confirmed), 0 for Initial and Handshake ACKs.
    public mutating func update(sample: Duration, ackDelay: Duration) {
        latest = sample
        guard let minimum else {
            self.minimum = sample
            smoothed = sample
            variance = sample / 2
            return
        }
        self.minimum = min(minimum, sample)
        // The peer's delay is subtracted only where that leaves at least the minimum RTT.
        let adjusted = sample >= minimum + ackDelay ? sample - ackDelay : sample
        let deviation = smoothed > adjusted ? smoothed - adjusted : adjusted - smoothed
        variance = variance * 3 / 4 + deviation / 4
        smoothed = smoothed * 7 / 8 + adjusted / 8
    }

    /// smoothed + max(4 × variance, 1 ms) + the peer's max_ack_delay (application space only).
    public func probeTimeout(maxAckDelay: Duration) -> Duration {
        smoothed + max(variance * 4, .milliseconds(1)) + maxAckDelay
    }
}
