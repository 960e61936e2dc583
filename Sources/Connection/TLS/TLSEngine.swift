import Identity
import LibP2PSecurity
import NIOCore
import NIOEmbedded
import NIOSSL
import NIOTLS

/// Drives swift-nio-ssl without I/O. swift-nio-ssl has no sans-IO API, so
/// its handler runs in an `EmbeddedChannel`: ciphertext goes in with a
/// channel read and comes out as the channel's writes; plaintext comes out as
/// reads reaching the pipeline's end and goes in as writes.
///
/// Thread precondition: an `EmbeddedEventLoop` may be used only on the thread
/// that created it. The channel is created on the first `start`/`receive` call,
/// so every later call, and the release of the last reference, must happen on
/// that same thread. The upgrader calls from the connection's event loop thread.
final class TLSEngine {
    /// Handshake bytes fed at a time, so that the handshake's end is noticed
    /// early and what follows stays with the caller as the remainder.
    static let handshakeSlice = 4096
    /// TLS records carry at most 16 KiB of plaintext.
    static let maxRecordPlaintext = 16384
    /// Pieces smaller than this are gathered into one record instead of one each.
    static let coalesceBelow = 2048

    let role: SecurityRole
    let sslContext: NIOSSLContext
    let muxers: [String]
    let maxHandshakeBytes: Int
    let verification: PeerVerification

    private var channel: EmbeddedChannel?
    private let observer = Observer()
    private var handshakeBytes = 0
    /// A session that failed stays failed: swift-nio-ssl has closed the channel.
    private var sessionError: TLSError?

    init(role: SecurityRole, sslContext: NIOSSLContext, muxers: [String], maxHandshakeBytes: Int, verification: PeerVerification) {
        self.role = role
        self.sslContext = sslContext
        self.muxers = muxers
        self.maxHandshakeBytes = maxHandshakeBytes
        self.verification = verification
    }

    deinit {
        guard let channel else { return }
        // An EmbeddedChannel must be closed before it is freed, and its loop must
        // hold no scheduled task: close (which sends close_notify into the void),
        // and let swift-nio-ssl's shutdown timer (zero, see TLSSecurity) fire.
        channel.pipeline.syncOperations.close(promise: nil)  // a no-op when already closed
        channel.embeddedEventLoop.run()
        channel.embeddedEventLoop.advanceTime(by: .hours(1))
    }

    var handshakeComplete: Bool { observer.handshakeComplete }
    var negotiatedProtocol: String? { observer.negotiatedProtocol }

    // MARK: Handshake

    /// Creates the channel on this thread and writes our first flight (the
    /// client's ClientHello; nothing for the server).
    func start(into output: inout ByteBuffer) throws {
        _ = try setUp()
        drainOutbound(into: &output)
        try checkHandshakeFailure()
    }

    /// Feeds handshake bytes until the handshake completes (what follows stays
    /// in `input`) or `input` is used up. True once complete.
    func receiveHandshake(_ input: inout ByteBuffer, output: inout ByteBuffer) throws -> Bool {
        let channel = try setUp()
        guard !observer.handshakeComplete else { throw TLSError.handshakeAlreadyComplete }
        drainOutbound(into: &output)  // the ClientHello, when `start` was skipped
        while input.readableBytes > 0 && !observer.handshakeComplete {
            let length = min(input.readableBytes, Self.handshakeSlice)
            handshakeBytes += length
            guard handshakeBytes <= maxHandshakeBytes else {
                throw TLSError.handshakeTooLarge(limit: maxHandshakeBytes)
            }
            let slice = input.readSlice(length: length)!
            channel.pipeline.syncOperations.fireChannelRead(NIOAny(slice))
            channel.pipeline.syncOperations.fireChannelReadComplete()
            channel.embeddedEventLoop.run()
            drainOutbound(into: &output)
            try checkHandshakeFailure()
            if observer.inactive && !observer.handshakeComplete { throw TLSError.closedDuringHandshake }
        }
        return observer.handshakeComplete
    }

    private func checkHandshakeFailure() throws {
        // Our verifier's reason beats swift-nio-ssl's generic "verify failed".
        if let failure = verification.failure { throw failure }
        if let error = observer.takeError() { throw TLSError.handshakeFailed(error) }
    }

    private func setUp() throws -> EmbeddedChannel {
        if let channel { return channel }
        let channel = EmbeddedChannel()
        self.channel = channel
        let verification = self.verification
        // Completed synchronously; swift-nio-ssl resumes the handshake on the
        // loop's next run, which every caller here triggers.
        let verify: NIOSSLCustomVerificationCallback = { certificates, promise in
            promise.succeed(verification.verify(certificates) ? .certificateVerified : .failed)
        }
        do {
            let handler: NIOSSLHandler =
                switch role {
                case .initiator:
                    // No SNI: the spec keeps it for future versions.
                    try NIOSSLClientHandler(
                        context: sslContext, serverHostname: nil, customVerificationCallback: verify)
                case .responder:
                    NIOSSLServerHandler(context: sslContext, customVerificationCallback: verify)
                }
            try channel.pipeline.syncOperations.addHandler(handler)
            try channel.pipeline.syncOperations.addHandler(observer)
            channel.connect(to: try SocketAddress(ipAddress: "127.0.0.1", port: 1), promise: nil)
            channel.embeddedEventLoop.run()
        } catch {
            throw TLSError.setupFailed(error)
        }
        return channel
    }

    // MARK: Session

    /// Plaintext decrypted so far (with the handshake's last flight, or from `input`).
    func receive(_ input: inout ByteBuffer, plaintexts: inout [ByteBuffer], output: inout ByteBuffer) throws {
        guard let channel, observer.handshakeComplete else { throw TLSError.sessionFailed(TLSError.closed) }
        if let sessionError { throw sessionError }
        if input.readableBytes > 0 {
            let data = input.readSlice(length: input.readableBytes)!
            // After close_notify the pipeline is gone: bytes would come out unread as "plaintext".
            if !observer.inactive {
                channel.pipeline.syncOperations.fireChannelRead(NIOAny(data))
                channel.pipeline.syncOperations.fireChannelReadComplete()
                channel.embeddedEventLoop.run()
            }
        }
        observer.takePlaintexts(into: &plaintexts)
        drainOutbound(into: &output)
        try checkSessionFailure()
    }

    private func checkSessionFailure() throws {
        if let error = observer.takeError() { sessionError = .sessionFailed(error) }
        if let sessionError { throw sessionError }
    }

    func encrypt(pieces: [ByteBuffer], into output: inout ByteBuffer) throws {
        guard let channel, observer.handshakeComplete else { throw TLSError.sessionFailed(TLSError.closed) }
        if let sessionError { throw sessionError }
        guard !observer.inactive else { throw TLSError.closed }
        let pipeline = channel.pipeline.syncOperations
        // Each write becomes its own record(s): small pieces (frame headers)
        // are gathered so they do not cost a record each; large ones are
        // encrypted where they lie.
        var staged: ByteBuffer?
        var wrote = false
        for piece in pieces where piece.readableBytes > 0 {
            if piece.readableBytes >= Self.coalesceBelow {
                if let pending = staged {
                    pipeline.write(NIOAny(pending), promise: nil)
                    staged = nil
                }
                pipeline.write(NIOAny(piece), promise: nil)
            } else {
                if staged == nil { staged = channel.allocator.buffer(capacity: Self.maxRecordPlaintext) }
                staged!.writeImmutableBuffer(piece)
                if staged!.readableBytes >= Self.maxRecordPlaintext {
                    pipeline.write(NIOAny(staged!), promise: nil)
                    staged = nil
                }
            }
            wrote = true
        }
        if let pending = staged { pipeline.write(NIOAny(pending), promise: nil) }
        guard wrote else { return }
        pipeline.flush()
        channel.embeddedEventLoop.run()
        drainOutbound(into: &output)
        try checkSessionFailure()
    }

    /// Sends close_notify: the remote's session then ends cleanly instead of
    /// failing on the connection's end.
    func close(into output: inout ByteBuffer) {
        guard let channel, !observer.inactive else { return }
        channel.pipeline.syncOperations.close(promise: nil)
        channel.embeddedEventLoop.run()
        drainOutbound(into: &output)
    }

    /// Moves the ciphertext swift-nio-ssl wrote into `output`, without a copy
    /// when `output` is empty.
    private func drainOutbound(into output: inout ByteBuffer) {
        guard let channel else { return }
        while let buffer = try? channel.readOutbound(as: ByteBuffer.self) {
            if output.readableBytes == 0 {
                output = buffer
            } else {
                output.writeImmutableBuffer(buffer)
            }
        }
    }
}

/// Checks the remote's certificate inside swift-nio-ssl's verification
/// callback and keeps the outcome: the proven peer, or why it was refused.
final class PeerVerification {
    let expectedPeer: PeerID?
    private(set) var verified: LibP2PCertificate.VerifiedPeer?
    private(set) var failure: (any Error)?

    init(expectedPeer: PeerID?) {
        self.expectedPeer = expectedPeer
    }

    func verify(_ certificates: [NIOSSLCertificate]) -> Bool {
        do {
            let chain = try certificates.map { certificate in
                do {
                    return try certificate.toDERBytes()
                } catch {
                    throw TLSError.malformedCertificate(error)
                }
            }
            verified = try LibP2PCertificate.verify(chain: chain, expectedPeer: expectedPeer)
            return true
        } catch {
            failure = error
            return false
        }
    }
}

/// The pipeline's last handler: collects plaintext, the handshake's outcome
/// and the first error, and notices when the TLS connection closed.
private final class Observer: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private(set) var handshakeComplete = false
    private(set) var negotiatedProtocol: String?
    private(set) var inactive = false
    private var plaintexts: [ByteBuffer] = []
    private var error: (any Error)?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        if buffer.readableBytes > 0 { plaintexts.append(buffer) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted(let negotiated)? = event as? TLSUserEvent {
            handshakeComplete = true
            negotiatedProtocol = negotiated
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // The first error is the cause; later ones (unclean shutdown) follow from it.
        if self.error == nil { self.error = error }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inactive = true
    }

    func takePlaintexts(into output: inout [ByteBuffer]) {
        guard !plaintexts.isEmpty else { return }
        output.append(contentsOf: plaintexts)
        plaintexts.removeAll(keepingCapacity: true)
    }

    func takeError() -> (any Error)? {
        defer { error = nil }
        return error
    }
}
