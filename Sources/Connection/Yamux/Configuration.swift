import NIOCore

/// A `YamuxSession.Configuration` value that breaks a constraint.
public enum YamuxConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// Streams start with the spec's 256 KiB window; a smaller one cannot be announced.
    case initialWindowBelowDefault(UInt32, minimum: UInt32)
    case maxStreamWindowBelowInitialWindow(UInt32, initialWindow: UInt32)
    /// The named value must be above zero.
    case notPositive(String, Double)
    /// A time span or count is below zero.
    case negative

    public var description: String {
        switch self {
        case .initialWindowBelowDefault(let window, let minimum):
            return "yamux initialWindow \(window) is below the protocol's initial window of \(minimum) bytes"
        case .maxStreamWindowBelowInitialWindow(let window, let initial):
            return "yamux maxStreamWindow \(window) is below initialWindow \(initial)"
        case .notPositive(let name, let value): return "yamux \(name) must be above zero, is \(value)"
        case .negative: return "yamux time spans and startRTTPings must not be negative"
        }
    }
}

extension YamuxSession {
    /// Windows, limits and timing of a session.
    public struct Configuration: Sendable {
        /// Per-stream receive window at the start (and the spec's initial send window).
        public var initialWindow: UInt32 = 256 * 1024
        /// A stream whose reader keeps up has its receive window doubled at a
        /// grant, up to this: one stream can then fill a fast long link, while a
        /// stream nobody reads never holds more than `initialWindow`. With a
        /// clock (`now` given), it doubles only when the window limits the
        /// stream (see `growthRoundTrips`).
        public var maxStreamWindow: UInt32 = 8 * 1024 * 1024
        /// Bound on the growth of all streams' windows together (beyond
        /// `initialWindow` each): what a peer can make one session buffer.
        public var maxSessionWindowGrowth: UInt32 = 32 * 1024 * 1024
        /// Concurrent streams; inbound SYNs beyond it are refused with RST.
        public var maxStreams: Int = 512
        /// Largest data frame we send.
        public var maxFramePayload: Int = 128 * 1024
        /// A window doubles only if its reader consumed a whole window (measured
        /// over a whole one, so a burst that was already buffered does not count
        /// as speed) in fewer round trips than this. A stream limited by its
        /// window consumes a window per round trip and a bit (about 4/3 of one,
        /// as grants go at half a window), so it grows; one limited by the link
        /// or the reader does not, and its window ends between 3 and 6
        /// bandwidth-delay products: enough for full speed, while what waits in
        /// socket buffers ahead of a ping stays a few round trips' worth.
        public var growthRoundTrips: Double = 3
        /// A window also doubles while its reader empties one faster than
        /// this, whatever the round trip. Off (zero) by default: the queueing
        /// delay it buys is this much time's worth of data ahead of every other
        /// frame on the connection. Bulk-transfer hosts on fast links can set it:
        /// with a round trip of microseconds (loopback, a LAN) the reader's own
        /// scheduling, not the network, paces the grants, and round-trip-sized
        /// windows idle the sender (on two shared cores, 1 ms gives back the
        /// loopback throughput of unbounded windows, and their ping delay).
        public var growthTimeFloor: Duration = .zero
        /// While a stream has the session to itself (no other stream received
        /// data for `soloQuietSpan`), its window also doubles while its reader
        /// empties one faster than this: a lone bulk transfer gets loopback
        /// and fast-LAN throughput (on these links the reader's scheduling,
        /// not the network, paces the grants). Once another stream receives
        /// data, the growth made while alone is taken back (grants are withheld
        /// until it is gone; the round-trip rule then grows what it needs), so
        /// that stream's frames do not wait behind it. Zero: off.
        public var soloGrowthTimeFloor: Duration = .milliseconds(1)
        /// A stream is alone when no other stream of the session received data for this long.
        public var soloQuietSpan: Duration = .milliseconds(50)
        /// Time between the session's round-trip pings (go-yamux: 30 s).
        public var rttPingInterval: Duration = .seconds(30)
        /// Pings sent back to back at the start (each on the previous one's
        /// answer): one sample taken while the connection is being set up can
        /// be slow, and the first windows are sized on the smallest.
        public var startRTTPings: Int = 3
        /// The round trip is the smallest sample of this span (Linux TCP keeps
        /// its minimum RTT over 5 minutes too): samples taken while our own
        /// data fills the buffers are inflated by it, and must not make the
        /// windows, and so the buffers, grow further.
        public var rttFilterSpan: Duration = .seconds(300)
        /// Control frames (ACKs, RSTs, window updates) waiting for the adapter
        /// to take them, in bytes. A remote that makes us answer (opening and
        /// resetting streams) while not reading our answers fails the session
        /// beyond this. Pongs do not count: only the latest ping is answered.
        public var maxPendingControlBytes: Int = 64 * 1024

        public init() {}

        /// Throws when a value breaks a constraint the session relies on. The
        /// session checks it at construction; a host can check it at start-up.
        public func validate() throws(YamuxConfigurationError) {
            // Every stream starts with the spec's window; we can only widen it, never shrink it.
            guard initialWindow >= YamuxSession.initialWindow else {
                throw .initialWindowBelowDefault(initialWindow, minimum: YamuxSession.initialWindow)
            }
            guard maxStreamWindow >= initialWindow else {
                throw .maxStreamWindowBelowInitialWindow(maxStreamWindow, initialWindow: initialWindow)
            }
            guard maxStreams > 0 else { throw .notPositive("maxStreams", Double(maxStreams)) }
            guard maxFramePayload > 0 else { throw .notPositive("maxFramePayload", Double(maxFramePayload)) }
            guard maxPendingControlBytes >= YamuxSession.headerLength else {
                throw .notPositive("maxPendingControlBytes", Double(maxPendingControlBytes))
            }
            guard growthRoundTrips > 0, growthRoundTrips.isFinite else { throw .notPositive("growthRoundTrips", growthRoundTrips) }
            guard rttPingInterval > .zero else { throw .notPositive("rttPingInterval", Double(TimeAmount(rttPingInterval).nanoseconds) / 1e9) }
            guard growthTimeFloor >= .zero, soloGrowthTimeFloor >= .zero, soloQuietSpan >= .zero, rttFilterSpan >= .zero,
                startRTTPings >= 0
            else { throw .negative }
        }
    }
}
