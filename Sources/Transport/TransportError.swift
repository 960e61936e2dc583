import Identity
import Multiformats

/// What went wrong while dialing, listening, upgrading or using a connection.
/// Failures caused by another error keep it (`underlying`), so a caller can
/// tell a peer id mismatch from a timeout from a refused protocol.
public enum TransportError: Error, CustomStringConvertible, Sendable {
    /// No transport of the host dials or listens on this address.
    case unsupportedAddress(String)
    /// The transport's connect did not finish in time.
    case dialTimeout(address: String)
    /// The transport's connect failed.
    case dialFailed(address: String, underlying: any Error)
    /// The transport could not listen on the address (in use, say).
    case listenFailed(address: String, underlying: any Error)
    /// The security/muxer upgrade did not finish in time.
    case upgradeTimeout(phase: String)
    /// Multistream-select failed while choosing `phase` (security, muxer, stream).
    case negotiationFailed(phase: String, underlying: any Error)
    /// The security handshake failed (bad signature, garbage, bad certificate...).
    case securityFailed(protocolID: String, underlying: any Error)
    /// The remote proved another identity than the one dialled.
    case peerIDMismatch(expected: PeerID, actual: PeerID)
    /// The muxer session saw a protocol violation.
    case muxerFailed(underlying: any Error)
    /// The socket or channel failed.
    case io(underlying: any Error)
    /// The connection is closed (or closed while the operation was pending).
    case connectionClosed
    /// The stream was reset by either side.
    case streamReset
    /// Writing after closing the write side of a stream.
    case streamClosedForWriting
    /// A second reader waited on a stream that has one already.
    case concurrentReads
    /// Stream protocol negotiation did not finish in time.
    case streamNegotiationTimeout(protocols: [String])
    /// A resource limit refused the connection or stream (what limit, in words).
    case limitReached(String)

    /// The error this one wraps, if any.
    public var underlying: (any Error)? {
        switch self {
        case .dialFailed(_, let error), .listenFailed(_, let error), .negotiationFailed(_, let error), .securityFailed(_, let error),
            .muxerFailed(let error), .io(let error):
            return error
        default:
            return nil
        }
    }

    public var description: String {
        switch self {
        case .unsupportedAddress(let a): return "unsupported address \(a): no transport dials or listens on it"
        case .dialTimeout(let a): return "dial \(a): timed out"
        case .dialFailed(let a, let error): return "dial \(a): \(error)"
        case .listenFailed(let a, let error): return "listen on \(a): \(error)"
        case .upgradeTimeout(let phase): return "connection upgrade timed out during \(phase)"
        case .negotiationFailed(let phase, let error): return "multistream negotiation of \(phase) failed: \(error)"
        case .securityFailed(let id, let error): return "\(id) handshake failed: \(error)"
        case .peerIDMismatch(let expected, let actual): return "expected peer \(expected) but the remote is \(actual)"
        case .muxerFailed(let error): return "muxer failed: \(error)"
        case .io(let error): return "connection failed: \(error)"
        case .connectionClosed: return "connection closed"
        case .streamReset: return "stream reset"
        case .streamClosedForWriting: return "stream closed for writing"
        case .concurrentReads: return "concurrent reads on one stream"
        case .streamNegotiationTimeout(let p): return "stream negotiation of \(p.joined(separator: ", ")) timed out"
        case .limitReached(let what): return "refused: limit of \(what) reached"
        }
    }
}
