import Identity
import LibP2PSecurity
import NIOCore
import NIOSSL

/// `/tls/1.0.0` (libp2p TLS) as one of the upgrader's security protocols.
///
/// Every handshake makes a fresh ECDSA P-256 certificate key and certificate
/// (about a millisecond): the identity key is a per-handshake input, not a
/// property of this value, and a per-handshake key keeps this type a plain
/// `Sendable` value with no shared cache to lock.
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
        let generated = try LibP2PCertificate.generate(identity: localKey)
        let context: NIOSSLContext
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
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            throw TLSError.setupFailed(error)
        }
        return TLSHandshake(
            engine: TLSEngine(
                role: role, sslContext: context, muxers: muxers, maxHandshakeBytes: maxHandshakeBytes,
                verification: PeerVerification(expectedPeer: expectedRemotePeer)))
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
