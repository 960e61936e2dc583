
/// What the dialer measured, printed on stdout in the harness's format.
public struct InteropResult: Sendable, Equatable {
    /// From just before the dial until the first ping's echo came back:
    /// connection, security and muxer handshakes, and one round trip.
    public var handshakePlusOneRTT: Duration
    /// That ping's round trip (its 32 bytes out and back on the ping stream).
    public var pingRTT: Duration

    public init(handshakePlusOneRTT: Duration, pingRTT: Duration) {
        self.handshakePlusOneRTT = handshakePlusOneRTT
        self.pingRTT = pingRTT
    }

    /// The lines to print on stdout (and nothing else goes there):
    /// test-plans reads one JSON object with its keys spelled as they are
    /// (`pingRTTMilllis` has three l's), unified-testing a YAML `latency:` block.
    public func lines(for harness: InteropHarness) -> [String] {
        let handshake = Self.milliseconds(handshakePlusOneRTT)
        let ping = Self.milliseconds(pingRTT)
        switch harness {
        case .testPlans:
            return ["{\"handshakePlusOneRTTMillis\":\(handshake),\"pingRTTMilllis\":\(ping)}"]
        case .unified:
            return ["latency:", "  handshake_plus_one_rtt: \(handshake)", "  ping_rtt: \(ping)", "  unit: ms"]
        }
    }

    /// Milliseconds as a decimal number with three places (microseconds), e.g. "12.345".
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let microseconds = seconds * 1_000_000 + attoseconds / 1_000_000_000_000
        let sign = microseconds < 0 ? "-" : ""
        let magnitude = microseconds.magnitude
        let fraction = String(magnitude % 1000)
        return "\(sign)\(magnitude / 1000).\(String(repeating: "0", count: 3 - fraction.count))\(fraction)"
    }
}
