#if canImport(Glibc)
import Glibc
#endif
import Identity
import Multiformats
import NIOCore
import NIOPosix

/// What went wrong while dialing, listening, upgrading or using a connection.
/// Failures caused by another error keep it (`underlying`), so a caller can
/// tell a peer id mismatch from a timeout from a refused protocol.
public enum TransportError: Error, CustomStringConvertible, Sendable {
    /// No transport of the host dials or listens on this address.
    case unsupportedAddress(String)
    /// The transport's connect did not finish within `after`.
    case dialTimeout(address: String, after: Duration)
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
    /// A resource limit refused the connection or stream.
    case limitReached(Limit)

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

    /// What failed, without the address a dial or listen failure names
    /// (for lists that name each address already).
    public var reason: String {
        switch self {
        case .dialTimeout(_, let after): ErrorText.timedOut(after: after)
        case .dialFailed(_, let error), .listenFailed(_, let error): ErrorText.describe(error)
        default: description
        }
    }

    public var description: String {
        switch self {
        case .unsupportedAddress(let a): return "unsupported address \(a): no transport dials or listens on it"
        case .dialTimeout(let a, let after): return "dial \(a): \(ErrorText.timedOut(after: after))"
        case .dialFailed(let a, let error): return "dial \(a): \(ErrorText.describe(error))"
        case .listenFailed(let a, let error): return "listen on \(a): \(ErrorText.describe(error))"
        case .upgradeTimeout(let phase): return "connection upgrade timed out during \(phase)"
        case .negotiationFailed(let phase, let error): return "multistream negotiation of \(phase) failed: \(error)"
        case .securityFailed(let id, let error): return "\(id) handshake failed: \(error)"
        case .peerIDMismatch(let expected, let actual): return "expected peer \(expected) but the remote is \(actual)"
        case .muxerFailed(let error): return "muxer failed: \(error)"
        case .io(let error): return "connection failed: \(ErrorText.describe(error))"
        case .connectionClosed: return "connection closed"
        case .streamReset: return "stream reset"
        case .streamClosedForWriting: return "stream closed for writing"
        case .concurrentReads: return "concurrent reads on one stream"
        case .streamNegotiationTimeout(let p): return "stream negotiation of \(p.joined(separator: ", ")) timed out"
        case .limitReached(let limit): return "refused: limit of \(limit.detail) reached"
        }
    }
}

/// What failed, in a few words a person reads: socket errors by their errno
/// ("connection refused"), not NIO's debug text (`connection reset (error
/// set): Connection refused) (errno: 111)`); our own errors as they describe themselves.
public enum ErrorText {
    public static func describe(_ error: any Error) -> String {
        switch error {
        case let error as IOError:
            return words(errno: error.errnoCode)
        case let error as NIOConnectionError:
            // A dial by name: each address it resolved to failed, or the name did not resolve.
            let failures = error.connectionErrors.map { describe($0.error) }
            if !failures.isEmpty { return unique(failures).joined(separator: "; ") }
            if let dns = error.dnsAError ?? error.dnsAAAAError { return "cannot resolve \(error.host): \(describe(dns))" }
            return "\(error.host) has no address"
        case let error as ChannelError:
            switch error {
            case .connectTimeout(let amount): return timedOut(after: .nanoseconds(amount.nanoseconds))
            case .ioOnClosedChannel, .alreadyClosed, .eof: return "connection closed"
            case .outputClosed: return "connection closed for writing"
            case .inputClosed: return "connection closed for reading"
            default: return "\(error)"
            }
        case let error as SocketAddressError.UnknownHost:
            return "cannot resolve \(error.host): \(error.errorDescription.prefix(1).lowercased() + error.errorDescription.dropFirst())"
        default:
            return "\(error)"
        }
    }

    /// Why `error` happened, for a line that names what failed already: a
    /// dial or listen failure without its address.
    public static func reason(of error: any Error) -> String {
        (error as? TransportError)?.reason ?? describe(error)
    }

    /// "timed out after 5 s" (tenths shown below ten seconds when there are any).
    public static func timedOut(after duration: Duration) -> String {
        let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
        let rounded = seconds >= 10 || seconds == seconds.rounded() ? String(Int(seconds.rounded())) : String(format: "%.1f", seconds)
        return "timed out after \(rounded) s"
    }

    /// The usual socket errors in short words; others as the system says them, in lower case.
    public static func words(errno code: Int32) -> String {
        switch code {
        case ECONNREFUSED: return "connection refused"
        case ECONNRESET: return "connection reset by the peer"
        case ECONNABORTED: return "connection aborted"
        case EPIPE: return "connection closed by the peer"
        case ETIMEDOUT: return "timed out"
        case ENETUNREACH: return "network unreachable"
        case EHOSTUNREACH: return "host unreachable"
        case ENETDOWN: return "network down"
        case EADDRINUSE: return "address in use"
        case EADDRNOTAVAIL: return "address not available here"
        case EAFNOSUPPORT: return "address family not supported"
        case EACCES, EPERM: return "permission denied"
        case EMFILE: return "too many open files"
        case ENFILE: return "too many open files in the system"
        default:
            let text = String(cString: strerror(code))
            return text.prefix(1).lowercased() + text.dropFirst()
        }
    }

    private static func unique(_ texts: [String]) -> [String] {
        var seen: Set<String> = []
        return texts.filter { seen.insert($0).inserted }
    }
}
