import Identity
import LibP2PSecurity
import NIOCore
import NIOSSL
import Synchronization

/// `/tls/1.0.0` (libp2p TLS) as one of the upgrader's security protocols.
///
/// One ECDSA P-256 certificate key, certificate and BoringSSL context serve
/// every handshake of one local identity and muxer list (as go-libp2p keeps one
/// certificate per identity): making them per handshake cost more than the
/// rest of the handshake. They are made on first use and kept in a small
/// process-wide cache keyed by our peer id, since the identity is a
/// per-handshake input, not a property of this value.
///
/// ALPN offers our muxers, in order, then "libp2p". The server picks the first
/// of its own list that the client offers (swift-nio-ssl and py-libp2p both
/// choose that way); "libp2p" or no ALPN means: negotiate the muxer with
/// multistream-select.
///
/// Handshakes and sessions must be driven from one thread: see `TLSEngine`.
public struct TLSSecurity: SecurityProtocol {
    public static let protocolID = "/tls/1.0.0"
    /// The ALPN protocol every libp2p TLS endpoint offers last.
    public static let alpnFallback = "libp2p"

    public var protocolID: String { Self.protocolID }
    /// Bytes a handshake may take before it must have completed (a real one takes a few KiB).
    public let maxHandshakeBytes: Int

    public init(maxHandshakeBytes: Int = 64 * 1024) {
        self.maxHandshakeBytes = maxHandshakeBytes
    }

    public func makeHandshake(
        role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]
    ) throws -> any SecurityHandshake {
        // ALPN names are 1 to 255 bytes; anything else could not be offered anyway.
        let muxers = muxers.filter { (1...255).contains($0.utf8.count) && $0 != Self.alpnFallback }
        let key = TLSContextCache.Key(peer: PeerID(publicKey: localKey.publicKey), muxers: muxers)
        let context = try TLSContextCache.shared.context(for: key) {
            try Self.makeContext(localKey: localKey, muxers: muxers)
        }
        return TLSHandshake(
            engine: TLSEngine(
                role: role, sslContext: context, muxers: muxers, maxHandshakeBytes: maxHandshakeBytes,
                verification: PeerVerification(expectedPeer: expectedRemotePeer)))
    }

    /// A client-mode context (the role only picks the NIO handler) with a fresh certificate for `localKey`.
    static func makeContext(localKey: PrivateKey, muxers: [String]) throws -> NIOSSLContext {
        let generated = try LibP2PCertificate.generate(identity: localKey)
        do {
            var configuration = TLSConfiguration.makeClientConfiguration()
            configuration.minimumTLSVersion = .tlsv13
            configuration.maximumTLSVersion = .tlsv13
            configuration.certificateChain = [
                .certificate(try NIOSSLCertificate(bytes: generated.certificateDER, format: .der))
            ]
            configuration.privateKey = .privateKey(try NIOSSLPrivateKey(bytes: generated.privateKeyDER, format: .der))
            // A mode that requires the peer's certificate (server: client
            // authentication); our callback replaces all of BoringSSL's checks.
            configuration.certificateVerification = .noHostnameVerification
            // No CA store: loading the system's would only cost time.
            configuration.trustRoots = .certificates([])
            configuration.applicationProtocols = muxers + [Self.alpnFallback]
            // Closing never waits for the remote's close_notify: the connection
            // is going away, and an EmbeddedChannel must not keep a timer.
            configuration.shutdownTimeout = .zero
            return try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSError.setupFailed(error)
        }
    }
}

/// A TLS handshake behind the security-protocol interface. The engine it
/// drives becomes the session.
struct TLSHandshake: SecurityHandshake {
    let engine: TLSEngine

    mutating func start(into output: inout ByteBuffer) throws {
        try engine.start(into: &output)
    }

    mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws -> SecuredConnection? {
        guard try engine.receiveHandshake(&input, output: &output) else { return nil }
        guard let peer = engine.verification.verified else { throw TLSError.noPeerCertificate }
        let negotiated = engine.negotiatedProtocol
        return SecuredConnection(
            remotePeer: peer.peerID, remotePublicKey: peer.publicKey, session: TLSSession(engine: engine),
            remainder: input.readSlice(length: input.readableBytes)!,
            negotiatedMuxer: negotiated.flatMap { engine.muxers.contains($0) ? $0 : nil })
    }
}

/// An established TLS connection, sans-IO. Plaintext that arrived with the
/// handshake's last flight comes out on the first `receive`.
struct TLSSession: SecureSession {
    let engine: TLSEngine

    mutating func encrypt(pieces: [ByteBuffer], into output: inout ByteBuffer) throws {
        try engine.encrypt(pieces: pieces, into: &output)
    }

    mutating func receive(_ input: inout ByteBuffer, plaintexts: inout [ByteBuffer], output: inout ByteBuffer) throws {
        try engine.receive(&input, plaintexts: &plaintexts, output: &output)
    }

    /// Appends close_notify (the interface has no close yet; tests use it).
    func close(into output: inout ByteBuffer) {
        engine.close(into: &output)
    }
}

/// Contexts (certificate, key, configuration) by local identity and muxer
/// list. Bounded: a process holds one or two identities; past the bound the
/// cache starts over.
final class TLSContextCache: Sendable {
    static let shared = TLSContextCache()
    static let capacity = 32

    struct Key: Hashable {
        let peer: PeerID
        let muxers: [String]
    }

    private let contexts = Mutex<[Key: NIOSSLContext]>([:])

    func context(for key: Key, make: () throws -> NIOSSLContext) throws -> NIOSSLContext {
        if let cached = contexts.withLock({ $0[key] }) { return cached }
        let made = try make()
        return contexts.withLock { contexts in
            if let raced = contexts[key] { return raced }
            if contexts.count >= Self.capacity { contexts.removeAll() }
            contexts[key] = made
            return made
        }
    }
}
