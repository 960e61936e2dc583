import Identity
import Logging
import Multiformats
import Multistream
import NIOCore
import Noise
import Yamux

/// Drives one TCP connection through the whole libp2p stack on its event loop:
/// multistream-select (`/noise`), the Noise handshake, multistream-select
/// (`/yamux/1.0.0`) over Noise, then Yamux with per-stream multistream-select.
///
/// All protocol logic lives in the sans-IO state machines; this handler only moves
/// bytes between them and the socket and turns their events into promises.
final class ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase {
        case securityNegotiation
        case handshake
        case muxerNegotiation
        case established
        case closed
    }

    struct StreamState {
        enum Negotiation {
            case outbound(promise: EventLoopPromise<MuxedStream>, protocols: [String])
            case inbound
        }
        var negotiator: MultistreamNegotiation?
        var negotiation: Negotiation?
        var timeout: Scheduled<Void>?
        var protocolID: String?
        var stream: MuxedStream?
        /// Data received and not yet read by the application (bounded by the
        /// Yamux window); exists once the stream's protocol is agreed.
        var inbox: StreamInbox?
        /// Shared with the stream's writer: what it may hand over before it waits.
        var writeCredit: StreamWriteCredit?
        var remoteClosedWrite = false
        /// The application has read the end of the stream (or said it reads no more).
        var endOfStreamDelivered = false
        var localClosedWrite = false
        var discardInbound = false
    }

    let configuration: TransportConfiguration
    let localKey: PrivateKey
    let localPeer: PeerID
    let direction: ConnectionDirection
    let expectedRemotePeer: PeerID?
    let acceptor: InboundStreamAcceptor
    let connectionID: UInt64
    let established: EventLoopPromise<Connection>
    let eventLoop: EventLoop
    var logger: Logger

    private var context: ChannelHandlerContext?
    private var phase: Phase = .securityNegotiation
    private var negotiator: MultistreamNegotiation?
    private var handshake: NoiseHandshake?
    private var secure: NoiseTransport?
    private var session: YamuxSession?
    private var connection: Connection?
    private var streams: [UInt32: StreamState] = [:]
    private var upgradeTimeout: Scheduled<Void>?
    /// The Yamux session's timer (its round-trip pings).
    private var sessionTick: Scheduled<Void>?
    private var pendingOutput: ByteBuffer
    private var closeError: TransportError?

    init(
        configuration: TransportConfiguration, localKey: PrivateKey, direction: ConnectionDirection,
        expectedRemotePeer: PeerID?, acceptor: InboundStreamAcceptor, connectionID: UInt64,
        established: EventLoopPromise<Connection>, logger: Logger
    ) {
        self.configuration = configuration
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.direction = direction
        self.expectedRemotePeer = expectedRemotePeer
        self.acceptor = acceptor
        self.connectionID = connectionID
        self.established = established
        self.eventLoop = established.futureResult.eventLoop
        self.logger = logger
        self.pendingOutput = ByteBuffer()
    }

    // MARK: - Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        pendingOutput = context.channel.allocator.buffer(capacity: 4096)
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private var started = false
    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        logger[metadataKey: "conn"] = "\(connectionID)"
        let timeout = configuration.upgradeTimeout
        // Scheduled tasks run on this loop, where the handler lives.
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        upgradeTimeout = context.eventLoop.scheduleTask(in: timeout) {
            bound.value.fail(.upgradeTimeout(phase: "\(bound.value.phase)"))
        }
        let protocols = [TransportConfiguration.noiseProtocolID]
        if direction == .outbound {
            var negotiator = MultistreamNegotiation.initiator(protocols: protocols, limits: configuration.multistreamLimits)
            negotiator.start(into: &pendingOutput)
            self.negotiator = negotiator
            flushOutput()
        } else {
            var negotiator = MultistreamNegotiation.responder(limits: configuration.multistreamLimits) {
                protocols.contains($0)
            }
            negotiator.start(into: &pendingOutput)
            self.negotiator = negotiator
            flushOutput()
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        do {
            try process(&bytes)
        } catch let error as TransportError {
            fail(error)
        } catch let error as NoiseError {
            fail(.securityFailed(reason: "\(error)"))
        } catch let error as MultistreamError {
            fail(.negotiationFailed(phase: phase == .securityNegotiation ? "security" : "muxer", reason: "\(error)"))
        } catch {
            fail(.muxerFailed(reason: "\(error)"))
        }
    }

    /// Readers that got data during this burst of socket reads, resumed once
    /// each at its end (`channelReadComplete`), not once per read.
    private var inboxesToWake: [StreamInbox] = []

    private func wakeReaders() {
        guard !inboxesToWake.isEmpty else { return }
        let inboxes = inboxesToWake
        inboxesToWake.removeAll(keepingCapacity: true)
        for inbox in inboxes { inbox.wake() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable && session != nil {
            do {
                try drainSession()
            } catch {
                fail(.securityFailed(reason: "\(error)"))
            }
            flushOutput()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        wakeReaders()
        flushOutput()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        teardown(closeError ?? .connectionClosed)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(.dialFailed(address: "\(context.remoteAddress.map { "\($0)" } ?? "?")", reason: "\(error)"))
    }

    // MARK: - Upgrade

    private func process(_ bytes: inout ByteBuffer) throws {
        while true {
            switch phase {
            case .securityNegotiation:
                guard var negotiator else { return }
                let outcome = try negotiator.receive(&bytes, output: &pendingOutput)
                self.negotiator = negotiator
                guard let agreed = outcome else { return }
                logger.trace("security protocol agreed", metadata: ["protocol": "\(agreed)"])
                self.negotiator = nil
                var handshake = NoiseHandshake(
                    initiator: direction == .outbound, identity: localKey, expectedRemotePeer: expectedRemotePeer)
                handshake.start(into: &pendingOutput)
                self.handshake = handshake
                phase = .handshake
                flushOutput()
            case .handshake:
                guard var handshake else { return }
                let done = try handshake.receive(&bytes, output: &pendingOutput)
                self.handshake = handshake
                flushOutput()
                guard let result = done else { return }
                self.handshake = nil
                secure = result.transport
                remotePeer = result.remotePeer
                remotePublicKey = result.remotePublicKey
                logger[metadataKey: "peer"] = "\(result.remotePeer)"
                phase = .muxerNegotiation
                let protocols = [TransportConfiguration.yamuxProtocolID]
                if direction == .outbound {
                    var negotiator = MultistreamNegotiation.initiator(
                        protocols: protocols, limits: configuration.multistreamLimits)
                    var plain = ByteBuffer()
                    negotiator.start(into: &plain)
                    self.negotiator = negotiator
                    try encryptAndQueue([plain])
                    flushOutput()
                } else {
                    var negotiator = MultistreamNegotiation.responder(limits: configuration.multistreamLimits) {
                        protocols.contains($0)
                    }
                    var plain = ByteBuffer()
                    negotiator.start(into: &plain)
                    self.negotiator = negotiator
                    try encryptAndQueue([plain])
                    flushOutput()
                }
                // Whatever followed the last handshake message is ciphertext.
                bytes = result.remainder
            case .muxerNegotiation, .established:
                guard secure != nil else { return }
                var plaintexts: [ByteBuffer] = []
                try secure!.decrypt(&bytes, into: &plaintexts)
                for var plain in plaintexts {
                    try processPlaintext(&plain)
                }
                return
            case .closed:
                return
            }
        }
    }

    private func processPlaintext(_ plain: inout ByteBuffer) throws {
        if phase == .muxerNegotiation {
            guard var negotiator else { return }
            var reply = ByteBuffer()
            let outcome = try negotiator.receive(&plain, output: &reply)
            self.negotiator = negotiator
            if reply.readableBytes > 0 { try encryptAndQueue([reply]) }
            guard outcome != nil else { return }
            self.negotiator = nil
            try becomeEstablished()
        }
        guard phase == .established, session != nil, plain.readableBytes > 0 else { return }
        let events = try session!.receive(&plain, now: .now())
        for event in events { handle(event) }
        try drainSession()
    }

    private var remotePeer: PeerID?
    private var remotePublicKey: PublicKey?

    private func becomeEstablished() throws {
        guard let context, let remotePeer, let remotePublicKey else { return }
        upgradeTimeout?.cancel()
        upgradeTimeout = nil
        phase = .established
        session = YamuxSession(isClient: direction == .outbound, configuration: configuration.yamux)
        tickSession()
        let remoteAddress =
            (context.channel.remoteAddress.flatMap { try? Multiaddr(socketAddress: $0) })
            ?? Multiaddr.unspecifiedTCP
        let localAddress = context.channel.localAddress.flatMap { try? Multiaddr(socketAddress: $0) }
        let connection = Connection(
            id: connectionID, localPeer: localPeer, remotePeer: remotePeer, remotePublicKey: remotePublicKey,
            direction: direction, remoteAddress: remoteAddress, localAddress: localAddress,
            handler: NIOLoopBound(self, eventLoop: context.eventLoop), channel: context.channel)
        self.connection = connection
        logger.debug("connection established", metadata: ["direction": "\(direction.rawValue)"])
        established.succeed(connection)
    }

    // MARK: - Session events

    private func handle(_ event: YamuxEvent) {
        logger.trace("yamux event", metadata: ["event": "\(event)"])
        switch event {
        case .inboundStream(let id):
            var state = StreamState()
            state.negotiation = .inbound
            let acceptor = self.acceptor
            var negotiator = MultistreamNegotiation.responder(limits: configuration.multistreamLimits) {
                acceptor.supports(protocolID: $0)
            }
            var hello = ByteBuffer()
            negotiator.start(into: &hello)
            state.negotiator = negotiator
            state.timeout = scheduleNegotiationTimeout(streamID: id, protocols: [])
            streams[id] = state
            session?.write(streamID: id, data: hello)
        case .data(let id, var data):
            receiveData(streamID: id, data: &data)
        case .remoteClosedWrite(let id):
            guard var state = streams[id] else { return }
            state.remoteClosedWrite = true
            if state.negotiation != nil {
                streams[id] = state
                failNegotiation(streamID: id, error: .negotiationFailed(phase: "stream", reason: "closed by remote"))
                return
            }
            streams[id] = state
            state.inbox?.finish()
            forgetIfFinished(id)
        case .reset(let id):
            guard streams[id] != nil else { return }
            if streams[id]!.negotiation != nil {
                failNegotiation(streamID: id, error: .streamReset)
            } else {
                finishStream(id, error: .streamReset)
            }
        case .sendWindowOpened(let id):
            releaseWriters(streamID: id)
        case .closed(let id):
            forgetIfFinished(id)
        case .goAway:
            logger.debug("remote sent go-away")
        case .ping, .pong:
            break
        }
    }

    private func receiveData(streamID id: UInt32, data: inout ByteBuffer) {
        guard var state = streams[id] else { return }
        if state.discardInbound {
            session?.consumed(streamID: id, bytes: data.readableBytes, now: .now())
            return
        }
        if var negotiator = state.negotiator {
            var reply = ByteBuffer()
            let consumedBefore = data.readableBytes
            do {
                let outcome = try negotiator.receive(&data, output: &reply)
                state.negotiator = negotiator
                streams[id] = state
                session?.consumed(streamID: id, bytes: consumedBefore - data.readableBytes, now: .now())
                if reply.readableBytes > 0 { session?.write(streamID: id, data: reply) }
                guard let agreed = outcome else { return }
                completeNegotiation(streamID: id, protocolID: agreed)
                state = streams[id]!
            } catch {
                failNegotiation(streamID: id, error: .negotiationFailed(phase: "stream", reason: "\(error)"))
                return
            }
            // Bytes after the negotiation belong to the application protocol.
            guard data.readableBytes > 0 else { return }
        }
        guard let inbox = state.inbox else { return }
        let (needsWake, discarded) = inbox.push(data)
        if needsWake { inboxesToWake.append(inbox) }
        if discarded > 0 { session?.consumed(streamID: id, bytes: discarded, now: .now()) }
    }

    private func completeNegotiation(streamID id: UInt32, protocolID: String) {
        guard var state = streams[id], let connection else { return }
        state.timeout?.cancel()
        state.timeout = nil
        state.negotiator = nil
        state.protocolID = protocolID
        let inbox = StreamInbox(reportThreshold: Int(configuration.yamux.initialWindow / 8))
        state.inbox = inbox
        let credit = StreamWriteCredit(limit: configuration.maxQueuedBytesPerStream)
        state.writeCredit = credit
        let stream = MuxedStream(
            streamID: id, protocolID: protocolID, connection: connection, inbox: inbox, credit: credit)
        state.stream = stream
        let negotiation = state.negotiation
        state.negotiation = nil
        streams[id] = state
        switch negotiation {
        case .outbound(let promise, _):
            promise.succeed(stream)
        case .inbound:
            logger.trace("inbound stream", metadata: ["protocol": "\(protocolID)", "stream": "\(id)"])
            acceptor.accept(stream)
        case nil:
            break
        }
    }

    private func failNegotiation(streamID id: UInt32, error: TransportError) {
        guard let state = streams.removeValue(forKey: id) else { return }
        state.timeout?.cancel()
        if case .outbound(let promise, _) = state.negotiation {
            promise.fail(error)
        }
        session?.reset(streamID: id)
        try? drainSession()
        flushOutput()
    }

    private func scheduleNegotiationTimeout(streamID id: UInt32, protocols: [String]) -> Scheduled<Void>? {
        guard let context else { return nil }
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        return context.eventLoop.scheduleTask(in: configuration.streamNegotiationTimeout) {
            bound.value.failNegotiation(streamID: id, error: .streamNegotiationTimeout(protocols: protocols))
        }
    }

    private func finishStream(_ id: UInt32, error: TransportError) {
        guard let state = streams.removeValue(forKey: id) else { return }
        state.timeout?.cancel()
        state.inbox?.fail(error)
        state.writeCredit?.fail(error)
    }

    private func releaseWriters(streamID id: UInt32) {
        guard let credit = streams[id]?.writeCredit, let session else { return }
        credit.queuedChanged(session.queuedBytes(streamID: id))
    }

    // MARK: - Stream operations (called on the event loop by Connection/MuxedStream)

    func openStream(protocols: [String]) -> EventLoopFuture<MuxedStream> {
        guard let context, phase == .established, session != nil else {
            return eventLoopFailed(.connectionClosed)
        }
        let promise = context.eventLoop.makePromise(of: MuxedStream.self)
        do {
            let id = try session!.openStream()
            var state = StreamState()
            var negotiator = MultistreamNegotiation.initiator(protocols: protocols, limits: configuration.multistreamLimits)
            var hello = ByteBuffer()
            negotiator.start(into: &hello)
            state.negotiator = negotiator
            state.negotiation = .outbound(promise: promise, protocols: protocols)
            state.timeout = scheduleNegotiationTimeout(streamID: id, protocols: protocols)
            streams[id] = state
            session!.write(streamID: id, data: hello)
            try drainSession()
            flushOutput()
        } catch let error as TransportError {
            promise.fail(error)
        } catch {
            promise.fail(TransportError.muxerFailed(reason: "\(error)"))
        }
        return promise.futureResult
    }

    /// The reader took `bytes` from a stream's inbox: grant them back to the remote.
    func consumed(streamID id: UInt32, bytes: Int) {
        guard let state = streams[id], session != nil else { return }
        session!.consumed(streamID: id, bytes: bytes, now: .now())
        // Reports scale with the window: fewer hops to the event loop for a fast reader.
        if let target = session!.windowTarget(streamID: id) { state.inbox?.setReportThreshold(Int(target / 8)) }
        try? drainSession()
        flushOutput()
    }

    /// The reader reached the end of a stream.
    func endOfStreamRead(streamID id: UInt32) {
        guard streams[id] != nil else { return }
        streams[id]!.endOfStreamDelivered = true
        forgetIfFinished(id)
    }

    /// Takes a write the stream's writer handed over (and counted in `credit`)
    /// without waiting; a failure goes to the credit, which the next write throws.
    func write(streamID id: UInt32, data: ByteBuffer, credit: StreamWriteCredit) {
        guard session != nil else { return credit.fail(closeError ?? .connectionClosed) }
        guard let state = streams[id] else { return credit.fail(.streamReset) }
        if state.localClosedWrite { return credit.fail(.streamClosedForWriting) }
        session!.write(streamID: id, data: data)
        do { try drainSession() } catch { return credit.fail(.muxerFailed(reason: "\(error)")) }
        flushOutput()
        // Flushing can close the connection (write error), which drops the session.
        guard let session else { return credit.fail(closeError ?? .connectionClosed) }
        credit.processed(data.readableBytes, queued: session.queuedBytes(streamID: id))
    }

    func closeWrite(streamID id: UInt32) -> EventLoopFuture<Void> {
        guard let context, session != nil else { return eventLoopFailed(closeError ?? .connectionClosed) }
        guard var state = streams[id] else { return context.eventLoop.makeSucceededVoidFuture() }
        if !state.localClosedWrite {
            state.localClosedWrite = true
            state.writeCredit?.fail(.streamClosedForWriting)
            streams[id] = state
            session!.closeWrite(streamID: id)
            try? drainSession()
            flushOutput()
            forgetIfFinished(id)
        }
        return context.eventLoop.makeSucceededVoidFuture()
    }

    /// Drops our record of a stream once both directions are done and nothing is
    /// left to read, so the table does not grow with finished streams.
    private func forgetIfFinished(_ id: UInt32) {
        guard let state = streams[id], state.remoteClosedWrite, state.localClosedWrite,
            state.endOfStreamDelivered || state.discardInbound,
            !(state.writeCredit?.hasWaiters ?? false)
        else { return }
        streams[id] = nil
    }

    /// Number of streams the handler tracks (for tests of cleanup).
    var trackedStreamCount: Int { streams.count }

    func reset(streamID id: UInt32) {
        guard streams[id] != nil else { return }
        finishStream(id, error: .streamReset)
        session?.reset(streamID: id)
        try? drainSession()
        flushOutput()
    }

    func discardInbound(streamID id: UInt32) {
        guard var state = streams[id] else { return }
        state.discardInbound = true
        let released = state.inbox?.discardAll() ?? 0
        streams[id] = state
        session?.consumed(streamID: id, bytes: released, now: .now())
        try? drainSession()
        flushOutput()
        forgetIfFinished(id)
    }

    func closeGracefully() -> EventLoopFuture<Void> {
        guard let context else { return eventLoopFailed(.connectionClosed) }
        if session != nil {
            session!.goAway()
            try? drainSession()
            flushOutput()
        }
        closeError = .connectionClosed
        let promise = context.eventLoop.makePromise(of: Void.self)
        context.close(promise: promise)
        return promise.futureResult.recover { _ in }
    }

    /// Runs the session's timer (a round-trip ping when due) and schedules the next run.
    private func tickSession() {
        guard let context, session != nil else { return }
        let next = session!.tick(now: .now())
        try? drainSession()
        flushOutput()
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        sessionTick = context.eventLoop.scheduleTask(deadline: next) { bound.value.tickSession() }
    }

    // MARK: - Output

    /// Stream data framed per batch while the socket keeps up.
    static let outputBatch = 256 * 1024

    /// Moves what the Yamux session has to send through Noise into the output
    /// buffer: control frames always, stream data only while the channel is
    /// writable. Data the socket cannot take yet stays in the streams' queues,
    /// plaintext, where it counts against their writers' credit (TCP's
    /// backpressure reaches the writers); it goes out on `channelWritabilityChanged`.
    private func drainSession() throws {
        while session != nil {
            let writable = context?.channel.isWritable ?? false
            let output = session!.takeOutput(dataBudget: writable ? Self.outputBatch : 0)
            try encryptAndQueue(output.pieces)
            for id in output.streamsSent { releaseWriters(streamID: id) }
            guard writable, session?.hasDataToSend == true else { return }
            // More data than one batch: send this one, then see whether the socket took it.
            flushOutput()
        }
    }

    /// Seals plaintext pieces (in order) into Noise frames in the output buffer.
    private func encryptAndQueue(_ pieces: [ByteBuffer]) throws {
        guard secure != nil, !pieces.isEmpty else { return }
        try secure!.encrypt(pieces: pieces, into: &pendingOutput)
    }

    private func flushOutput() {
        guard let context, pendingOutput.readableBytes > 0 else { return }
        let out = pendingOutput
        // Allocated on demand: an idle connection holds no output buffer (4 KiB each before).
        pendingOutput = ByteBuffer()
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    // MARK: - Failure

    private func eventLoopFailed<T>(_ error: TransportError) -> EventLoopFuture<T> {
        eventLoop.makeFailedFuture(error)
    }

    /// Fails the connection: logs why, sends go-away if a session exists, closes TCP.
    func fail(_ error: TransportError) {
        guard phase != .closed else { return }
        logger.debug("connection failed", metadata: ["error": "\(error)"])
        closeError = error
        if session != nil {
            session!.goAway(protocolError: true)
            try? drainSession()
            flushOutput()
        }
        teardown(error)
        context?.close(promise: nil)
    }

    private func teardown(_ error: TransportError) {
        guard phase != .closed else { return }
        phase = .closed
        upgradeTimeout?.cancel()
        sessionTick?.cancel()
        established.fail(error)
        let all = streams
        streams = [:]
        for (_, state) in all {
            state.timeout?.cancel()
            if case .outbound(let promise, _) = state.negotiation { promise.fail(error) }
            // Buffered data is still readable, then the reader gets the error.
            state.inbox?.fail(error)
            state.writeCredit?.fail(error)
        }
        session = nil
    }
}
