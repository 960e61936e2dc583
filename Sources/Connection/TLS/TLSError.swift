import Identity

/// Why a `/tls/1.0.0` handshake or session failed. A remote that proves
/// another identity than the one dialled is reported as `PeerIDMismatch`
/// (from Security) instead, like every security protocol does.
public enum TLSError: Error, CustomStringConvertible {
    /// The remote presented no certificate (the spec requires one from both sides).
    case noPeerCertificate
    /// The remote presented a chain of this many certificates; exactly one is allowed.
    case certificateCount(Int)
    /// The certificate is not valid DER X.509.
    case malformedCertificate(any Error)
    /// The certificate's validity starts after now.
    case certificateNotYetValid(notBefore: String)
    /// The certificate's validity ended before now.
    case certificateExpired(notAfter: String)
    /// The certificate's signature does not verify with its own key.
    case invalidSelfSignature
    /// A critical extension we do not understand (dotted OID).
    case unsupportedCriticalExtension(String)
    /// The libp2p public key extension (1.3.6.1.4.1.53594.1.1) is absent.
    case missingLibp2pExtension
    /// The libp2p extension is not DER `SEQUENCE { OCTET STRING, OCTET STRING }`.
    case malformedLibp2pExtension(any Error)
    /// The extension's host key does not decode as a libp2p public key.
    case invalidHostKey(KeyError)
    /// The host key's signature over the certificate key does not verify.
    case invalidExtensionSignature
    /// We could not make our own certificate or TLS context.
    case setupFailed(any Error)
    /// The TLS layer failed during the handshake (alert, protocol error, wrong version).
    case handshakeFailed(any Error)
    /// The handshake took more than this many bytes without completing.
    case handshakeTooLarge(limit: Int)
    /// The remote closed the TLS connection before the handshake completed.
    case closedDuringHandshake
    /// The handshake already produced its secured connection.
    case handshakeAlreadyComplete
    /// The TLS layer failed after the handshake (bad record, alert from the remote).
    case sessionFailed(any Error)
    /// The TLS connection was closed (close_notify) and carries no more data.
    case closed

    public var description: String {
        switch self {
        case .noPeerCertificate: "the remote presented no certificate"
        case .certificateCount(let n): "the remote presented \(n) certificates; exactly one is allowed"
        case .malformedCertificate(let error): "malformed certificate: \(error)"
        case .certificateNotYetValid(let date): "certificate is not valid before \(date)"
        case .certificateExpired(let date): "certificate expired at \(date)"
        case .invalidSelfSignature: "certificate self-signature does not verify"
        case .unsupportedCriticalExtension(let oid): "certificate has unsupported critical extension \(oid)"
        case .missingLibp2pExtension: "certificate lacks the libp2p public key extension"
        case .malformedLibp2pExtension(let error): "malformed libp2p extension: \(error)"
        case .invalidHostKey(let error): "libp2p extension holds an invalid host key: \(error)"
        case .invalidExtensionSignature: "libp2p extension signature over the certificate key does not verify"
        case .setupFailed(let error): "TLS setup failed: \(error)"
        case .handshakeFailed(let error): "TLS handshake failed: \(error)"
        case .handshakeTooLarge(let limit): "TLS handshake exceeded \(limit) bytes"
        case .closedDuringHandshake: "the remote closed the TLS connection during the handshake"
        case .handshakeAlreadyComplete: "TLS handshake already complete"
        case .sessionFailed(let error): "TLS session failed: \(error)"
        case .closed: "TLS connection closed"
        }
    }
}
