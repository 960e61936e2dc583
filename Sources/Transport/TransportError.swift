import Multiformats

/// What went wrong while dialing, listening, upgrading or using a connection.
public enum TransportError: Error, CustomStringConvertible, Sendable {
    /// The address has no TCP part we can dial or listen on.
    case unsupportedAddress(String)
    /// TCP connect did not finish in time.
    case dialTimeout(address: String)
    /// TCP connect failed.
    case dialFailed(address: String, reason: String)
    /// The security/muxer upgrade did not finish in time.
    case upgradeTimeout(phase: String)
    /// Multistream-select failed while choosing `what` (security, muxer or a stream protocol).
    case negotiationFailed(phase: String, reason: String)
    /// The peer offered none of the protocols we proposed.
    case protocolsNotSupported([String])
    /// The Noise handshake failed (bad signature, wrong peer id, garbage...).
    case securityFailed(reason: String)
    /// The Yamux session saw a protocol violation.
    case muxerFailed(reason: String)
    /// The connection is closed (or closed while the operation was pending).
    case connectionClosed
    /// The stream was reset by either side.
    case streamReset
    /// Writing after closing the write side of a stream.
    case streamClosedForWriting
    /// Opening a stream would exceed the concurrent-stream limit.
    case tooManyStreams
    /// Stream protocol negotiation did not finish in time.
    case streamNegotiationTimeout(protocols: [String])

    public var description: String {
        switch self {
        case .unsupportedAddress(let a): return "unsupported address \(a): need /ip4, /ip6 or /dns* with /tcp"
        case .dialTimeout(let a): return "dial \(a): timed out"
        case .dialFailed(let a, let reason): return "dial \(a): \(reason)"
        case .upgradeTimeout(let phase): return "connection upgrade timed out during \(phase)"
        case .negotiationFailed(let phase, let reason): return "multistream negotiation of \(phase) failed: \(reason)"
        case .protocolsNotSupported(let p): return "remote supports none of \(p.joined(separator: ", "))"
        case .securityFailed(let reason): return "noise handshake failed: \(reason)"
        case .muxerFailed(let reason): return "yamux session failed: \(reason)"
        case .connectionClosed: return "connection closed"
        case .streamReset: return "stream reset"
        case .streamClosedForWriting: return "stream closed for writing"
        case .tooManyStreams: return "too many streams on this connection"
        case .streamNegotiationTimeout(let p): return "stream negotiation of \(p.joined(separator: ", ")) timed out"
        }
    }
}
