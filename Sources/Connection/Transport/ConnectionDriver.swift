import Identity
import Logging
import Multiformats
import NIOCore
import LibP2PSecurity
import Yamux

/// Runs one connection on its event loop: feeds the bytes that arrive to the
/// upgrade machine, then to the secure session and the stream table, and turns
/// their events into promises, inboxes and writer credit. Protocol logic lives
/// in the sans-IO machines; this only moves bytes and events between them,
/// the byte sink, timers and the application. What the application asks of
/// it is in `ConnectionDriver+StreamOperations.swift`; the members that file
/// uses are internal rather than private (the driver is internal to Transport).
final class ConnectionDriver: StreamMuxerDriver {
    enum State {
        /// Created, waiting for the byte stream to become active.
        case idle
        case upgrading(ConnectionUpgrade, deadline: Scheduled<Void>?)
        case established(Established)
        /// Placeholder while the upgrade machine is mutated in place (no second copy, no CoW).
        case busy
        case closed(TransportError)
    }

    /// The established connection's machines. A class so that the hot path
    /// mutates them in place: copying them out of the enum and back retained
    /// and released every buffer and table they hold, on every operation
    /// (about 10% more CPU per byte in the one-stream benchmark).
    final class Established {
        var session: any SecureSession
        var streams: StreamTable
        let connection: Connection

        init(session: any SecureSession, streams: StreamTable, connection: Connection) {
            self.session = session
            self.streams = streams
            self.connection = connection
        }
    }

    /// The application side of a stream.
    enum Endpoint {
        case opening(EventLoopPromise<MuxedStream>, deadline: Scheduled<Void>?)
        case accepting(deadline: Scheduled<Void>?)
        case open(MuxedStream)
    }

    let eventLoop: EventLoop
    let id: UInt64
    private let parameters: Parameters
    private var configuration: TransportConfiguration { parameters.upgrader.configuration }
    private let established: EventLoopPromise<Connection>
    /// Completed when the connection is torn down.
    let closed: EventLoopPromise<Void>
    var logger: Logger
    private var sink: ByteSink?
    var state: State = .idle
    var endpoints: [UInt32: Endpoint] = [:]
    private var pendingOutput = ByteBuffer()
    /// Readers that got data during this burst of reads, resumed once each at
    /// its end (`readComplete`), not once per read.
    private var inboxesToWake: [StreamInbox] = []

    private let metrics = ConnectionMetrics()
    /// Runs while the sink takes nothing (see `TransportConfiguration.writeStallTimeout`).
    private var writeStall = WriteStallWatch()

    /// Stream data framed per batch while the sink keeps up.
    static let outputBatch = 256 * 1024

    init(parameters: Parameters, id: UInt64, eventLoop: EventLoop, established: EventLoopPromise<Connection>) {
        self.parameters = parameters
        self.id = id
        self.eventLoop = eventLoop
        self.established = established
        self.closed = eventLoop.makePromise(of: Void.self)
        var logger = parameters.upgrader.logger
        logger[metadataKey: "conn"] = "\(id)"
        self.logger = logger
    }

    // MARK: - Byte stream events

    /// The byte stream is ready: start the upgrade and its deadline.
    func start(sink: ByteSink) {
        guard case .idle = state else { return }
        self.sink = sink
        let upgrader = parameters.upgrader
        var upgrade = ConnectionUpgrade(
            role: parameters.role, localKey: upgrader.localKey, expectedRemotePeer: parameters.expectedRemotePeer,
            security: upgrader.security, muxers: upgrader.muxers, limits: configuration.multistreamLimits)
        upgrade.start(output: &pendingOutput)
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let deadline = eventLoop.scheduleTask(in: TimeAmount(configuration.upgradeTimeout)) {
            let driver = bound.value
            guard case .upgrading(let upgrade, _) = driver.state else { return }
            driver.fail(.upgradeTimeout(phase: upgrade.phase))
        }
        state = .upgrading(upgrade, deadline: deadline)
        if earlyInput.readableBytes > 0 {
            var early = earlyInput
            earlyInput = ByteBuffer()
            receive(&early)
        }
        flushOutput()
    }

    /// Bytes that arrived before `start`.
    private var earlyInput = ByteBuffer()

    func receive(_ bytes: inout ByteBuffer) {
        metrics.bytesReceived.increment(by: bytes.readableBytes)
        if case .idle = state {
            // An in-memory peer may speak before our start; keep it for then.
            earlyInput.writeBuffer(&bytes)
            return
        }
        do {
            try process(&bytes)
        } catch {
            fail(error)
        }
    }

    /// The end of a burst of reads.
    func readComplete() {
        wakeReaders()
        flushOutput()
    }

    func writabilityChanged() {
        guard sink?.isWritable == true else { return }
        // The socket took bytes: not stalled.
        writeStall.cancel()
        guard case .established = state else { return }
        do {
            try drainSession()
        } catch {
            fail(error)
        }
        flushOutput()
    }

    /// The byte stream closed (EOF, error, or our own close).
    func transportClosed() {
        sink = nil
        teardown(closeError ?? .connectionClosed)
    }

    func transportFailed(_ error: any Error) {
        fail(.io(underlying: error))
    }

    var closeError: TransportError? {
        if case .closed(let error) = state { return error }
        return nil
    }

    // MARK: - Upgrade

    private func process(_ bytes: inout ByteBuffer) throws(TransportError) {
        switch state {
        case .upgrading(var upgrade, let deadline):
            state = .busy
            let result: ConnectionUpgrade.Upgraded?
            do {
                result = try upgrade.receive(&bytes, output: &pendingOutput)
            } catch {
                state = .upgrading(upgrade, deadline: deadline)
                throw error
            }
            guard let upgraded = result else {
                state = .upgrading(upgrade, deadline: deadline)
                flushOutput()
                return
            }
            deadline?.cancel()
            try becomeEstablished(upgraded)
        case .established:
            try withEstablished { established throws(TransportError) in
                var plaintexts: [ByteBuffer] = []
                do {
                    try established.session.receive(&bytes, plaintexts: &plaintexts, output: &pendingOutput)
                } catch {
                    throw .securityFailed(protocolID: established.connection.security, underlying: error)
                }
                try feedMuxer(plaintexts, established)
            }
            try drainSession()
        case .idle, .busy, .closed:
            return
        }
    }

    private func becomeEstablished(_ upgraded: ConnectionUpgrade.Upgraded) throws(TransportError) {
        let upgrader = parameters.upgrader
        let (localAddress, remoteAddress) = parameters.addresses.resolve()
        let connection = Connection(
            id: id, localPeer: upgrader.localPeer, remotePeer: upgraded.remotePeer,
            remotePublicKey: upgraded.remotePublicKey, direction: parameters.direction,
            remoteAddress: remoteAddress, localAddress: localAddress,
            transport: parameters.transport, security: upgraded.securityProtocol, muxer: upgraded.muxer,
            driver: NIOLoopBound<any StreamMuxerDriver>(self, eventLoop: eventLoop), closeFuture: closed.futureResult,
            channel: parameters.addresses.channel)
        let acceptor = upgrader.acceptor
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let loop = eventLoop
        // The budget took one of our idle streams back for a newcomer: reset it here, on our loop.
        let reclaim: @Sendable (UInt32) -> Void = { id in loop.execute { bound.value.reclaimed(streamID: id) } }
        let streams = StreamTable(
            isClient: upgraded.role == .initiator, configuration: configuration.yamux,
            limits: configuration.multistreamLimits, maxNegotiatingInbound: configuration.maxNegotiatingInboundStreams,
            memory: StreamMemoryLedger(
                budget: upgrader.memoryBudget, peer: upgraded.remotePeer, remoteAddress: remoteAddress, reclaim: reclaim),
            supports: { acceptor.supports(protocolID: $0) })
        state = .established(Established(session: upgraded.session, streams: streams, connection: connection))
        logger[metadataKey: "peer"] = "\(upgraded.remotePeer)"
        logger.debug(
            "connection established",
            metadata: [
                "direction": "\(parameters.direction.rawValue)", "security": "\(upgraded.securityProtocol)",
                "muxer": "\(upgraded.muxer)", "early": "\(upgraded.earlyMuxerNegotiation)",
            ])
        metrics.established(
            direction: parameters.direction, transport: parameters.transport, security: upgraded.securityProtocol)
        established.succeed(connection)
        tickSession()
        // Whatever followed the agreement is the muxer's.
        try withEstablished { established throws(TransportError) in
            try feedMuxer(upgraded.plaintexts, established)
        }
        try drainSession()
        flushOutput()
    }

    /// Hands decrypted bytes to the stream table (one clock reading for the lot).
    private func feedMuxer(_ plaintexts: [ByteBuffer], _ established: Established) throws(TransportError) {
        let now = NIODeadline.now()
        for var plain in plaintexts where plain.readableBytes > 0 {
            do {
                events.append(contentsOf: try established.streams.receive(&plain, now: now))
            } catch {
                throw .muxerFailed(underlying: error)
            }
        }
    }

    /// Events gathered while the established state is checked out.
    var events: [StreamTable.Event] = []

    /// Runs `body` on the established machines, then handles the stream events
    /// it produced. Nothing in `body` may re-enter the driver.
    func withEstablished(_ body: (Established) throws(TransportError) -> Void) throws(TransportError) {
        guard case .established(let established) = state else { return }
        do {
            try body(established)
        } catch {
            events.removeAll()
            throw error
        }
        handleEvents()
    }

    private func handleEvents() {
        var batch: [StreamTable.Event] = []
        while !events.isEmpty {
            swap(&batch, &events)
            for event in batch { handle(event) }
            batch.removeAll(keepingCapacity: true)
        }
        // Keep the storage for the next round.
        if events.capacity < batch.capacity { swap(&batch, &events) }
    }

    // MARK: - Stream events

    private func handle(_ event: StreamTable.Event) {
        switch event {
        case .incoming(let id):
            trackInbound(id)
        case .opened(let id, let protocolID, let inbound):
            streamOpened(id, protocolID: protocolID, inbound: inbound)
        case .negotiationFailed(let id, let error):
            switch endpoints.removeValue(forKey: id) {
            case .opening(let promise, let deadline)?:
                deadline?.cancel()
                promise.fail(error)
            case .accepting(let deadline)?:
                deadline?.cancel()
            case .open?, nil:
                break
            }
        case .data(let id, let data):
            guard case .open(let stream)? = endpoints[id] else {
                // Not ours any more: grant the bytes back.
                _ = try? withEstablished { $0.streams.consumed(id, bytes: data.readableBytes, now: .now()) }
                return
            }
            let (needsWake, discarded) = stream.inbox.push(data)
            if needsWake { inboxesToWake.append(stream.inbox) }
            if discarded > 0 { _ = try? withEstablished { $0.streams.consumed(id, bytes: discarded, now: .now()) } }
        case .remoteClosedWrite(let id):
            if case .open(let stream)? = endpoints[id] { stream.inbox.finish() }
        case .reset(let id):
            if case .open(let stream)? = endpoints.removeValue(forKey: id) {
                stream.inbox.fail(.streamReset)
                stream.credit.fail(.streamReset)
            }
        case .sendWindowOpened(let id):
            releaseWriters(id)
        case .finished(let id):
            endpoints[id] = nil
        case .goAway:
            logger.debug("remote sent go-away")
        case .limitReached(let limit):
            reportLimit(limit)
        }
    }

    private func streamOpened(_ id: UInt32, protocolID: String, inbound: Bool) {
        guard case .established(let established) = state else { return }
        let inbox = StreamInbox(reportThreshold: Int(configuration.yamux.initialWindow / 8))
        let credit = StreamWriteCredit(limit: configuration.maxQueuedBytesPerStream)
        let stream = MuxedStream(
            streamID: id, protocolID: protocolID, connection: established.connection, inbox: inbox, credit: credit)
        let endpoint = endpoints.updateValue(.open(stream), forKey: id)
        switch endpoint {
        case .opening(let promise, let deadline)?:
            deadline?.cancel()
            promise.succeed(stream)
        case .accepting(let deadline)?:
            deadline?.cancel()
            logger.trace("inbound stream", metadata: ["protocol": "\(protocolID)", "stream": "\(id)"])
            parameters.upgrader.acceptor.accept(stream)
        case .open?, nil:
            if inbound { parameters.upgrader.acceptor.accept(stream) }
        }
        metrics.streamOpened(protocolID: protocolID, inbound: inbound)
    }

    private func releaseWriters(_ id: UInt32) {
        guard case .open(let stream)? = endpoints[id], case .established(let established) = state else { return }
        stream.credit.queuedChanged(established.streams.queuedBytes(id))
    }

    func scheduleNegotiationDeadline(_ id: UInt32) -> Scheduled<Void> {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        return eventLoop.scheduleTask(in: TimeAmount(configuration.streamNegotiationTimeout)) {
            bound.value.negotiationTimedOut(id)
        }
    }

    private func negotiationTimedOut(_ id: UInt32) {
        try? withEstablished { established in
            if let event = established.streams.negotiationTimedOut(id) { events.append(event) }
        }
        try? drainSession()
        flushOutput()
    }

    /// The muxer session's timer (its round-trip pings).
    private var sessionTick: Scheduled<Void>?

    /// Runs the session's timer and schedules the next run.
    private func tickSession() {
        var next: NIODeadline?
        try? withEstablished { next = $0.streams.tick(now: .now()) }
        guard let next else { return }
        try? drainSession()
        flushOutput()
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        sessionTick = eventLoop.scheduleTask(deadline: next) { bound.value.tickSession() }
    }

    // MARK: - Output

    /// Moves what the muxer has to send through the secure session into the
    /// output buffer: control frames always, stream data only while the sink is
    /// writable. Data the sink cannot take yet stays in the streams' queues,
    /// plaintext, where it counts against their writers' credit (backpressure
    /// reaches the writers); it goes out on `writabilityChanged`.
    func drainSession() throws(TransportError) {
        while case .established = state {
            let writable = sink?.isWritable ?? false
            // Control frames wait in the session too while the sink is full:
            // there they are bounded (pongs merged, a backlog fails the session)
            // instead of piling up in the channel behind a peer that does not read.
            guard writable else {
                watchWriteStall()
                return
            }
            var sent: [UInt32] = []
            var more = false
            try withEstablished { established throws(TransportError) in
                let output = established.streams.takeOutput(dataBudget: Self.outputBatch)
                if !output.pieces.isEmpty {
                    do {
                        try established.session.encrypt(pieces: output.pieces, into: &pendingOutput)
                    } catch {
                        throw .securityFailed(protocolID: established.connection.security, underlying: error)
                    }
                }
                sent = output.streamsSent
                more = established.streams.hasDataToSend
            }
            for id in sent { releaseWriters(id) }
            guard more else { return }
            // More data than one batch: send this one, then see whether the sink took it.
            flushOutput()
        }
    }

    func flushOutput() {
        guard let sink, pendingOutput.readableBytes > 0 else { return }
        let out = pendingOutput
        // Allocated on demand: an idle connection holds no output buffer.
        pendingOutput = ByteBuffer()
        metrics.bytesSent.increment(by: out.readableBytes)
        sink.write(out)
        if !sink.isWritable { watchWriteStall() }
    }

    private func wakeReaders() {
        guard !inboxesToWake.isEmpty else { return }
        let inboxes = inboxesToWake
        inboxesToWake.removeAll(keepingCapacity: true)
        for inbox in inboxes { inbox.wake() }
    }

    // MARK: - Limits

    /// A limit refused something on this connection: the upgrader's owner counts it.
    func reportLimit(_ limit: Limit) {
        guard case .established(let established) = state else { return }
        let connection = established.connection
        parameters.upgrader.onLimitReached(
            LimitRefusal(limit, peer: connection.remotePeer, address: connection.remoteAddress))
    }

    /// Starts the stall clock if it is not running: the sink is full.
    private func watchWriteStall() {
        guard let timeout = configuration.writeStallTimeout.map(TimeAmount.init), case .established = state else { return }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        writeStall.start(on: eventLoop, in: timeout) {
            let driver = bound.value
            driver.writeStall.cancel()
            // Writability came back meanwhile: `writabilityChanged` cancelled this, but be sure.
            guard driver.sink?.isWritable == false else { return }
            let limit = Limit.writeStall(milliseconds: timeout.nanoseconds / 1_000_000)
            driver.reportLimit(limit)
            driver.fail(.limitReached(limit))
        }
    }

    // MARK: - Failure

    /// Fails the connection: logs why, sends go-away if established, closes the byte stream.
    func fail(_ error: TransportError) {
        if case .closed = state { return }
        logger.debug("connection failed", metadata: ["error": "\(error)"])
        try? withEstablished { $0.streams.goAway(protocolError: true) }
        try? drainSession()
        flushOutput()
        teardown(error)
        closeSink()
    }

    /// Closes the byte stream and lets go of it (it may hold us: a channel's pipeline).
    func closeSink() {
        let sink = self.sink
        self.sink = nil
        sink?.close()
    }

    func teardown(_ error: TransportError) {
        let previous = state
        switch previous {
        case .closed: return
        case .upgrading(_, let deadline):
            deadline?.cancel()
            metrics.handshakeFailed(error)
        case .established(let established):
            let connection = established.connection
            metrics.closed(direction: connection.direction, transport: connection.transport, security: connection.security)
        case .idle, .busy: break
        }
        if case .established(let established) = previous { established.streams.releaseMemory() }
        state = .closed(error)
        sessionTick?.cancel()
        writeStall.cancel()
        established.fail(error)
        let all = endpoints
        endpoints = [:]
        for (_, endpoint) in all {
            switch endpoint {
            case .opening(let promise, let deadline):
                deadline?.cancel()
                promise.fail(error)
            case .accepting(let deadline):
                deadline?.cancel()
            case .open(let stream):
                // Buffered data is still readable, then the reader gets the error.
                stream.inbox.fail(error)
                stream.credit.fail(error)
            }
        }
        if case .established(let established) = previous {
            established.connection.markClosed()
        }
        closed.succeed(())
    }
}
