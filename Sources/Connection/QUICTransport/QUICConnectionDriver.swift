import Identity
import Logging
import Multiformats
import Multistream
import NIOCore
import QUIC
import TLS
import Transport

/// Runs one QUIC connection on its endpoint's event loop: datagrams from the
/// endpoint into `QUICConnection`, its datagrams back out, its timer, and its
/// streams turned into `MuxedStream`s, each negotiated by multistream-select as
/// on Yamux. QUIC secures and multiplexes by itself, so there is no upgrade:
/// the TLS handshake's libp2p certificate names the peer.
final class QUICConnectionDriver: StreamMuxerDriver {
    private enum State {
        case handshaking(deadline: Scheduled<Void>?)
        case established(Connection)
        case closed(TransportError)
    }

    /// One stream's phase and its application side.
    private enum Stream {
        /// Multistream-select in progress; `proposals` nil for an inbound stream.
        case negotiating(MultistreamNegotiation, proposals: [String]?, waiter: EventLoopPromise<MuxedStream>?, deadline: Scheduled<Void>?)
        case open(MuxedStream, Flags)
    }

    private struct Flags {
        var remoteFinished = false
        var localFinished = false
        /// The application reads no more: arriving data is granted back at once.
        var discardInbound = false
    }

    let eventLoop: EventLoop
    let id: UInt64
    let remote: SocketAddress
    let direction: ConnectionDirection
    private var quic: QUICConnection
    private let endpoint: QUICEndpoint
    private let upgrader: Upgrader
    private let expectedPeer: PeerID?
    private let remoteAddress: Multiaddr
    private let localAddress: Multiaddr
    private let established: EventLoopPromise<Connection>
    private let closed: EventLoopPromise<Void>
    private var state: State = .handshaking(deadline: nil)
    private var streams: [UInt64: Stream] = [:]
    private var negotiatingInbound = 0
    /// Bytes delivered to a stream's reader and not yet granted back. The
    /// reader reports what it took in batches; what is left unreported when it
    /// reaches the end, discards or the stream is reset is granted then, or
    /// the connection's window (MAX_DATA) would shrink for good.
    private var ungranted: [UInt64: Int] = [:]
    /// Streams whose writers wait for queued bytes to go out.
    private var queuedWriters: Set<UInt64> = []
    private var inboxesToWake: [StreamInbox] = []
    private var timer: Scheduled<Void>?
    private var timerDeadline: ContinuousClock.Instant?
    private var handshakeSlot: InboundHandshakeSlot?
    private var logger: Logger
    /// Set while `pump` runs: operations called from event handlers do not pump again.
    private var pumping = false

    private var configuration: TransportConfiguration { upgrader.configuration }

    init(
        quic: consuming QUICConnection, endpoint: QUICEndpoint, remote: SocketAddress, direction: ConnectionDirection,
        upgrader: Upgrader, expectedPeer: PeerID?, handshakeSlot: InboundHandshakeSlot?
    ) throws(TransportError) {
        self.quic = quic
        self.endpoint = endpoint
        self.eventLoop = endpoint.eventLoop
        self.remote = remote
        self.direction = direction
        self.upgrader = upgrader
        self.expectedPeer = expectedPeer
        self.handshakeSlot = handshakeSlot
        self.id = upgrader.nextConnectionID()
        self.remoteAddress = try Multiaddr(quicSocketAddress: remote)
        self.localAddress = endpoint.localMultiaddr
        self.established = eventLoop.makePromise(of: Connection.self)
        self.closed = eventLoop.makePromise(of: Void.self)
        var logger = upgrader.logger
        logger[metadataKey: "conn"] = "\(id)"
        logger[metadataKey: "transport"] = "quic-v1"
        self.logger = logger
    }

    var establishedFuture: EventLoopFuture<Connection> { established.futureResult }
    var closeFuture: EventLoopFuture<Void> { closed.futureResult }

    /// The IDs packets to us may carry, for the endpoint's routing.
    var routingIDs: [ConnectionID] {
        let original = quic.originalDestinationConnectionID
        return original.count > 0 && direction == .inbound ? [quic.localConnectionID, original] : [quic.localConnectionID]
    }

    /// Starts the handshake (a client's first flight) and its deadline.
    func start() {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let deadline = eventLoop.scheduleTask(in: TimeAmount(configuration.upgradeTimeout)) {
            let driver = bound.value
            guard case .handshaking = driver.state else { return }
            driver.quic.close(code: 0, reason: "handshake timeout")
            driver.pump()
            driver.teardown(.upgradeTimeout(phase: "QUIC handshake"))
        }
        state = .handshaking(deadline: deadline)
        pump()
    }

    // MARK: - Datagrams and time

    /// Takes a datagram without answering yet: the endpoint calls `readComplete`
    /// at the end of the socket's burst of reads, so one round of ACKs and
    /// data answers the whole burst (one ACK for many packets, one flush).
    func receive(_ datagram: [UInt8]) {
        quic.receive(datagram: datagram, now: .now)
    }

    /// The end of a burst of reads: answer what arrived.
    func readComplete() {
        pump()
    }

    var peerStatelessResetToken: [UInt8]? { quic.peerStatelessResetToken }

    /// The endpoint matched a datagram to the token of the peer's stateless reset.
    func receiveStatelessReset() {
        quic.receiveStatelessReset()
        pump()
    }

    /// Moves everything the connection has to say: events to the streams and
    /// the application, datagrams to the socket; then wakes readers, tells
    /// writers what left, and sets the timer.
    private func pump() {
        guard !pumping else { return }
        pumping = true
        defer { pumping = false }
        for _ in 0..<64 {
            let events = quic.takeEvents()
            for event in events { handle(event) }
            let datagrams = quic.send(now: .now)
            endpoint.send(datagrams, to: remote)
            if events.isEmpty && datagrams.isEmpty { break }
        }
        endpoint.flush()
        wakeReaders()
        updateWriters()
        if case .closed = state { return }
        rearmTimer()
    }

    private var isTornDown: Bool {
        if case .closed = state { return true }
        return false
    }

    private func rearmTimer() {
        guard let deadline = quic.nextDeadline else {
            timer?.cancel()
            timer = nil
            timerDeadline = nil
            return
        }
        guard deadline != timerDeadline else { return }
        timer?.cancel()
        timerDeadline = deadline
        let delay = max(deadline - ContinuousClock.now, .zero)
        let nanoseconds = delay.components.seconds * 1_000_000_000 + delay.components.attoseconds / 1_000_000_000
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        timer = eventLoop.scheduleTask(in: .nanoseconds(nanoseconds)) {
            let driver = bound.value
            driver.timerDeadline = nil
            driver.quic.handleTimeout(now: .now)
            driver.pump()
        }
    }

    // MARK: - Connection events

    private func handle(_ event: QUICConnectionEvent) {
        switch event {
        case .connected:
            if let token = quic.peerStatelessResetToken { endpoint.registerResetToken(token, for: self) }
            becomeEstablished()
        case .streamData(let id, let data, let fin):
            receive(stream: id, data, fin: fin)
        case .streamReset(let id, _):
            streamReset(id)
        case .closed(let error):
            teardown(Self.transportError(error))
        }
    }

    static func transportError(_ error: QUICConnectionError) -> TransportError {
        switch error {
        case .application(code: 0, _), .peer(.application(code: 0, _)): .connectionClosed
        case .idleTimeout, .timedOut: .io(underlying: error)
        case .tls: .securityFailed(protocolID: "/quic-v1", underlying: error)
        default: .io(underlying: error)
        }
    }

    private func becomeEstablished() {
        guard case .handshaking(let deadline) = state else { return }
        deadline?.cancel()
        let verified: LibP2PCertificate.VerifiedPeer
        do {
            verified = try LibP2PCertificate.verify(chain: quic.peerCertificates, expectedPeer: expectedPeer)
        } catch {
            // The TLS callback checked the same chain; this only fails if it changed meanwhile.
            quic.close(code: 1, reason: "peer certificate")
            return teardown(.securityFailed(protocolID: "/quic-v1", underlying: error))
        }
        handshakeSlot?.release()
        handshakeSlot = nil
        let connection = Connection(
            id: id, localPeer: upgrader.localPeer, remotePeer: verified.peerID, remotePublicKey: verified.publicKey,
            direction: direction, remoteAddress: remoteAddress, localAddress: localAddress, transport: "quic-v1",
            security: "/tls/1.0.0", muxer: "/quic-v1",
            driver: NIOLoopBound<any StreamMuxerDriver>(self, eventLoop: eventLoop), closeFuture: closed.futureResult,
            channel: nil)
        state = .established(connection)
        logger[metadataKey: "peer"] = "\(verified.peerID)"
        logger.debug("connection established", metadata: ["direction": "\(direction.rawValue)"])
        established.succeed(connection)
        if direction == .inbound { upgrader.onInboundConnection(connection) }
    }

    // MARK: - Streams

    private func isLocal(_ id: UInt64) -> Bool { (id & 1 == 0) == (direction == .outbound) }

    private func receive(stream id: UInt64, _ data: [UInt8], fin: Bool) {
        guard case .established(let connection) = state else { return }
        if streams[id] == nil {
            guard !isLocal(id), id <= UInt64(UInt32.max) else {
                // Ours, already reset or finished: grant the bytes back, nothing more.
                quic.consumed(streamID: id, bytes: data.count)
                return
            }
            guard negotiatingInbound < configuration.maxNegotiatingInboundStreams else {
                quic.consumed(streamID: id, bytes: data.count)
                quic.reset(streamID: id)
                reportLimit(.negotiatingStreams(configuration.maxNegotiatingInboundStreams))
                return
            }
            negotiatingInbound += 1
            let acceptor = upgrader.acceptor
            var negotiator = MultistreamNegotiation.responder(
                limits: configuration.multistreamLimits, supports: { acceptor.supports(protocolID: $0) })
            var hello = ByteBuffer()
            negotiator.start(into: &hello)
            streams[id] = .negotiating(negotiator, proposals: nil, waiter: nil, deadline: negotiationDeadline(id))
            write(hello, on: id)
        }
        switch streams[id]! {
        case .negotiating(var negotiator, let proposals, let waiter, let deadline):
            var bytes = ByteBuffer(bytes: data)
            var reply = ByteBuffer()
            let agreed: String?
            do {
                agreed = try negotiator.receive(&bytes, output: &reply)
            } catch {
                quic.consumed(streamID: id, bytes: data.count)
                return negotiationFailed(id, .negotiationFailed(phase: "stream", underlying: error))
            }
            quic.consumed(streamID: id, bytes: data.count - bytes.readableBytes)
            if reply.readableBytes > 0 { write(reply, on: id) }
            guard let agreed else {
                if fin { return negotiationFailed(id, .negotiationFailed(phase: "stream", underlying: TransportError.connectionClosed)) }
                streams[id] = .negotiating(negotiator, proposals: proposals, waiter: waiter, deadline: deadline)
                return
            }
            deadline?.cancel()
            if proposals == nil { negotiatingInbound -= 1 }
            let stream = MuxedStream(
                streamID: UInt32(id), protocolID: agreed, connection: connection,
                inbox: StreamInbox(reportThreshold: QUICTransport.streamWindow / 8), credit: StreamWriteCredit(limit: configuration.maxQueuedBytesPerStream))
            streams[id] = .open(stream, Flags())
            if bytes.readableBytes > 0 || fin { deliver(id, bytes, fin: fin) }
            if let waiter {
                waiter.succeed(stream)
            } else {
                upgrader.acceptor.accept(stream)
            }
        case .open:
            deliver(id, ByteBuffer(bytes: data), fin: fin)
        }
    }

    /// Data (and the end) of an open stream to its reader.
    private func deliver(_ id: UInt64, _ data: ByteBuffer, fin: Bool) {
        guard case .open(let stream, var flags) = streams[id] else { return }
        if flags.discardInbound {
            quic.consumed(streamID: id, bytes: data.readableBytes)
        } else if data.readableBytes > 0 {
            let (needsWake, discarded) = stream.inbox.push(data)
            if needsWake { inboxesToWake.append(stream.inbox) }
            if discarded > 0 { quic.consumed(streamID: id, bytes: discarded) }
            ungranted[id, default: 0] += data.readableBytes - discarded
        }
        if fin {
            flags.remoteFinished = true
            stream.inbox.finish()
        }
        streams[id] = .open(stream, flags)
        forgetIfFinished(id)
    }

    private func streamReset(_ id: UInt64) {
        switch streams.removeValue(forKey: id) {
        case .negotiating(_, let proposals, let waiter, let deadline)?:
            deadline?.cancel()
            if proposals == nil { negotiatingInbound -= 1 }
            waiter?.fail(TransportError.streamReset)
            quic.reset(streamID: id)
        case .open(let stream, _)?:
            stream.inbox.fail(.streamReset)
            stream.credit.fail(.streamReset)
            grantRemainder(of: id)
            quic.reset(streamID: id)
        case nil:
            break
        }
        queuedWriters.remove(id)
    }

    private func negotiationFailed(_ id: UInt64, _ error: TransportError) {
        guard case .negotiating(_, let proposals, let waiter, let deadline)? = streams.removeValue(forKey: id) else { return }
        deadline?.cancel()
        if proposals == nil { negotiatingInbound -= 1 }
        waiter?.fail(error)
        quic.reset(streamID: id)
    }

    private func negotiationDeadline(_ id: UInt64) -> Scheduled<Void> {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        return eventLoop.scheduleTask(in: TimeAmount(configuration.streamNegotiationTimeout)) {
            let driver = bound.value
            guard case .negotiating(_, let proposals, _, _)? = driver.streams[id] else { return }
            driver.negotiationFailed(id, .streamNegotiationTimeout(protocols: proposals ?? []))
            driver.pump()
        }
    }

    /// Drops a stream once both directions ended (QUIC forgets it on its own).
    private func forgetIfFinished(_ id: UInt64) {
        guard case .open(_, let flags)? = streams[id], flags.remoteFinished, flags.localFinished else { return }
        streams[id] = nil
        queuedWriters.remove(id)
    }

    private func write(_ bytes: ByteBuffer, on id: UInt64) {
        try? quic.write(Array(bytes.readableBytesView), to: id)
    }

    private func wakeReaders() {
        guard !inboxesToWake.isEmpty else { return }
        let inboxes = inboxesToWake
        inboxesToWake.removeAll(keepingCapacity: true)
        for inbox in inboxes { inbox.wake() }
    }

    /// Writers learn how much of their stream still waits to go out.
    private func updateWriters() {
        guard !queuedWriters.isEmpty else { return }
        for id in queuedWriters {
            guard case .open(let stream, _)? = streams[id] else {
                queuedWriters.remove(id)
                continue
            }
            let unsent = quic.unsentBytes(streamID: id)
            stream.credit.queuedChanged(unsent)
            if unsent == 0 { queuedWriters.remove(id) }
        }
    }

    private func reportLimit(_ limit: Limit) {
        upgrader.onLimitReached(LimitRefusal(limit, peer: connectionPeer, address: remoteAddress))
    }

    private var connectionPeer: PeerID? {
        if case .established(let connection) = state { return connection.remotePeer }
        return nil
    }

    // MARK: - StreamMuxerDriver (from Connection and MuxedStream, on the event loop)

    var trackedStreamCount: Int { streams.count }

    func openStream(protocols: [String]) -> EventLoopFuture<MuxedStream> {
        guard case .established = state else { return eventLoop.makeFailedFuture(closeError ?? .connectionClosed) }
        let id: UInt64
        do {
            id = try quic.openStream()
        } catch .streamLimit {
            reportLimit(.remoteStreams)
            return eventLoop.makeFailedFuture(TransportError.limitReached(.remoteStreams))
        } catch {
            return eventLoop.makeFailedFuture(TransportError.muxerFailed(underlying: error))
        }
        let promise = eventLoop.makePromise(of: MuxedStream.self)
        var negotiator = MultistreamNegotiation.initiator(protocols: protocols, limits: configuration.multistreamLimits)
        var hello = ByteBuffer()
        negotiator.start(into: &hello)
        streams[id] = .negotiating(negotiator, proposals: protocols, waiter: promise, deadline: negotiationDeadline(id))
        write(hello, on: id)
        pump()
        return promise.futureResult
    }

    func consumed(streamID: UInt32, bytes: Int) {
        let id = UInt64(streamID)
        let pending = ungranted[id] ?? 0
        let grant = min(bytes, pending)
        guard grant > 0 else { return }
        ungranted[id] = pending - grant
        quic.consumed(streamID: id, bytes: grant)
        pump()
    }

    func endOfStreamRead(streamID: UInt32) {
        grantRemainder(of: UInt64(streamID))
        pump()
    }

    /// What the stream's reader never reported goes back to the connection's window.
    private func grantRemainder(of id: UInt64) {
        guard let pending = ungranted.removeValue(forKey: id), pending > 0 else { return }
        quic.consumed(streamID: id, bytes: pending)
    }

    func write(streamID: UInt32, data: ByteBuffer, credit: StreamWriteCredit) {
        let id = UInt64(streamID)
        guard case .established = state else { return credit.fail(closeError ?? .connectionClosed) }
        guard case .open(_, let flags)? = streams[id] else { return credit.fail(.streamReset) }
        guard !flags.localFinished else { return credit.fail(.streamClosedForWriting) }
        do {
            try quic.write(Array(data.readableBytesView), to: id)
        } catch {
            return credit.fail(.streamReset)
        }
        pump()
        let unsent = quic.unsentBytes(streamID: id)
        credit.processed(data.readableBytes, queued: unsent)
        if unsent > 0 { queuedWriters.insert(id) }
    }

    func closeWrite(streamID: UInt32) -> EventLoopFuture<Void> {
        let id = UInt64(streamID)
        guard case .established = state else { return eventLoop.makeFailedFuture(closeError ?? .connectionClosed) }
        if case .open(let stream, var flags)? = streams[id], !flags.localFinished {
            stream.credit.fail(.streamClosedForWriting)
            flags.localFinished = true
            streams[id] = .open(stream, flags)
            try? quic.finish(streamID: id)
            forgetIfFinished(id)
            pump()
        }
        return eventLoop.makeSucceededVoidFuture()
    }

    func reset(streamID: UInt32) {
        let id = UInt64(streamID)
        guard case .open(let stream, _)? = streams.removeValue(forKey: id) else { return }
        stream.inbox.fail(.streamReset)
        stream.credit.fail(.streamReset)
        queuedWriters.remove(id)
        grantRemainder(of: id)
        quic.reset(streamID: id)
        pump()
    }

    func discardInbound(streamID: UInt32) {
        let id = UInt64(streamID)
        guard case .open(let stream, var flags)? = streams[id] else { return }
        flags.discardInbound = true
        streams[id] = .open(stream, flags)
        // What the inbox held or had not reported: everything delivered and not granted.
        _ = stream.inbox.discardAll()
        grantRemainder(of: id)
        pump()
    }

    func closeGracefully(_ error: TransportError) -> EventLoopFuture<Void> {
        if !isTornDown {
            quic.close(code: 0, reason: "")
            pump()
            teardown(error)
        }
        return closed.futureResult
    }

    /// The endpoint's socket closed under us.
    func endpointClosed() {
        teardown(.connectionClosed)
    }

    // MARK: - Teardown

    private var closeError: TransportError? {
        if case .closed(let error) = state { return error }
        return nil
    }

    private func teardown(_ error: TransportError) {
        let previous = state
        switch previous {
        case .closed: return
        case .handshaking(let deadline): deadline?.cancel()
        case .established: break
        }
        state = .closed(error)
        logger.debug("connection closed", metadata: ["error": "\(error)"])
        timer?.cancel()
        timer = nil
        handshakeSlot?.release()
        handshakeSlot = nil
        endpoint.unregister(self)
        established.fail(error)
        let all = streams
        streams = [:]
        queuedWriters = []
        for (_, stream) in all {
            switch stream {
            case .negotiating(_, _, let waiter, let deadline):
                deadline?.cancel()
                waiter?.fail(error)
            case .open(let stream, _):
                stream.inbox.fail(error)
                stream.credit.fail(error)
            }
        }
        if case .established(let connection) = previous { connection.markClosed() }
        closed.succeed(())
    }
}
