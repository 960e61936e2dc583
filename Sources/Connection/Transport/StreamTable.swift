import Multistream
import NIOCore
import Yamux

/// The streams of one multiplexed connection, sans-IO: the Yamux session, each
/// stream's protocol negotiation (multistream-select) and its half-close
/// bookkeeping. The driver feeds it decrypted bytes and the application's
/// operations and turns the events it returns into promises and inboxes.
public struct StreamTable {
    /// One stream's phase.
    enum Phase {
        /// Multistream-select in progress; `proposals` nil for an inbound stream.
        case negotiating(MultistreamNegotiation, proposals: [String]?)
        case open(OpenStream)
    }

    struct OpenStream {
        let protocolID: String
        var remoteClosedWrite = false
        var localClosedWrite = false
        /// The application read the end of the stream.
        var endOfStreamRead = false
        /// The application reads no more: arriving data is dropped and granted back.
        var discardInbound = false

        var isFinished: Bool {
            remoteClosedWrite && localClosedWrite && (endOfStreamRead || discardInbound)
        }
    }

    /// What the driver acts on.
    public enum Event {
        /// The remote opened a stream; its negotiation started.
        case incoming(UInt32)
        /// A stream's protocol is agreed; `inbound` when the remote opened it.
        case opened(UInt32, protocolID: String, inbound: Bool)
        /// Negotiation failed; the stream is reset and gone from the table.
        case negotiationFailed(UInt32, TransportError)
        /// Application data for an open stream.
        case data(UInt32, ByteBuffer)
        /// The remote closed its write side of an open stream.
        case remoteClosedWrite(UInt32)
        /// The stream was reset; it is gone from the table.
        case reset(UInt32)
        /// More of the stream's data went out or may go out: writers may continue.
        case sendWindowOpened(UInt32)
        /// Both sides finished with the stream; it is gone from the table.
        case finished(UInt32)
        /// The remote will open no more streams.
        case goAway
        /// A limit refused something (a stream reset at once): which.
        case limitReached(Limit)
    }

    private(set) var session: YamuxSession
    private var streams: [UInt32: Phase] = [:]
    private let limits: MultistreamLimits
    private let supports: @Sendable (String) -> Bool
    /// Inbound streams still negotiating their protocol, at most.
    private let maxNegotiatingInbound: Int
    private var negotiatingInbound = 0
    /// Inbound streams reset at once because `maxNegotiatingInbound` were negotiating.
    public private(set) var refusedNegotiating = 0
    /// The streams' reservations in the host's memory budget.
    private var memory: StreamMemoryLedger

    /// `supports` answers inbound proposals (the host's protocol handlers);
    /// beyond `maxNegotiatingInbound` inbound streams still negotiating, a new
    /// one is reset at once.
    public init(
        isClient: Bool, configuration: YamuxSession.Configuration, limits: MultistreamLimits,
        maxNegotiatingInbound: Int = 128, memory: StreamMemoryLedger = .init(budget: nil, peer: nil),
        supports: @escaping @Sendable (String) -> Bool
    ) {
        self.session = YamuxSession(isClient: isClient, configuration: configuration)
        self.memory = memory
        self.limits = limits
        self.maxNegotiatingInbound = maxNegotiatingInbound
        self.supports = supports
    }

    /// Keeps `negotiatingInbound` right when a stream leaves the table or its
    /// negotiation, and gives back what the stream reserved.
    private mutating func left(_ id: UInt32, _ phase: Phase?) {
        if case .negotiating(_, proposals: nil)? = phase { negotiatingInbound -= 1 }
        if phase != nil { memory.remove(id) }
    }

    /// Streams the table tracks (finished ones are dropped).
    public var count: Int { streams.count }

    /// The protocol of an open stream.
    func protocolID(of id: UInt32) -> String? {
        guard case .open(let open) = streams[id] else { return nil }
        return open.protocolID
    }

    // MARK: Input

    /// Decrypted muxer bytes from the remote, arrived at `now` (times the
    /// answers to the session's round-trip pings).
    public mutating func receive(_ bytes: inout ByteBuffer, now: NIODeadline) throws(YamuxError) -> [Event] {
        var events: [Event] = []
        for event in try session.receive(&bytes, now: now) {
            handle(event, now: now, into: &events)
        }
        return events
    }

    /// Runs the session's timer (a round-trip ping when due); the next deadline.
    public mutating func tick(now: NIODeadline) -> NIODeadline {
        session.tick(now: now)
    }

    private mutating func handle(_ event: YamuxEvent, now: NIODeadline, into events: inout [Event]) {
        switch event {
        case .inboundStream(let id):
            guard negotiatingInbound < maxNegotiatingInbound else {
                refusedNegotiating += 1
                session.reset(streamID: id)
                events.append(.limitReached(.negotiatingStreams(maxNegotiatingInbound)))
                return
            }
            // Its receive window is what the remote may make us buffer: reserved, or the stream is refused.
            if let refusal = memory.admit(id, window: session.configuration.initialWindow, now: now) {
                session.reset(streamID: id)
                events.append(.limitReached(.memory(refusal)))
                return
            }
            negotiatingInbound += 1
            let supports = self.supports
            var negotiator = MultistreamNegotiation.responder(limits: limits, supports: supports)
            var hello = ByteBuffer()
            negotiator.start(into: &hello)
            streams[id] = .negotiating(negotiator, proposals: nil)
            session.write(streamID: id, data: hello)
            events.append(.incoming(id))
        case .data(let id, var data):
            receiveData(id, &data, now: now, into: &events)
        case .remoteClosedWrite(let id):
            switch streams[id] {
            case .negotiating?:
                fail(id, .negotiationFailed(phase: "stream", underlying: TransportError.connectionClosed), into: &events)
            case .open(var open)?:
                open.remoteClosedWrite = true
                streams[id] = .open(open)
                events.append(.remoteClosedWrite(id))
                forgetIfFinished(id, into: &events)
            case nil:
                break
            }
        case .reset(let id):
            let removed = streams.removeValue(forKey: id)
            left(id, removed)
            switch removed {
            case .negotiating?:
                events.append(.negotiationFailed(id, .streamReset))
            case .open?:
                events.append(.reset(id))
            case nil:
                break
            }
        case .sendWindowOpened(let id):
            events.append(.sendWindowOpened(id))
        case .closed(let id):
            forgetIfFinished(id, into: &events)
        case .goAway:
            events.append(.goAway)
        case .ping, .pong:
            break
        }
    }

    private mutating func receiveData(_ id: UInt32, _ data: inout ByteBuffer, now: NIODeadline, into events: inout [Event]) {
        memory.touch(id, now: now)
        switch streams[id] {
        case .negotiating(var negotiator, let proposals)?:
            var reply = ByteBuffer()
            let before = data.readableBytes
            let agreed: String?
            do {
                agreed = try negotiator.receive(&data, output: &reply)
            } catch {
                fail(id, .negotiationFailed(phase: "stream", underlying: error), into: &events)
                return
            }
            grant(id, bytes: before - data.readableBytes, now: now)
            if reply.readableBytes > 0 { session.write(streamID: id, data: reply) }
            guard let agreed else {
                streams[id] = .negotiating(negotiator, proposals: proposals)
                return
            }
            streams[id] = .open(OpenStream(protocolID: agreed))
            if proposals == nil { negotiatingInbound -= 1 }
            events.append(.opened(id, protocolID: agreed, inbound: proposals == nil))
            // Bytes after the negotiation belong to the application protocol.
            if data.readableBytes > 0 { events.append(.data(id, data)) }
        case .open(let open)?:
            if open.discardInbound {
                grant(id, bytes: data.readableBytes, now: now)
            } else {
                events.append(.data(id, data))
            }
        case nil:
            // A stream we already dropped (reset by us): grant the bytes back,
            // never more (nothing is reserved for it any more).
            session.consumed(streamID: id, bytes: data.readableBytes, now: now, maxGrowth: 0)
        }
    }

    // MARK: Operations

    /// Opens a stream and proposes `protocols` in order.
    public mutating func open(protocols: [String], now: NIODeadline = .now()) throws(TransportError) -> UInt32 {
        let id: UInt32
        do {
            id = try session.openStream()
        } catch {
            throw .muxerFailed(underlying: error)
        }
        if let refusal = memory.admit(id, window: session.configuration.initialWindow, now: now) {
            session.reset(streamID: id)
            throw .limitReached(.memory(refusal))
        }
        var negotiator = MultistreamNegotiation.initiator(protocols: protocols, limits: limits)
        var hello = ByteBuffer()
        negotiator.start(into: &hello)
        streams[id] = .negotiating(negotiator, proposals: protocols)
        session.write(streamID: id, data: hello)
        return id
    }

    /// The stream's negotiation deadline passed: reset it if it is still negotiating.
    mutating func negotiationTimedOut(_ id: UInt32) -> Event? {
        guard case .negotiating(_, let proposals)? = streams[id] else { return nil }
        left(id, streams.removeValue(forKey: id))
        session.reset(streamID: id)
        return .negotiationFailed(id, .streamNegotiationTimeout(protocols: proposals ?? []))
    }

    /// Queues application data; false if the stream is gone or closed for writing.
    mutating func write(_ id: UInt32, _ data: ByteBuffer) -> Result<Void, TransportError> {
        guard case .open(let open)? = streams[id] else { return .failure(.streamReset) }
        guard !open.localClosedWrite else { return .failure(.streamClosedForWriting) }
        if let refusal = memory.queue(id, bytes: data.readableBytes, now: .now()) { return .failure(.limitReached(.memory(refusal))) }
        session.write(streamID: id, data: data)
        return .success(())
    }

    /// Half-closes; returns the events (the stream may be finished).
    mutating func closeWrite(_ id: UInt32) -> [Event] {
        guard case .open(var open)? = streams[id], !open.localClosedWrite else { return [] }
        open.localClosedWrite = true
        streams[id] = .open(open)
        session.closeWrite(streamID: id)
        var events: [Event] = []
        forgetIfFinished(id, into: &events)
        return events
    }

    /// Resets a stream we no longer want; true if it was known.
    mutating func reset(_ id: UInt32) -> Bool {
        guard let removed = streams.removeValue(forKey: id) else { return false }
        left(id, removed)
        session.reset(streamID: id)
        return true
    }

    /// The application took `bytes` of the stream's data at `now`: grant them back.
    mutating func consumed(_ id: UInt32, bytes: Int, now: NIODeadline) {
        guard streams[id] != nil else { return }
        grant(id, bytes: bytes, now: now)
    }

    /// Grants consumed bytes back to the remote; the window grows only by what
    /// the memory budget lets the stream reserve.
    private mutating func grant(_ id: UInt32, bytes: Int, now: NIODeadline) {
        guard let target = session.windowTarget(streamID: id) else { return }
        let most = min(target, session.configuration.maxStreamWindow - min(target, session.configuration.maxStreamWindow))
        let room = memory.reserveGrowth(id, upTo: most, now: now)
        session.consumed(streamID: id, bytes: bytes, now: now, maxGrowth: room)
        let after = session.windowTarget(streamID: id) ?? target
        if after >= target {
            memory.unusedGrowth(id, room - min(room, after - target))
        } else {
            // The session took back growth (another stream became active): give its memory back too.
            memory.unusedGrowth(id, room + (target - after))
        }
    }

    /// The application read the end of the stream.
    mutating func endOfStreamRead(_ id: UInt32) -> [Event] {
        guard case .open(var open)? = streams[id] else { return [] }
        open.endOfStreamRead = true
        streams[id] = .open(open)
        var events: [Event] = []
        forgetIfFinished(id, into: &events)
        return events
    }

    /// The application reads no more; `released` bytes it held are granted back.
    mutating func discardInbound(_ id: UInt32, released: Int, now: NIODeadline) -> [Event] {
        guard case .open(var open)? = streams[id] else { return [] }
        open.discardInbound = true
        streams[id] = .open(open)
        grant(id, bytes: released, now: now)
        var events: [Event] = []
        forgetIfFinished(id, into: &events)
        return events
    }

    /// Drops a stream once both directions are done and nothing is left to
    /// read, so the table does not grow with finished streams.
    private mutating func forgetIfFinished(_ id: UInt32, into events: inout [Event]) {
        guard case .open(let open)? = streams[id], open.isFinished else { return }
        streams[id] = nil
        memory.remove(id)
        events.append(.finished(id))
    }

    private mutating func fail(_ id: UInt32, _ error: TransportError, into events: inout [Event]) {
        guard let removed = streams.removeValue(forKey: id) else { return }
        left(id, removed)
        session.reset(streamID: id)
        events.append(.negotiationFailed(id, error))
    }

    /// Every stream, for teardown; the table is empty afterwards.
    mutating func removeAll() -> [UInt32] {
        defer {
            streams = [:]
            negotiatingInbound = 0
            memory.removeAll()
        }
        return Array(streams.keys)
    }

    // MARK: Session passthrough

    public mutating func takeOutput(dataBudget: Int) -> YamuxSession.Output {
        let output = session.takeOutput(dataBudget: dataBudget)
        if memory.budget != nil, !output.streamsSent.isEmpty {
            let now = NIODeadline.now()
            for id in output.streamsSent { memory.queueShrank(id, to: session.queuedBytes(streamID: id), now: now) }
        }
        return output
    }

    /// The connection is gone: every reservation goes back.
    mutating func releaseMemory() { memory.removeAll() }

    /// Bytes this connection holds reserved in the memory budget.
    public var reservedMemory: Int { memory.reserved }

    public var hasDataToSend: Bool { session.hasDataToSend }

    func queuedBytes(_ id: UInt32) -> Int { session.queuedBytes(streamID: id) }

    func windowTarget(_ id: UInt32) -> UInt32? { session.windowTarget(streamID: id) }

    mutating func goAway(protocolError: Bool = false) { session.goAway(protocolError: protocolError) }
}
