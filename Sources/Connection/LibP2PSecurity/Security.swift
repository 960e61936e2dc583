import Identity
import NIOCore

/// Which part a side plays in a security handshake. Usually the dialler
/// initiates, but not always: in a DCUtR hole punch both sides dial, and the
/// protocol decides who initiates. The upgrader takes the role as an input.
public enum SecurityRole: String, Sendable {
    case initiator
    case responder
}

/// What a completed security handshake established.
public struct SecuredConnection {
    /// The remote's peer id, proven by the handshake.
    public let remotePeer: PeerID
    /// The remote's identity key.
    public let remotePublicKey: PublicKey
    /// Encrypts and decrypts from now on.
    public var session: any SecureSession
    /// Bytes that arrived after the handshake's last message. The driver feeds
    /// them to `session.receive` right away, even when empty, so a session
    /// that already holds decrypted data (TLS) hands it over.
    public var remainder: ByteBuffer
    /// The muxer agreed inside the handshake (early muxer negotiation: the
    /// Noise extensions, TLS's ALPN), or nil: then multistream-select chooses.
    public let negotiatedMuxer: String?

    public init(
        remotePeer: PeerID, remotePublicKey: PublicKey, session: any SecureSession, remainder: ByteBuffer,
        negotiatedMuxer: String?
    ) {
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.session = session
        self.remainder = remainder
        self.negotiatedMuxer = negotiatedMuxer
    }
}

/// A security handshake in progress, sans-IO: fed the bytes that arrive, it
/// appends the bytes to send and, once complete, returns the secured connection.
/// Driven from one thread at a time (a connection's event loop).
public protocol SecurityHandshake {
    /// Appends the first message when this side speaks first.
    mutating func start(into output: inout ByteBuffer) throws
    /// Consumes arriving bytes and appends what to send; the result once done.
    mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws -> SecuredConnection?
}

/// An established secure channel, sans-IO.
public protocol SecureSession {
    /// Encrypts the concatenation of `pieces` (in order) into `output`.
    mutating func encrypt(pieces: [ByteBuffer], into output: inout ByteBuffer) throws
    /// Decrypts arriving bytes (consumed) into `plaintexts`; a partial record
    /// waits for the next call. `output` takes anything the protocol must send
    /// in answer (TLS key updates, alerts); Noise never writes to it.
    mutating func receive(_ input: inout ByteBuffer, plaintexts: inout [ByteBuffer], output: inout ByteBuffer) throws
}

/// A security protocol that can be offered during multistream-select
/// (`/noise`, `/tls/1.0.0`).
public protocol SecurityProtocol: Sendable {
    /// The multistream-select protocol id.
    var protocolID: String { get }
    /// A fresh handshake. `expectedRemotePeer`, when known, must match the
    /// remote's proven identity; `muxers` are offered for early negotiation
    /// in our order of preference.
    func makeHandshake(
        role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]
    ) throws -> any SecurityHandshake
}

/// Thrown by any security protocol when the remote proved another identity
/// than the one dialled, so callers can tell this from other failures.
public struct PeerIDMismatch: Error, CustomStringConvertible, Sendable, Equatable {
    public let expected: PeerID
    public let actual: PeerID

    public init(expected: PeerID, actual: PeerID) {
        self.expected = expected
        self.actual = actual
    }

    public var description: String { "expected peer \(expected) but the remote is \(actual)" }
}

/// Early muxer negotiation's rule (as go-libp2p): the first of the
/// initiator's muxers that the responder also lists.
public func selectEarlyMuxer(role: SecurityRole, local: [String], remote: [String]) -> String? {
    let (initiator, responder) = role == .initiator ? (local, remote) : (remote, local)
    return initiator.first(where: responder.contains)
}
