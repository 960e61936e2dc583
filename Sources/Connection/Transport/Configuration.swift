import Multistream
import NIOCore
import NIOPosix
import Yamux

/// Limits and timeouts of connections: dialing, the upgrade, streams.
public struct TransportConfiguration: Sendable {
    public static let noiseProtocolID = "/noise"
    public static let yamuxProtocolID = "/yamux/1.0.0"

    /// TCP connect.
    public var dialTimeout: Duration = .seconds(10)
    /// From TCP established to Yamux running (both multistream rounds and Noise).
    public var upgradeTimeout: Duration = .seconds(15)
    /// Inbound connections still in the upgrade (multistream, security
    /// handshake) at once; newer ones are closed at once (and counted) beyond
    /// it, so a flood of sockets that never finish cannot hold every file
    /// descriptor for `upgradeTimeout`.
    public var maxInboundHandshakes = 64
    /// Of those, at most this many from one address (an IPv4 address, an IPv6
    /// /64), so that idle sockets from one place cannot take every slot from
    /// everyone else. Loopback is exempt unless `limitLoopbackHandshakes`.
    public var maxInboundHandshakesPerAddress = 8
    public var limitLoopbackHandshakes = false
    /// A listener whose accept fails (EMFILE, ENFILE: out of file
    /// descriptors) stops accepting for this long, then tries again.
    public var acceptBackoff: Duration = .milliseconds(500)
    /// Inbound streams of one connection still negotiating their protocol (as
    /// rust-libp2p's max_negotiating_inbound_streams);
    /// a newer one is reset at once beyond it.
    public var maxNegotiatingInboundStreams = 128
    /// Multistream-select on a new stream.
    public var streamNegotiationTimeout: Duration = .seconds(10)
    /// A writer waits while this much of its data is handed over and not yet
    /// framed (behind the remote's receive window or a full socket); it goes on
    /// once half of it has gone out.
    public var maxQueuedBytesPerStream: Int = 1024 * 1024
    /// A connection whose socket takes nothing (stays unwritable: the peer
    /// reads less than NIO's low-water mark, 32 KiB) for this long while we
    /// have data for it is closed: a peer that stops reading without asking
    /// for anything (so no control-frame bound applies) cannot hold our
    /// queued data and its socket for ever. nil: never.
    public var writeStallTimeout: Duration? = .seconds(45)
    /// Bounds on what a peer can make multistream-select allocate.
    public var multistreamLimits = MultistreamLimits()
    /// Yamux windows and stream limits.
    public var yamux = YamuxSession.Configuration()
    /// The kernel takes more from us only while less than this is waiting
    /// unsent in the socket (TCP_NOTSENT_LOWAT). What the link cannot carry yet
    /// then waits in the streams' queues, where streams take turns and control
    /// frames go first, rather than in one kernel queue where a chat message
    /// would sit behind megabytes of a bulk stream on a slow link. nil leaves
    /// the kernel's default (no limit).
    public var notSentLowWatermark: Int? = 128 * 1024
    /// Socket reads grow up to 256 KiB under load (NIO's default stops at 64 KiB):
    /// fewer Noise frames are split across reads, and each split costs a copy.
    public static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 256 * 1024)

    public init() {}

    /// Throws when a value breaks a constraint the connections rely on (the
    /// Yamux part included, which would otherwise trap at the first
    /// connection). `Libp2pHost` checks it at construction.
    public func validate() throws(TransportConfigurationError) {
        for (name, span) in [
            ("dialTimeout", dialTimeout), ("upgradeTimeout", upgradeTimeout),
            ("streamNegotiationTimeout", streamNegotiationTimeout),
        ] where span <= .zero {
            throw .notPositive(name, "\(span)")
        }
        if let writeStallTimeout, writeStallTimeout <= .zero { throw .notPositive("writeStallTimeout", "\(writeStallTimeout)") }
        guard acceptBackoff >= .zero else { throw .negative("acceptBackoff", "\(acceptBackoff)") }
        for (name, count) in [
            ("maxInboundHandshakes", maxInboundHandshakes), ("maxInboundHandshakesPerAddress", maxInboundHandshakesPerAddress),
            ("maxNegotiatingInboundStreams", maxNegotiatingInboundStreams), ("maxQueuedBytesPerStream", maxQueuedBytesPerStream),
        ] where count <= 0 {
            throw .notPositive(name, "\(count)")
        }
        if let notSentLowWatermark, notSentLowWatermark <= 0 { throw .notPositive("notSentLowWatermark", "\(notSentLowWatermark)") }
        do {
            try yamux.validate()
        } catch {
            throw .yamux(error)
        }
    }
}

/// A `TransportConfiguration` value that breaks a constraint.
public enum TransportConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The named time span or count must be above zero; the value it has.
    case notPositive(String, String)
    /// The named time span must not be negative; the value it has.
    case negative(String, String)
    /// The Yamux part (`TransportConfiguration.yamux`) is invalid.
    case yamux(YamuxConfigurationError)

    public var description: String {
        switch self {
        case .notPositive(let name, let value): "transport configuration: \(name) must be above zero, is \(value)"
        case .negative(let name, let value): "transport configuration: \(name) must not be negative, is \(value)"
        case .yamux(let error): "transport configuration: \(error)"
        }
    }
}

extension NIOBSDSocket.Option {
    /// TCP_NOTSENT_LOWAT (Linux, since 3.12); 0 means the kernel default.
    static let tcp_notsent_lowat = NIOBSDSocket.Option(rawValue: 25)
}
