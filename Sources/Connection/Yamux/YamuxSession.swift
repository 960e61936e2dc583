import NIOCore

/// Errors of a Yamux session. All are fatal for the session: the machine has
/// already queued a go-away (protocol error) when it throws.
public enum YamuxError: Error, CustomStringConvertible, Sendable, Equatable {
    case badVersion(UInt8)
    case badType(UInt8)
    case windowExceeded(stream: UInt32, length: UInt32, window: UInt32)
    case frameTooLarge(UInt32)
    case duplicateStream(UInt32)
    case wrongStreamParity(UInt32)
    case sessionStreamFlags
    case goingAway
    case tooManyStreams
    case unknownStream(UInt32)
    case windowOverflow(UInt32)
    /// Our replies (ACKs, RSTs, window updates) waiting unsent passed the bound:
    /// the remote keeps asking and does not read.
    case controlBacklog(bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .badVersion(let v): return "yamux version \(v), expected 0"
        case .badType(let t): return "unknown yamux frame type \(t)"
        case .windowExceeded(let s, let l, let w): return "stream \(s) sent \(l) bytes beyond its window of \(w)"
        case .frameTooLarge(let l): return "yamux frame of \(l) bytes exceeds the limit"
        case .duplicateStream(let s): return "stream \(s) opened twice"
        case .wrongStreamParity(let s): return "remote opened stream \(s) with our parity"
        case .sessionStreamFlags: return "stream flags on the session stream 0"
        case .goingAway: return "session is going away"
        case .tooManyStreams: return "too many streams"
        case .unknownStream(let s): return "unknown stream \(s)"
        case .windowOverflow(let s): return "window of stream \(s) overflowed"
        case .controlBacklog(let bytes, let limit):
            return "\(bytes) bytes of control replies unsent (limit \(limit)): the remote does not read"
        }
    }
}

/// Something the remote did, for the adapter to act on.
public enum YamuxEvent: Equatable, Sendable {
    /// The remote opened a stream.
    case inboundStream(UInt32)
    /// Data for a stream; the adapter calls `consumed` as the application reads it.
    case data(UInt32, ByteBuffer)
    /// The remote will send no more data on the stream (FIN).
    case remoteClosedWrite(UInt32)
    /// The stream was reset (by the remote, or refused).
    case reset(UInt32)
    /// More of the stream's queued data can go out: blocked writers may continue.
    case sendWindowOpened(UInt32)
    /// Both sides closed the stream; it is gone from the session.
    case closed(UInt32)
    /// The remote will open no more streams (code: 0 normal, 1 protocol error, 2 internal).
    case goAway(UInt32)
    /// The remote pinged us (answered already).
    case ping(UInt32)
    /// Answer to our ping.
    case pong(UInt32)
}

/// Yamux (`/yamux/1.0.0`) session state machine, sans-IO.
///
/// Flow control is real: the remote may send a stream at most the window we
/// granted, and we grant more only as the application consumes; our writes wait
/// in the stream's queue for the remote's window (the adapter bounds that queue).
public struct YamuxSession {
    public static let headerLength = 12
    static let initialWindow: UInt32 = 256 * 1024

    enum FrameType: UInt8 {
        case data = 0
        case windowUpdate = 1
        case ping = 2
        case goAway = 3
    }

    struct Flags: OptionSet {
        let rawValue: UInt16
        static let syn = Flags(rawValue: 1)
        static let ack = Flags(rawValue: 2)
        static let fin = Flags(rawValue: 4)
        static let rst = Flags(rawValue: 8)
    }

    /// Where a stream is in closing its two directions (each closes with a FIN).
    /// A stream both sides closed is removed from the session.
    enum HalfClose: Equatable {
        /// Both directions open.
        case open
        /// We closed our write side: the FIN follows our queued data (`finSent` once framed).
        case halfClosedLocal(finSent: Bool)
        /// The remote sent its FIN; we may still send.
        case halfClosedRemote
        /// The remote sent its FIN and we closed our side, whose FIN is not framed yet.
        case closing
        /// Both FINs: the stream is done.
        case closed

        /// We closed our write side (the FIN may still wait behind data).
        var localClosed: Bool {
            switch self {
            case .halfClosedLocal, .closing, .closed: true
            case .open, .halfClosedRemote: false
            }
        }

        /// Our FIN went out.
        var finSent: Bool { self == .halfClosedLocal(finSent: true) || self == .closed }

        /// Our FIN is to be framed (after the queued data).
        var finDue: Bool { self == .halfClosedLocal(finSent: false) || self == .closing }

        /// The remote sent its FIN.
        var remoteClosed: Bool {
            switch self {
            case .halfClosedRemote, .closing, .closed: true
            case .open, .halfClosedLocal: false
            }
        }

        mutating func closeLocal() {
            switch self {
            case .open: self = .halfClosedLocal(finSent: false)
            case .halfClosedRemote: self = .closing
            case .halfClosedLocal, .closing, .closed: break
            }
        }

        mutating func sentFin() {
            switch self {
            case .halfClosedLocal(finSent: false): self = .halfClosedLocal(finSent: true)
            case .closing: self = .closed
            case .open, .halfClosedLocal, .halfClosedRemote, .closed: break
            }
        }

        mutating func closeRemote() {
            switch self {
            case .open: self = .halfClosedRemote
            case .halfClosedLocal(let finSent): self = finSent ? .closed : .closing
            case .halfClosedRemote, .closing, .closed: break
            }
        }
    }

    struct Stream {
        var sendWindow: UInt32
        var receiveWindow: UInt32
        /// Consumed by the application, not yet granted back to the remote.
        var consumedNotGranted: UInt32 = 0
        /// The window we aim to keep open for the remote: granted credit, data
        /// delivered and unread, and consumed-not-granted add up to it.
        var windowTarget: UInt32
        var queue = CircularBuffer<ByteBuffer>()
        var queuedBytes = 0
        var state = HalfClose.open
        /// In `sendQueue`: it has data (or a FIN) to frame.
        var scheduled = false
        /// Since when `consumedInEpoch` counts: the grant that ended the last
        /// whole window read, or the first read (nil until then, so an idle
        /// start does not look like a slow reader).
        var epochStart: NIODeadline?
        var consumedInEpoch: UInt64 = 0
        /// Window growth granted only because the stream was alone (taken back
        /// when it no longer is).
        var soloGrowth: UInt32 = 0
        /// When data for this stream last arrived (with a clock).
        var lastDataAt: NIODeadline?

        /// Whether the next turn in the send queue would frame something.
        var canSend: Bool {
            (queuedBytes > 0 && sendWindow > 0) || (state.finDue && queuedBytes == 0)
        }
    }

    public let configuration: Configuration
    private let isClient: Bool
    private var nextStreamID: UInt32
    var streams: [UInt32: Stream] = [:]
    /// Frames to send, in order, before `output`.
    private var outputPieces: [ByteBuffer] = []
    /// Control bytes (headers) written after the last of `outputPieces`.
    private var output = ByteBuffer()
    /// Streams with data or a FIN to frame, in turn order. Data is framed only
    /// when the adapter takes output, within the budget it gives: a socket that
    /// does not keep up leaves the data queued here (where the writer's credit
    /// sees it), and streams share the link frame by frame.
    private var sendQueue = CircularBuffer<UInt32>()

    private var input = ByteBuffer()
    /// The opaque of the latest ping to answer: pings that arrive before the
    /// answer goes out share it (as go-yamux), so a ping flood queues nothing.
    private var pendingPong: UInt32?
    private var incoming: IncomingPayload?
    private var localGoAway = false
    private var remoteGoAway = false
    var nextPing: UInt32 = 0
    /// Our round-trip ping in flight (one at most; its pong is not an event).
    var rttPing: (opaque: UInt32, sent: NIODeadline)?
    var nextRTTPing: NIODeadline?
    /// Round-trip samples within `rttFilterSpan`, oldest first.
    var rttSamples: [(at: NIODeadline, rtt: TimeAmount)] = []
    var rttSampleCount = 0

    /// Traps, with the reason, on a configuration that fails `Configuration.validate()`
    /// (windows below the protocol's, nothing allowed): check it beforehand to handle the error.
    public init(isClient: Bool, configuration: Configuration = .init()) {
        do {
            try configuration.validate()
        } catch {
            preconditionFailure("invalid YamuxSession.Configuration: \(error)")
        }
        self.isClient = isClient
        self.configuration = configuration
        self.nextStreamID = isClient ? 1 : 2
    }

    public var streamCount: Int { streams.count }

    /// What `takeOutput(dataBudget:)` hands the adapter.
    public struct Output {
        /// The bytes to send, in order.
        public var pieces: [ByteBuffer]
        /// Streams that had data or a FIN framed: their queues shrank, their writers may continue.
        public var streamsSent: [UInt32]
    }

    /// The bytes to send as pieces, in order: control frames first (window
    /// updates, SYN/ACK, RST, pings, go-away: they never wait behind data),
    /// then data frames of the streams in turn, one frame per stream per turn,
    /// up to `dataBudget` payload bytes (the room the socket has). Payloads are
    /// slices of the buffers the application wrote (never copied here). A
    /// stream's FIN follows its last data whatever the budget.
    public mutating func takeOutput(dataBudget: Int) -> Output {
        var streamsSent: [UInt32] = []
        if let pong = pendingPong {
            pendingPong = nil
            writeHeader(.ping, flags: .ack, stream: 0, length: pong)
        }
        if output.readableBytes > 0 {
            outputPieces.append(output)
            output = ByteBuffer()
        }
        var budget = dataBudget
        var waiting: [UInt32] = []
        // Rounds over the queue: each stream frames at most one frame per round.
        var visits = sendQueue.count
        while visits > 0, let id = sendQueue.popFirst() {
            visits -= 1
            guard var stream = streams[id] else { continue }
            if budget <= 0 && stream.canSend && stream.queuedBytes > 0 {
                // The budget ran out before its turn: it keeps its place ahead
                // of the streams that framed, or a stream that always frames
                // first would starve the rest.
                waiting.append(id)
                continue
            }
            stream.scheduled = false
            if stream.canSend && (budget > 0 || stream.queuedBytes == 0) {
                budget -= frameNext(id, &stream, budget: budget)
                if streamsSent.last != id { streamsSent.append(id) }
            }
            if stream.canSend {
                stream.scheduled = true
                sendQueue.append(id)
            }
            streams[id] = stream
            if stream.state.finSent { removeIfClosed(id) }
            if visits == 0 && budget > 0 { visits = sendQueue.count }
        }
        for id in waiting.reversed() { sendQueue.prepend(id) }
        if output.readableBytes > 0 {
            outputPieces.append(output)
            output = ByteBuffer()
        }
        defer { outputPieces = [] }
        return Output(pieces: outputPieces, streamsSent: streamsSent)
    }

    /// Control bytes waiting for `takeOutput` (a pending pong included).
    public var pendingControlBytes: Int {
        output.readableBytes + (pendingPong == nil ? 0 : Self.headerLength)
    }

    /// Whether some stream has data (or a FIN) it could frame now.
    public var hasDataToSend: Bool {
        sendQueue.contains { streams[$0]?.canSend ?? false }
    }


    // MARK: - Local operations

    /// Opens a stream (SYN goes out at once as a window update).
    public mutating func openStream() throws(YamuxError) -> UInt32 {
        guard !localGoAway, !remoteGoAway else { throw .goingAway }
        guard streams.count < configuration.maxStreams else { throw .tooManyStreams }
        guard nextStreamID < UInt32.max - 1 else { throw .tooManyStreams }
        let id = nextStreamID
        nextStreamID += 2
        streams[id] = Stream(
            sendWindow: Self.initialWindow, receiveWindow: configuration.initialWindow,
            windowTarget: configuration.initialWindow)
        writeHeader(.windowUpdate, flags: .syn, stream: id, length: configuration.initialWindow - Self.initialWindow)
        return id
    }

    /// Queues data; it is framed, as the remote's window allows, when output is taken.
    public mutating func write(streamID id: UInt32, data: ByteBuffer) {
        guard var stream = streams[id], !stream.state.localClosed, data.readableBytes > 0 else { return }
        stream.queue.append(data)
        stream.queuedBytes += data.readableBytes
        schedule(id, &stream)
        streams[id] = stream
    }

    /// Bytes of this stream not yet framed (waiting for the remote's window or the socket).
    public func queuedBytes(streamID id: UInt32) -> Int {
        streams[id]?.queuedBytes ?? 0
    }

    /// No more data from us on this stream (FIN after the queued data).
    public mutating func closeWrite(streamID id: UInt32) {
        guard var stream = streams[id], !stream.state.localClosed else { return }
        stream.state.closeLocal()
        schedule(id, &stream)
        streams[id] = stream
    }

    /// Abruptly ends the stream (RST) and forgets it.
    public mutating func reset(streamID id: UInt32) {
        guard streams.removeValue(forKey: id) != nil else { return }
        writeHeader(.windowUpdate, flags: .rst, stream: id, length: 0)
    }

    /// Sends a ping; the answer comes as `.pong(opaque)` (tests: the session pings by itself for RTT).
    mutating func ping() -> UInt32 {
        nextPing &+= 1
        writeHeader(.ping, flags: .syn, stream: 0, length: nextPing)
        return nextPing
    }

    /// Tells the remote we open and accept no more streams.
    public mutating func goAway(protocolError: Bool = false) {
        guard !localGoAway else { return }
        localGoAway = true
        writeHeader(.goAway, flags: [], stream: 0, length: protocolError ? 1 : 0)
    }

    // MARK: - Remote input

    /// Parses arriving bytes (any fragmentation) into events. A thrown error is a
    /// protocol violation: the go-away is already in the output; close the connection.
    ///
    /// A data frame's payload is handed on piece by piece as it arrives, so a
    /// large frame is neither held back nor copied whole.
    ///
    /// `now` (the clock `tick(now:)` gets) times the answers to round-trip pings.
    public mutating func receive(_ bytes: inout ByteBuffer, now: NIODeadline? = nil) throws(YamuxError) -> [YamuxEvent] {
        if input.readableBytes == 0 {
            swap(&input, &bytes)
        } else {
            input.writeBuffer(&bytes)
        }
        bytes.clear()
        var events: [YamuxEvent] = []
        do throws(YamuxError) {
            while true {
                if var payload = incoming {
                    let size = min(payload.remaining, input.readableBytes)
                    if size > 0 {
                        let piece = input.readSlice(length: size)!
                        if payload.deliver { events.append(.data(payload.stream, piece)) }
                        payload.remaining -= size
                    }
                    guard payload.remaining == 0 else {
                        incoming = payload
                        break
                    }
                    incoming = nil
                    if payload.fin { remoteClosed(payload.stream, events: &events) }
                    continue
                }
                guard input.readableBytes >= Self.headerLength else { break }
                let start = input.readerIndex
                let version = input.getInteger(at: start, as: UInt8.self)!
                let rawType = input.getInteger(at: start + 1, as: UInt8.self)!
                let flags = Flags(rawValue: input.getInteger(at: start + 2, as: UInt16.self)!)
                let id = input.getInteger(at: start + 4, as: UInt32.self)!
                let length = input.getInteger(at: start + 8, as: UInt32.self)!
                guard version == 0 else { throw YamuxError.badVersion(version) }
                guard let type = FrameType(rawValue: rawType) else { throw YamuxError.badType(rawType) }
                input.moveReaderIndex(forwardBy: Self.headerLength)
                switch type {
                case .data:
                    // The largest legal data frame is one full window.
                    guard length <= max(configuration.initialWindow, configuration.maxStreamWindow) else {
                        throw YamuxError.frameTooLarge(length)
                    }
                    let deliver = try handleStreamFrame(type, flags: flags, id: id, length: length, events: &events)
                    if deliver, length > 0, let now { streams[id]?.lastDataAt = now }
                    incoming = IncomingPayload(
                        stream: id, remaining: Int(length), deliver: deliver, fin: deliver && flags.contains(.fin))
                case .windowUpdate:
                    _ = try handleStreamFrame(type, flags: flags, id: id, length: length, events: &events)
                case .ping:
                    if flags.contains(.syn) {
                        pendingPong = length
                        events.append(.ping(length))
                    } else if flags.contains(.ack) {
                        if let ping = rttPing, ping.opaque == length {
                            rttPing = nil
                            if let now {
                                recordRoundTrip(now - ping.sent, at: now)
                                rttSampleCount += 1
                                if rttSampleCount < configuration.startRTTPings { sendRTTPing(now: now) }
                            }
                        } else {
                            events.append(.pong(length))
                        }
                    }
                case .goAway:
                    remoteGoAway = true
                    events.append(.goAway(length))
                }
            }
            guard output.readableBytes <= configuration.maxPendingControlBytes else {
                throw YamuxError.controlBacklog(bytes: output.readableBytes, limit: configuration.maxPendingControlBytes)
            }
        } catch {
            goAway(protocolError: true)
            throw error
        }
        if input.readableBytes == 0 { input.clear() }
        return events
    }

    /// The data frame whose payload is arriving.
    struct IncomingPayload {
        var stream: UInt32
        var remaining: Int
        /// False when the frame's stream is unknown, refused or reset: skip its bytes.
        var deliver: Bool
        /// The frame carried FIN: the remote's write side ends after the payload.
        var fin: Bool
    }

    /// Applies a stream frame's header. For a data frame, returns whether its
    /// payload goes to the stream (its FIN is then applied after the payload).
    private mutating func handleStreamFrame(
        _ type: FrameType, flags: Flags, id: UInt32, length: UInt32, events: inout [YamuxEvent]
    ) throws(YamuxError) -> Bool {
        guard id != 0 else { throw YamuxError.sessionStreamFlags }
        if flags.contains(.syn) {
            guard streams[id] == nil else { throw YamuxError.duplicateStream(id) }
            // The remote's streams have the other parity.
            guard (id % 2 == 1) != isClient else { throw YamuxError.wrongStreamParity(id) }
            // After either side's go-away no new stream is accepted (the remote said it opens none).
            if localGoAway || remoteGoAway || streams.count >= configuration.maxStreams {
                writeHeader(.windowUpdate, flags: .rst, stream: id, length: 0)
                return false
            }
            streams[id] = Stream(
                sendWindow: Self.initialWindow, receiveWindow: configuration.initialWindow,
                windowTarget: configuration.initialWindow)
            // Acknowledge at once (and grant any window above the default).
            writeHeader(.windowUpdate, flags: .ack, stream: id, length: configuration.initialWindow - Self.initialWindow)
            events.append(.inboundStream(id))
        }
        guard var stream = streams[id] else {
            // A stream we already closed or reset: late frames are expected; drop them.
            return false
        }
        if flags.contains(.rst) {
            streams[id] = nil
            events.append(.reset(id))
            return false
        }
        if type == .windowUpdate {
            let (window, overflow) = stream.sendWindow.addingReportingOverflow(length)
            guard !overflow else { throw YamuxError.windowOverflow(id) }
            stream.sendWindow = window
            if length > 0 {
                schedule(id, &stream)
                events.append(.sendWindowOpened(id))
            }
            streams[id] = stream
            if flags.contains(.fin) { remoteClosed(id, events: &events) }
            return false
        }
        if length > 0 {
            guard !stream.state.remoteClosed else {
                // Data after FIN violates the stream's state: reset it.
                streams[id] = nil
                writeHeader(.windowUpdate, flags: .rst, stream: id, length: 0)
                events.append(.reset(id))
                return false
            }
            guard length <= stream.receiveWindow else {
                throw YamuxError.windowExceeded(stream: id, length: length, window: stream.receiveWindow)
            }
            stream.receiveWindow -= length
        }
        streams[id] = stream
        return true
    }

    /// The remote closed its write side of a stream (FIN).
    private mutating func remoteClosed(_ id: UInt32, events: inout [YamuxEvent]) {
        guard var stream = streams[id], !stream.state.remoteClosed else { return }
        stream.state.closeRemote()
        streams[id] = stream
        events.append(.remoteClosedWrite(id))
        if removeIfClosed(id) { events.append(.closed(id)) }
    }

    // MARK: - Output helpers

    /// Puts a stream that can send in the send queue (once).
    private mutating func schedule(_ id: UInt32, _ stream: inout Stream) {
        guard !stream.scheduled, stream.canSend else { return }
        stream.scheduled = true
        sendQueue.append(id)
    }

    /// Frames the stream's next data frame (at most a frame, the window and
    /// `budget`), then its FIN if due; returns the payload bytes framed.
    private mutating func frameNext(_ id: UInt32, _ stream: inout Stream, budget: Int) -> Int {
        var framed = 0
        if stream.sendWindow > 0, budget > 0, var chunk = stream.queue.first {
            let size = min(chunk.readableBytes, Int(stream.sendWindow), configuration.maxFramePayload, budget)
            let piece = chunk.readSlice(length: size)!
            if chunk.readableBytes == 0 {
                stream.queue.removeFirst()
            } else {
                stream.queue[stream.queue.startIndex] = chunk
            }
            stream.queuedBytes -= size
            stream.sendWindow -= UInt32(size)
            let fin = stream.state.finDue && stream.queuedBytes == 0
            writeHeader(.data, flags: fin ? .fin : [], stream: id, length: UInt32(size))
            outputPieces.append(output)
            output = ByteBuffer()
            outputPieces.append(piece)
            if fin { stream.state.sentFin() }
            framed = size
        }
        if stream.state.finDue && stream.queuedBytes == 0 {
            writeHeader(.windowUpdate, flags: .fin, stream: id, length: 0)
            stream.state.sentFin()
        }
        return framed
    }

    /// Forgets a stream both sides have finished; true if it did.
    @discardableResult
    private mutating func removeIfClosed(_ id: UInt32) -> Bool {
        guard let stream = streams[id], stream.state == .closed else { return false }
        streams[id] = nil
        return true
    }

    mutating func writeHeader(_ type: FrameType, flags: Flags, stream: UInt32, length: UInt32) {
        output.writeInteger(UInt8(0))
        output.writeInteger(type.rawValue)
        output.writeInteger(flags.rawValue)
        output.writeInteger(stream)
        output.writeInteger(length)
    }
}
