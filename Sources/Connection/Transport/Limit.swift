/// Which limit refused or closed something (issue 24 §3: a type where a string
/// was). `description` is the text the chat's `limits` event and the counters
/// print, as before; `detail` what a connection closed by it gives as its reason.
public enum Limit: Sendable, Hashable, CustomStringConvertible {
    /// Connections at once, in all.
    case connections(Int)
    /// Connections to one peer.
    case connectionsPerPeer(Int)
    /// Inbound connections from one IP address (an IPv6 /64).
    case inboundPerIP(Int)
    /// A connection closed to make room for one from an address holding fewer.
    case connectionSlots
    /// Inbound connections in the upgrade at once, in all and from one address.
    case handshakes(Int)
    case handshakesPerAddress(Int)
    /// Inbound streams negotiating their protocol at once on a connection.
    case negotiatingStreams(Int)
    /// Inbound streams of one protocol handled at once on a connection.
    case inboundStreams(Int, protocolID: String)
    /// A memory scope of the host's budget (all, per peer, per address).
    case memory(MemoryBudget.Refusal)
    /// The socket took nothing for this many milliseconds while we had data for it.
    case writeStall(milliseconds: Int64)
    /// A connection without a stream for `after` (nil: not said).
    case idle(after: Duration?)
    /// A connection closed over the connection manager's high-water mark.
    case trimmed(highWater: Int)
    /// Peers being dialled at once.
    case dials(Int)
    /// Streams the remote lets us open at once (QUIC's MAX_STREAMS).
    case remoteStreams
    /// A pubsub peer whose score fell below the graylist threshold.
    case graylisted

    public var description: String {
        switch self {
        case .connections(let count): "\(count) connections"
        case .connectionsPerPeer(let count): "\(count) connections per peer"
        case .inboundPerIP(let count): "\(count) inbound connections per IP address"
        case .connectionSlots: "connection slots (closed for an address holding fewer)"
        case .handshakes(let count): "\(count) inbound handshakes in flight"
        case .handshakesPerAddress(let count): "\(count) inbound handshakes in flight from one address"
        case .negotiatingStreams(let count): "\(count) inbound streams negotiating"
        case .inboundStreams(let count, let protocolID): "\(count) inbound streams of \(protocolID)"
        case .memory(let scope): scope.reason
        case .writeStall(let milliseconds): "writes stalled for \(milliseconds) ms"
        case .idle: "idle"
        case .trimmed: "trimmed"
        case .dials(let count): "\(count) dials in flight"
        case .remoteStreams: "the remote's limit of streams"
        case .graylisted: "graylisted pubsub peer"
        }
    }

    /// The limit as a closed connection's reason says it.
    public var detail: String {
        switch self {
        case .idle(let after?): "idle for \(after)"
        case .trimmed(let highWater): "\(highWater) connections (high-water mark)"
        default: description
        }
    }
}
