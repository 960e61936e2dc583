/// What a connection tells its owner.
public enum QUICConnectionEvent: Equatable, Sendable {
    /// The handshake completed: peer authenticated, parameters agreed.
    case connected
    /// Bytes of a stream, in order; `fin` when the peer's side of it ended.
    case streamData(streamID: UInt64, data: [UInt8], fin: Bool)
    /// The peer reset its side of a stream.
    case streamReset(streamID: UInt64, errorCode: UInt64)
    /// The connection ended; no more packets go out or are read.
    case closed(QUICConnectionError)
}

/// Why a connection ended.
public enum QUICConnectionError: Error, Equatable, Sendable {
    /// We closed it for a violation by the peer (or our own application's close).
    case local(TransportErrorCode, reason: String)
    /// The application closed it with its own code.
    case application(code: UInt64, reason: String)
    /// The peer sent CONNECTION_CLOSE.
    case peer(ConnectionClose)
    /// The TLS handshake failed.
    case tls(QUICTLSError)
    /// Packets went unacknowledged through `maxProbeTimeouts` probe timeouts.
    case timedOut
    /// Nothing was received for the idle timeout both sides agreed on (RFC 9000 §10.1).
    case idleTimeout
    /// The server answered with Version Negotiation and none of its versions is ours (§6.2).
    case noCommonVersion([UInt32])
}

/// Why a stream operation was refused.
public enum QUICStreamError: Error, Equatable, Sendable {
    case notConnected
    /// The peer's MAX_STREAMS does not allow another stream now.
    case streamLimit
    /// No such stream, or not one we may send on.
    case unknownStream(UInt64)
    /// Data written after the stream's FIN.
    case finished(UInt64)
}

/// A QUIC v1 connection as a sans-IO state machine (RFC 9000, 9001): feed it
/// datagrams and the time, take datagrams to send, events and the next
/// deadline. One TLS handshake through `QUICTLS`, the three packet number
/// spaces, ACKs, CRYPTO and stream reassembly, flow control, bidirectional
/// streams that are forgotten once both sides ended (MAX_STREAMS gives the
/// peer room for more), loss detection by packet and time thresholds with
/// NewReno congestion control, and probe timeouts (resending what is
/// unacknowledged).
///
/// Key updates: the peer's are followed, ours started by `initiateKeyUpdate()`.
///
/// Not yet: Retry tokens of our own (a listener's stateless Retry hands
/// the connection what it validated: `init(server:afterRetry:)`), 0-RTT,
/// keeping the previous 1-RTT keys for reordered packets after an update,
/// connection migration and new connection IDs, pacing, persistent
/// congestion and ECN, the closing/draining periods.
public struct QUICConnection: ~Copyable {
    public enum Role: Sendable { case client, server }

    public struct Configuration: Sendable {
        /// Certificate, key, ALPN and verifier; its transport parameters are replaced by `transportParameters`.
        public var tls: QUICTLSConfiguration
        /// Our limits; the connection IDs in it are filled in by the connection.
        public var transportParameters: TransportParameters
        /// The largest datagram we send (RFC 9000 §14: 1200 is always allowed).
        public var maxDatagramSize = 1200
        /// The RTT assumed before the first sample (RFC 9002 §6.2.2: 333 ms); the probe timeout follows from it.
        public var initialRTT: Duration = .milliseconds(333)
        /// Consecutive probe timeouts without an acknowledgment before the connection is given up.
        public var maxProbeTimeouts = 8

        public init(tls: QUICTLSConfiguration, transportParameters: TransportParameters = .defaultLimits) {
            self.tls = tls
            self.transportParameters = transportParameters
        }
    }

    enum Phase: Equatable {
        /// A server before the client's first Initial (which names the Initial keys).
        case awaitingFirstInitial
        case handshaking
        /// The handshake completed; `confirmed` once HANDSHAKE_DONE was received (client) or sent (server).
        case established(confirmed: Bool)
        /// A CONNECTION_CLOSE is to be sent, then the connection is closed.
        case closing(Frame, QUICConnectionError)
        case closed(QUICConnectionError)
    }

    enum Space: Int, CaseIterable {
        case initial = 0, handshake = 1, application = 2

        init(_ level: EncryptionLevel) {
            switch level {
            case .initial: self = .initial
            case .handshake: self = .handshake
            case .zeroRTT, .oneRTT: self = .application
            }
        }

        var level: EncryptionLevel {
            switch self {
            case .initial: .initial
            case .handshake: .handshake
            case .application: .oneRTT
            }
        }
    }

    /// A packet we sent and may have to resend the contents of.
    struct SentPacket {
        var frames: [Frame]
        var size: Int
        var sentAt: ContinuousClock.Instant
    }

    /// What a listener's Retry established before the server connection exists (RFC 9000 §8.1.2, §7.3).
    public struct RetryContext: Sendable, Equatable {
        /// The destination ID of the client's first Initial, the one the Retry answered.
        public var originalDestination: ConnectionID
        /// The source ID the Retry carried; the client now sends to it, and it becomes the server's ID.
        public var retrySource: ConnectionID

        public init(originalDestination: ConnectionID, retrySource: ConnectionID) {
            self.originalDestination = originalDestination
            self.retrySource = retrySource
        }
    }

    /// One packet number space (RFC 9000 §12.3) with its keys and CRYPTO stream.
    struct PacketSpace {
        var sendKeys: PacketKeys?
        var receiveKeys: PacketKeys?
        var discarded = false
        var nextPacketNumber: UInt64 = 0
        var largestAcked: UInt64?
        var largestReceived: UInt64?
        /// Packet numbers received, largest range first, for ACK frames.
        var received: [ClosedRange<UInt64>] = []
        var ackPending = false
        var inFlight: [UInt64: SentPacket] = [:]
        /// When the oldest packet below the largest acknowledged counts as lost by time (RFC 9002 §6.1.2).
        var lossTime: ContinuousClock.Instant?
        var cryptoSend = SendBuffer()
        var cryptoReceive: ReassemblyBuffer

        init(cryptoLimit: UInt64) {
            cryptoReceive = ReassemblyBuffer(limit: cryptoLimit)
        }

        /// Records a packet number; false for a duplicate, which is not processed again.
        mutating func noteReceived(_ number: UInt64) -> Bool {
            if received.contains(where: { $0.contains(number) }) { return false }
            largestReceived = max(largestReceived ?? 0, number)
            var ranges = received + [number...number]
            ranges.sort { $0.lowerBound > $1.lowerBound }
            var merged: [ClosedRange<UInt64>] = []
            for range in ranges {
                if let last = merged.last, range.upperBound + 1 >= last.lowerBound {
                    merged[merged.count - 1] = min(range.lowerBound, last.lowerBound)...max(range.upperBound, last.upperBound)
                } else {
                    merged.append(range)
                }
            }
            // Old ranges go first: an ACK frame need not repeat all history.
            received = Array(merged.prefix(32))
            return true
        }
    }

    struct Stream {
        var send = SendBuffer()
        var receive: ReassemblyBuffer
        /// The peer's limit on our data in this stream.
        var sendLimit: UInt64
        /// The window we grant, added to what was delivered.
        let window: UInt64
        var receiveFinished = false
    }

    public let role: Role
    let configuration: Configuration
    var tls: QUICTLS
    var phase: Phase
    var spaces: [PacketSpace]
    let localCID: ConnectionID
    var remoteCID: ConnectionID
    /// The destination ID of the client's first Initial, which the Initial keys come from.
    var originalDestination: ConnectionID
    var peerParameters: TransportParameters?
    var events: [QUICConnectionEvent] = []
    var streams: [UInt64: Stream] = [:]
    var nextStreamID: UInt64
    var peerMaxStreamsBidi: UInt64 = 0
    /// Peer-initiated bidirectional streams: how many were opened, how many ended, and
    /// how many we allow in all (initial_max_streams_bidi plus those ended, sent as MAX_STREAMS).
    var peerStreamsOpened: UInt64 = 0
    var peerStreamsEnded: UInt64 = 0
    var dataReceivedEnded: UInt64 = 0
    /// Connection-level flow control (§4.1): ours and the peer's.
    var peerMaxData: UInt64 = 0
    var dataSent: UInt64 = 0
    var maxDataAdvertised: UInt64
    var dataDelivered: UInt64 = 0
    var controlFrames: [Frame] = []
    var handshakeDonePending = false
    var remoteCIDFromServer = false
    /// Anti-amplification (§8.1): a server sends at most 3× what it received until the address is validated.
    var bytesReceived = 0
    var bytesSent = 0
    var addressValidated: Bool
    var probeDeadline: ContinuousClock.Instant?
    var probeCount = 0
    var rtt: RTTEstimator
    var congestion: NewReno
    /// Ack-eliciting datagrams a probe may send past the congestion window (RFC 9002 §7.5).
    var probeCredit = 0
    var idleDeadline: ContinuousClock.Instant?
    /// The 1-RTT key phases (RFC 9001 §6): of the keys we send with, and of those we open with.
    var sendKeyPhase = false
    var receiveKeyPhase = false
    var processedAnyPacket = false
    var ackElicitingSentSinceReceipt = false
    /// A client's Retry state: the token its Initials carry and the ID the server chose (§17.2.5.2).
    var retryToken: [UInt8] = []
    var retrySource: ConnectionID?
    /// A server created after a Retry.
    let retryContext: RetryContext?
    /// A PING is owed in this space: a probe when there was nothing to resend.
    var probeSpace: Space?

    /// A client connection; the first datagrams come from `send(now:)`.
    public init(client configuration: Configuration) throws(QUICConnectionError) {
        let destination = ConnectionID.random()
        let local = ConnectionID.random()
        var parameters = configuration.transportParameters
        parameters.initialSourceConnectionID = local
        var tlsConfiguration = configuration.tls
        tlsConfiguration.transportParameters = parameters.encoded()
        // The ClientHello is made before self exists: a noncopyable value cannot throw once initialized.
        var firstFlight: [QUICTLSEvent] = []
        do {
            tls = try Self.startClient(tlsConfiguration, firstFlight: &firstFlight)
        } catch {
            throw .tls(error)
        }
        role = .client
        self.configuration = configuration
        rtt = RTTEstimator(initial: configuration.initialRTT)
        congestion = NewReno(maxDatagramSize: configuration.maxDatagramSize)
        retryContext = nil
        phase = .handshaking
        localCID = local
        remoteCID = destination
        originalDestination = destination
        nextStreamID = 0
        maxDataAdvertised = configuration.transportParameters.initialMaxData
        addressValidated = true
        spaces = Space.allCases.map { _ in PacketSpace(cryptoLimit: 1 << 16) }
        let keys = InitialSecrets.keys(destination: destination)
        spaces[Space.initial.rawValue].sendKeys = keys.client
        spaces[Space.initial.rawValue].receiveKeys = keys.server
        handle(firstFlight)
    }

    private static func startClient(_ configuration: QUICTLSConfiguration, firstFlight: inout [QUICTLSEvent]) throws(QUICTLSError) -> QUICTLS {
        var handshake = try QUICTLS(role: .client, configuration: configuration)
        firstFlight = try handshake.start()
        return handshake
    }

    /// A server connection, waiting for a client's first Initial. After a
    /// Retry, `afterRetry` says what it validated: the connection then takes
    /// the Retry's source ID as its own and names both IDs in its parameters.
    public init(server configuration: Configuration, afterRetry: RetryContext? = nil) throws(QUICConnectionError) {
        // Replaced once the client's first Initial names the IDs that go in them.
        var tlsConfiguration = configuration.tls
        tlsConfiguration.transportParameters = configuration.transportParameters.encoded()
        if tlsConfiguration.transportParameters.isEmpty { tlsConfiguration.transportParameters = [0x0f, 0x00] }
        do {
            tls = try QUICTLS(role: .server, configuration: tlsConfiguration)
        } catch {
            throw .tls(error)
        }
        role = .server
        self.configuration = configuration
        rtt = RTTEstimator(initial: configuration.initialRTT)
        congestion = NewReno(maxDatagramSize: configuration.maxDatagramSize)
        retryContext = afterRetry
        phase = .awaitingFirstInitial
        localCID = afterRetry?.retrySource ?? ConnectionID.random()
        remoteCID = .empty
        originalDestination = afterRetry?.originalDestination ?? .empty
        nextStreamID = 1
        maxDataAdvertised = configuration.transportParameters.initialMaxData
        // A client that answered a Retry has shown it receives at its address (§8.1.2).
        addressValidated = afterRetry != nil
        spaces = Space.allCases.map { _ in PacketSpace(cryptoLimit: 1 << 16) }
    }

    // MARK: State the owner reads

    public var isConnected: Bool {
        if case .established = phase { return true }
        return false
    }

    public var isClosed: Bool {
        if case .closed = phase { return true }
        return false
    }

    /// When `handleTimeout(now:)` is next due, if anything waits on time.
    public var nextDeadline: ContinuousClock.Instant? {
        guard !isClosed else { return nil }
        return ([probeDeadline, idleDeadline] + spaces.map(\.lossTime)).compactMap { $0 }.min()
    }

    public var applicationProtocol: String? { tls.applicationProtocol }
    public var peerCertificates: [[UInt8]] { tls.peerCertificates }
    public var peerTransportParameters: TransportParameters? { peerParameters }

    /// Events since the last call.
    public mutating func takeEvents() -> [QUICConnectionEvent] {
        defer { events = [] }
        return events
    }

    // MARK: Streams

    /// Opens a bidirectional stream (IDs 0, 4, 8... for a client; 1, 5, 9... for a server).
    public mutating func openStream() throws(QUICStreamError) -> UInt64 {
        guard isConnected, let peer = peerParameters else { throw .notConnected }
        guard nextStreamID / 4 < peerMaxStreamsBidi else { throw .streamLimit }
        let id = nextStreamID
        nextStreamID += 4
        streams[id] = Stream(
            receive: ReassemblyBuffer(limit: configuration.transportParameters.initialMaxStreamDataBidiLocal),
            sendLimit: peer.initialMaxStreamDataBidiRemote, window: configuration.transportParameters.initialMaxStreamDataBidiLocal)
        return id
    }

    /// Queues bytes on a stream; `fin` ends our side of it.
    public mutating func write(_ bytes: [UInt8], to streamID: UInt64, fin: Bool = false) throws(QUICStreamError) {
        guard isConnected else { throw .notConnected }
        guard streams[streamID] != nil, streamID & 0x02 == 0 || isLocal(streamID) else { throw .unknownStream(streamID) }
        guard !streams[streamID]!.send.finWritten else { throw .finished(streamID) }
        streams[streamID]!.send.write(bytes, fin: fin)
    }

    /// Closes the connection with an application error code (0 for a clean close).
    public mutating func close(code: UInt64 = 0, reason: String = "") {
        switch phase {
        case .closing, .closed: return
        case .established:
            enterClosing(.connectionClose(.application(code: code, reason: Array(reason.utf8))), .application(code: code, reason: reason))
        case .handshaking, .awaitingFirstInitial:
            // Before 1-RTT keys an application close travels as a transport APPLICATION_ERROR (§10.2.3).
            enterClosing(.connectionClose(.transport(code: .applicationError, frameType: 0, reason: [])), .application(code: code, reason: reason))
        }
    }

    func isLocal(_ streamID: UInt64) -> Bool { (streamID & 1 == 0) == (role == .client) }

    var isConfirmed: Bool { phase == .established(confirmed: true) }

    /// Moves our 1-RTT send keys to the next generation (RFC 9001 §6.1), as
    /// AEAD limits eventually demand; the peer follows when it sees the new
    /// phase. Refused before the handshake is confirmed and while the peer
    /// has not yet answered the previous update.
    public mutating func initiateKeyUpdate() throws(QUICStreamError) {
        guard isConfirmed, sendKeyPhase == receiveKeyPhase, let keys = spaces[Space.application.rawValue].sendKeys else {
            throw .notConnected
        }
        spaces[Space.application.rawValue].sendKeys = keys.updated()
        sendKeyPhase.toggle()
    }

    /// The peer's packets came under the next keys: open with those from now
    /// on, and follow with our send keys unless we led the update.
    mutating func acceptKeyUpdate() {
        let index = Space.application.rawValue
        spaces[index].receiveKeys = spaces[index].receiveKeys?.updated()
        receiveKeyPhase.toggle()
        if sendKeyPhase != receiveKeyPhase {
            spaces[index].sendKeys = spaces[index].sendKeys?.updated()
            sendKeyPhase = receiveKeyPhase
        }
    }

    // MARK: Receiving

    /// Processes one received UDP datagram.
    public mutating func receive(datagram: [UInt8], now: ContinuousClock.Instant) {
        switch phase {
        case .closed, .closing: return
        default: break
        }
        bytesReceived += datagram.count
        let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: localCID.count)
        for packet in split.packets {
            receive(packet, datagramSize: datagram.count, now: now)
            if case .closing = phase { return }
            if case .closed = phase { return }
        }
    }

    mutating func receive(_ packet: ProtectedPacket, datagramSize: Int, now: ContinuousClock.Instant) {
        let space: Space
        switch packet.header {
        case .long(let header):
            guard header.version == QUICVersion.v1, header.type != .zeroRTT else { return }
            space = header.type == .initial ? .initial : .handshake
            if phase == .awaitingFirstInitial {
                // A client's first Initial fills a 1200-byte datagram (§14.1) and names at least 8
                // unpredictable bytes (§7.2); only one that decrypts decides the connection's IDs.
                guard header.type == .initial, datagramSize >= 1200, header.destination.count >= 8,
                    retryContext == nil || header.destination == localCID,
                    (try? PacketProtection.open(packet, keys: InitialSecrets.keys(destination: header.destination).client, largestReceived: nil)) != nil
                else { return }
                acceptFirstInitial(header)
                if isClosed { return }
            } else if header.destination != localCID && !(space == .initial && header.destination == originalDestination && role == .server) {
                return
            }
        case .short(let header):
            guard header.destination == localCID else { return }
            space = .application
        case .retry(let retry):
            return receiveRetry(retry, packet)
        case .versionNegotiation(let negotiation):
            return receiveVersionNegotiation(negotiation)
        case .unsupportedVersion:
            return
        }
        let index = space.rawValue
        guard !spaces[index].discarded, let keys = spaces[index].receiveKeys else { return }
        var opened: OpenedPacket
        do {
            opened = try PacketProtection.open(packet, keys: keys, largestReceived: spaces[index].largestReceived)
        } catch {
            // Reserved bits set in an authentic packet are a violation (§17.2); anything else that fails to decrypt is dropped (RFC 9001 §5.5).
            if error == .reservedBitsSet { fail(.protocolViolation, "reserved header bits set") }
            // A 1-RTT packet may be the peer's first after a key update (RFC 9001 §6.2): the next keys open it.
            guard error == .authenticationFailed, space == .application, isConfirmed,
                let updated = try? PacketProtection.open(packet, keys: keys.updated(), largestReceived: spaces[index].largestReceived)
            else { return }
            guard updated.keyPhase != receiveKeyPhase else {
                return fail(.keyUpdateError, "packet under the next keys without a new key phase")
            }
            opened = updated
            acceptKeyUpdate()
        }
        processedAnyPacket = true
        idleDeadline = now + idleTimeout
        ackElicitingSentSinceReceipt = false
        if role == .client, space == .initial, !remoteCIDFromServer, case .long(let header) = packet.header {
            // The server's chosen ID replaces the one we made up (§7.2).
            remoteCID = header.source
            remoteCIDFromServer = true
        }
        if role == .server, space == .handshake, !spaces[Space.initial.rawValue].discarded {
            // A Handshake packet proves the client received ours (§8.1), and Initial keys are done with (RFC 9001 §4.9.1).
            addressValidated = true
            discard(.initial)
        }
        guard spaces[index].noteReceived(opened.packetNumber) else { return }
        let frames: [Frame]
        do {
            frames = try Frame.decodeAll(opened.payload)
        } catch {
            return fail(error.transportError, "frame: \(error)")
        }
        guard !frames.isEmpty else { return fail(.protocolViolation, "packet without frames") }
        for frame in frames {
            guard frame.isAllowed(at: space.level) else { return fail(.protocolViolation, "\(frame) not allowed at \(space.level)") }
            if frame.isAckEliciting { spaces[index].ackPending = true }
            handle(frame, in: space, now: now)
            if case .closing = phase { return }
            if case .closed = phase { return }
        }
    }

    mutating func acceptFirstInitial(_ header: LongHeader) {
        if retryContext == nil { originalDestination = header.destination }
        remoteCID = header.source
        var parameters = configuration.transportParameters
        parameters.originalDestinationConnectionID = originalDestination
        parameters.initialSourceConnectionID = localCID
        parameters.retrySourceConnectionID = retryContext?.retrySource
        do {
            try tls.setTransportParameters(parameters.encoded())
        } catch {
            phase = .closed(.tls(error))
            events.append(.closed(.tls(error)))
            return
        }
        let keys = InitialSecrets.keys(destination: header.destination)
        spaces[Space.initial.rawValue].sendKeys = keys.server
        spaces[Space.initial.rawValue].receiveKeys = keys.client
        phase = .handshaking
    }

    /// A client takes one Retry, before any other server packet, with a valid
    /// tag and a token; it then sends its Initials to the Retry's source ID,
    /// with new Initial keys and the token (RFC 9000 §17.2.5.2, RFC 9001 §5.2).
    mutating func receiveRetry(_ retry: RetryPacket, _ packet: ProtectedPacket) {
        guard role == .client, retrySource == nil, !processedAnyPacket, !retry.token.isEmpty, retry.destination == localCID,
            RetryIntegrity.isValid(packet, originalDestination: originalDestination)
        else { return }
        retrySource = retry.source
        retryToken = retry.token
        remoteCID = retry.source
        let keys = InitialSecrets.keys(destination: retry.source)
        let initial = Space.initial.rawValue
        spaces[initial].sendKeys = keys.client
        spaces[initial].receiveKeys = keys.server
        // The ClientHello goes again under the new keys; packet numbers go on (§17.2.5.3).
        for number in spaces[initial].inFlight.keys.sorted() {
            for frame in spaces[initial].inFlight[number]!.frames { requeue(frame, space: initial) }
        }
        spaces[initial].inFlight = [:]
    }

    /// Version Negotiation ends a client's attempt only if it came before any
    /// other server packet and does not list our version (§6.2).
    mutating func receiveVersionNegotiation(_ negotiation: VersionNegotiationPacket) {
        guard role == .client, !processedAnyPacket, retrySource == nil, negotiation.destination == localCID.bytes,
            negotiation.source == originalDestination.bytes, !negotiation.versions.contains(QUICVersion.v1)
        else { return }
        phase = .closed(.noCommonVersion(negotiation.versions))
        events.append(.closed(.noCommonVersion(negotiation.versions)))
    }

    mutating func handle(_ frame: Frame, in space: Space, now: ContinuousClock.Instant) {
        let index = space.rawValue
        switch frame {
        case .padding, .ping, .newToken, .newConnectionID, .retireConnectionID, .pathResponse, .dataBlocked, .streamDataBlocked, .streamsBlocked:
            // Nothing to do yet: one path, one connection ID, no tokens kept.
            break
        case .pathChallenge(let data):
            controlFrames.append(.pathResponse(data))
        case .ack(let ack):
            guard ack.largest < spaces[index].nextPacketNumber else { return fail(.protocolViolation, "ACK of packet \(ack.largest) never sent") }
            var newlyAcked = false
            if let largest = spaces[index].inFlight[ack.largest] {
                // An RTT sample from the largest acknowledged, when it is new (RFC 9002 §5.1); the peer's
                // ACK delay counts only in the application space.
                let exponent = peerParameters?.ackDelayExponent ?? 3
                let reported = Duration.microseconds(Int64(min(ack.delay, 1 << 40) << min(exponent, 20)))
                let maxDelay = Duration.milliseconds(Int64(peerParameters?.maxAckDelay ?? 25))
                rtt.update(sample: now - largest.sentAt, ackDelay: space == .application ? min(reported, maxDelay) : .zero)
            }
            var touchedStreams: Set<UInt64> = []
            for number in spaces[index].inFlight.keys where ack.contains(number) {
                let sent = spaces[index].inFlight[number]!
                congestion.acknowledged(sent.size, sentAt: sent.sentAt)
                for case .stream(let stream) in sent.frames {
                    streams[stream.streamID]?.send.markAcked(offset: stream.offset, length: stream.data.count, fin: stream.fin)
                    touchedStreams.insert(stream.streamID)
                }
                spaces[index].inFlight[number] = nil
                newlyAcked = true
            }
            for id in touchedStreams { retireIfDone(id) }
            spaces[index].largestAcked = max(spaces[index].largestAcked ?? 0, ack.largest)
            if newlyAcked { detectLosses(index, now: now) }
            if newlyAcked {
                probeCount = 0
                restartProbeTimer(now: now)
            }
        case .crypto(let offset, let data):
            do {
                try spaces[index].cryptoReceive.insert(data, at: offset)
            } catch {
                return fail(.cryptoBufferExceeded, "CRYPTO at \(space.level): \(error)")
            }
            let ordered = spaces[index].cryptoReceive.read()
            guard !ordered.isEmpty else { return }
            do {
                handle(try tls.receive(ordered, at: space.level))
            } catch {
                fail(tls: error)
            }
        case .stream(let stream):
            receiveStream(stream)
        case .resetStream(let streamID, let errorCode, _):
            guard streams[streamID] != nil, !streams[streamID]!.receiveFinished else { return }
            streams[streamID]!.receiveFinished = true
            events.append(.streamReset(streamID: streamID, errorCode: errorCode))
            retireIfDone(streamID)
        case .stopSending(let streamID, let errorCode):
            // We stop sending too, with RESET_STREAM carrying the peer's code (§3.5).
            guard streams[streamID] != nil, !streams[streamID]!.send.reset else { return }
            let finalSize = streams[streamID]!.send.resetSending()
            controlFrames.append(.resetStream(streamID: streamID, errorCode: errorCode, finalSize: finalSize))
            retireIfDone(streamID)
        case .maxData(let maximum):
            peerMaxData = max(peerMaxData, maximum)
        case .maxStreamData(let streamID, let maximum):
            if streams[streamID] != nil { streams[streamID]!.sendLimit = max(streams[streamID]!.sendLimit, maximum) }
        case .maxStreams(let bidirectional, let maximum):
            if bidirectional { peerMaxStreamsBidi = max(peerMaxStreamsBidi, maximum) }
        case .handshakeDone:
            guard role == .client else { return fail(.protocolViolation, "HANDSHAKE_DONE from a client") }
            if case .established(false) = phase {
                // Confirmed (RFC 9001 §4.1.2): Handshake keys are done with.
                phase = .established(confirmed: true)
                discard(.handshake)
            }
        case .connectionClose(let close):
            phase = .closed(.peer(close))
            events.append(.closed(.peer(close)))
        }
    }

    mutating func receiveStream(_ frame: StreamFrame) {
        let id = frame.streamID
        if streams[id] == nil {
            if isLocal(id) {
                // One of ours that ended (a late resend) is ignored; one never opened is an error.
                guard id < nextStreamID else { return fail(.streamStateError, "STREAM on stream \(id) we did not open") }
                return
            }
            guard id & 0x02 == 0 else { return fail(.streamLimitError, "unidirectional stream \(id): we allow none") }
            let index = id / 4
            guard index >= peerStreamsOpened else { return }  // ended already
            guard index < peerStreamLimit else { return fail(.streamLimitError, "stream \(id) beyond our limit") }
            // Opening a stream opens every lower one of its kind (§3.2).
            for lower in peerStreamsOpened...index {
                streams[lower * 4 + (role == .client ? 1 : 0)] = Stream(
                    receive: ReassemblyBuffer(limit: configuration.transportParameters.initialMaxStreamDataBidiRemote),
                    sendLimit: peerParameters?.initialMaxStreamDataBidiLocal ?? 0,
                    window: configuration.transportParameters.initialMaxStreamDataBidiRemote)
            }
            peerStreamsOpened = index + 1
        }
        let before = streams[id]!.receive.highestOffset
        do {
            try streams[id]!.receive.insert(frame.data, at: frame.offset, fin: frame.fin)
        } catch {
            switch error {
            case .finalSizeChanged: return fail(.finalSizeError, "stream \(id)")
            case .limitExceeded, .tooFragmented: return fail(.flowControlError, "stream \(id): \(error)")
            }
        }
        let grown = streams[id]!.receive.highestOffset - before
        guard dataDeliveredLimitAllows(grown) else { return fail(.flowControlError, "connection data beyond MAX_DATA") }
        let data = streams[id]!.receive.read()
        let finished = streams[id]!.receive.isComplete && !streams[id]!.receiveFinished
        if finished { streams[id]!.receiveFinished = true }
        guard !data.isEmpty || finished else { return }
        events.append(.streamData(streamID: id, data: data, fin: finished))
        defer { if finished { retireIfDone(id) } }
        dataDelivered += UInt64(data.count)
        // Delivered data is consumed: widen the windows once half is used.
        let stream = streams[id]!
        if !stream.receiveFinished, stream.receive.limit - stream.receive.readOffset < stream.window / 2 {
            streams[id]!.receive.limit = stream.receive.readOffset + stream.window
            controlFrames.append(.maxStreamData(streamID: id, maximum: streams[id]!.receive.limit))
        }
        let window = configuration.transportParameters.initialMaxData
        if maxDataAdvertised - dataDelivered < window / 2 {
            maxDataAdvertised = dataDelivered + window
            controlFrames.append(.maxData(maxDataAdvertised))
        }
    }

    /// How many peer streams we allow in all: the initial limit plus one for each that ended.
    var peerStreamLimit: UInt64 { configuration.transportParameters.initialMaxStreamsBidi + peerStreamsEnded }

    /// A stream whose both sides are done is forgotten; for a peer's stream,
    /// MAX_STREAMS lets the peer open another in its place (§4.6).
    mutating func retireIfDone(_ id: UInt64) {
        guard let stream = streams[id], stream.receiveFinished, stream.send.isDone else { return }
        dataReceivedEnded += stream.receive.highestOffset
        streams[id] = nil
        guard !isLocal(id) else { return }
        peerStreamsEnded += 1
        controlFrames.removeAll { if case .maxStreams(true, _) = $0 { true } else { false } }
        controlFrames.append(.maxStreams(bidirectional: true, maximum: peerStreamLimit))
    }

    /// Data received on streams that ended, still counted against MAX_DATA.
    var dataReceivedTotal: UInt64 { dataReceivedEnded + streams.values.reduce(0) { $0 + $1.receive.highestOffset } }

    func dataDeliveredLimitAllows(_ grown: UInt64) -> Bool {
        grown == 0 || dataReceivedTotal <= maxDataAdvertised
    }

    /// Installs what TLS produced.
    mutating func handle(_ tlsEvents: [QUICTLSEvent]) {
        for event in tlsEvents {
            switch event {
            case .readSecret(let level, let suite, let secret):
                guard level != .zeroRTT else { continue }
                spaces[Space(level).rawValue].receiveKeys = try? PacketKeys(secret: secret, suite: suite)
            case .writeSecret(let level, let suite, let secret):
                guard level != .zeroRTT else { continue }
                spaces[Space(level).rawValue].sendKeys = try? PacketKeys(secret: secret, suite: suite)
            case .send(let level, let bytes):
                spaces[Space(level).rawValue].cryptoSend.write(bytes, fin: false)
            case .handshakeComplete:
                handshakeCompleted()
            }
        }
    }

    mutating func handshakeCompleted() {
        let parameters: TransportParameters
        do {
            parameters = try TransportParameters(decoding: tls.peerTransportParameters ?? [], fromServer: role == .client)
        } catch {
            return fail(.transportParameterError, "\(error)")
        }
        // The IDs in the parameters must be those the packets carried (§7.3): no one rewrote them.
        guard parameters.initialSourceConnectionID == remoteCID else {
            return fail(.transportParameterError, "initial_source_connection_id does not match")
        }
        if role == .client, parameters.originalDestinationConnectionID != originalDestination {
            return fail(.transportParameterError, "original_destination_connection_id does not match")
        }
        if role == .client, parameters.retrySourceConnectionID != retrySource {
            return fail(.transportParameterError, "retry_source_connection_id does not match the Retry")
        }
        peerParameters = parameters
        peerMaxData = parameters.initialMaxData
        peerMaxStreamsBidi = parameters.initialMaxStreamsBidi
        if role == .server {
            // The server's handshake is confirmed at completion (RFC 9001 §4.1.2); it tells the client.
            handshakeDonePending = true
            phase = .established(confirmed: true)
            discard(.handshake)
        } else {
            phase = .established(confirmed: false)
        }
        events.append(.connected)
    }

    mutating func discard(_ space: Space) {
        spaces[space.rawValue].discarded = true
        spaces[space.rawValue].sendKeys = nil
        spaces[space.rawValue].receiveKeys = nil
        congestion.forget(spaces[space.rawValue].inFlight.values.reduce(0) { $0 + $1.size })
        spaces[space.rawValue].inFlight = [:]
        spaces[space.rawValue].lossTime = nil
        spaces[space.rawValue].ackPending = false
        if !spaces.contains(where: { !$0.inFlight.isEmpty }), !clientAwaitsConfirmation {
            // Nothing left to probe for.
            probeDeadline = nil
        }
    }

    mutating func fail(_ code: TransportErrorCode, _ reason: String) {
        enterClosing(.connectionClose(.transport(code: code, frameType: 0, reason: Array(reason.utf8.prefix(100)))), .local(code, reason: reason))
    }

    mutating func fail(tls error: QUICTLSError) {
        enterClosing(
            .connectionClose(.transport(code: error.transportError, frameType: 0x06, reason: [])), .tls(error))
    }

    mutating func enterClosing(_ frame: Frame, _ error: QUICConnectionError) {
        switch phase {
        case .closing, .closed: return
        default: phase = .closing(frame, error)
        }
    }

    // MARK: Sending

    /// The datagrams to send now: ACKs, CRYPTO data, stream data, control frames.
    public mutating func send(now: ContinuousClock.Instant) -> [[UInt8]] {
        if case .closing(let frame, let error) = phase {
            let datagram = closeDatagram(frame)
            phase = .closed(error)
            events.append(.closed(error))
            return datagram.isEmpty ? [] : [datagram]
        }
        guard case .closed = phase else {
            var datagrams: [[UInt8]] = []
            while datagrams.count < 64, let datagram = nextDatagram(now: now) {
                datagrams.append(datagram)
            }
            return datagrams
        }
        return []
    }

    /// A CONNECTION_CLOSE in every space we have keys for, the peer may lack the later ones (§10.2.3).
    mutating func closeDatagram(_ frame: Frame) -> [UInt8] {
        var datagram: [UInt8] = []
        let spacesWithKeys = Space.allCases.filter { spaces[$0.rawValue].sendKeys != nil }
        // A client's datagram with an Initial in it is padded to 1200 bytes (§14.1), in its last packet.
        let pad = role == .client && spacesWithKeys.contains(.initial)
        for space in spacesWithKeys {
            var close = frame
            if space != .application, case .connectionClose(.application) = frame {
                close = .connectionClose(.transport(code: .applicationError, frameType: 0, reason: []))
            }
            let target = pad && space == spacesWithKeys.last ? 1200 - datagram.count : nil
            datagram += seal(space: space, frames: [close], padTo: target, now: nil)
        }
        return datagram
    }

    mutating func nextDatagram(now: ContinuousClock.Instant) -> [UInt8]? {
        var budget = configuration.maxDatagramSize
        if role == .server, !addressValidated {
            budget = min(budget, 3 * bytesReceived - bytesSent)
        }
        var packets: [(Space, [Frame])] = []
        var used = 0
        // Past the congestion window only ACKs go, and what a probe must send.
        let ackOnly = !congestion.canSend && probeCredit == 0
        for space in Space.allCases {
            let index = space.rawValue
            guard !spaces[index].discarded, spaces[index].sendKeys != nil else { continue }
            let overhead = headerSize(space) + PacketProtection.tagLength
            let room = budget - used - overhead
            guard room > 32 else { break }
            let frames = collectFrames(space, room: room, ackOnly: ackOnly)
            guard !frames.isEmpty else { continue }
            packets.append((space, frames))
            used += overhead + frames.reduce(0) { $0 + $1.encoded.count }
            // A client's Initial is padded to fill its datagram (§14.1): nothing is coalesced after it.
            if role == .client, space == .initial { break }
        }
        guard !packets.isEmpty else { return nil }
        if !congestion.canSend, packets.contains(where: { $0.1.contains(where: \.isAckEliciting) }) {
            probeCredit = max(0, probeCredit - 1)
        }
        let hasInitial = packets.contains { $0.0 == .initial && $0.1.contains(where: \.isAckEliciting) }
        let mustPad = hasInitial || (role == .client && packets.contains { $0.0 == .initial })
        var datagram: [UInt8] = []
        for (position, (space, frames)) in packets.enumerated() {
            let isLast = position == packets.count - 1
            let padTarget = isLast && mustPad ? max(0, min(1200, budget) - datagram.count) : nil
            datagram += seal(space: space, frames: frames, padTo: padTarget, now: now)
            if role == .client, space == .handshake, !spaces[Space.initial.rawValue].discarded {
                // The client is done with Initial keys once it sends a Handshake packet (RFC 9001 §4.9.1).
                discard(.initial)
            }
        }
        bytesSent += datagram.count
        return datagram
    }

    func headerSize(_ space: Space) -> Int {
        switch space {
        case .application: 1 + remoteCID.count + 4
        case .handshake: 1 + 4 + 1 + remoteCID.count + 1 + localCID.count + 2 + 4
        case .initial: 1 + 4 + 1 + remoteCID.count + 1 + localCID.count + VarInt.encodedLength(UInt64(retryToken.count))! + retryToken.count + 2 + 4
        }
    }

    /// Frames for one packet of `space`, at most `room` bytes encoded.
    mutating func collectFrames(_ space: Space, room: Int, ackOnly: Bool = false) -> [Frame] {
        let index = space.rawValue
        var frames: [Frame] = []
        var left = room
        func add(_ frame: Frame) {
            frames.append(frame)
            left -= frame.encoded.count
        }
        if spaces[index].ackPending, let ack = try? ACKFrame(ranges: spaces[index].received) {
            add(.ack(ack))
            spaces[index].ackPending = false
        }
        guard !ackOnly else { return frames }
        while left > 16, let piece = spaces[index].cryptoSend.next(maxLength: left - 12, limit: .max) {
            add(.crypto(offset: piece.offset, data: piece.data))
        }
        if probeSpace == space {
            if !frames.contains(where: \.isAckEliciting) { add(.ping) }
            probeSpace = nil
        }
        guard space == .application, isConnected else { return frames }
        if handshakeDonePending, left > 1 {
            add(.handshakeDone)
            handshakeDonePending = false
        }
        while let frame = controlFrames.first, frame.encoded.count <= left {
            add(frame)
            controlFrames.removeFirst()
        }
        for id in streams.keys.sorted() where left > 24 {
            while left > 24 {
                let overhead = 1 + VarInt.encodedLength(id)! + 8 + 2
                let connectionRoom = peerMaxData > dataSent ? peerMaxData - dataSent : 0
                let newLimit = min(streams[id]!.sendLimit, streams[id]!.send.sentOffset + connectionRoom)
                let before = streams[id]!.send.sentOffset
                guard let piece = streams[id]!.send.next(maxLength: left - overhead, limit: newLimit) else { break }
                dataSent += streams[id]!.send.sentOffset - before
                add(.stream(StreamFrame(streamID: id, offset: piece.offset, data: piece.data, fin: piece.fin)))
            }
        }
        return frames
    }

    /// Seals one packet and records it for loss recovery.
    mutating func seal(space: Space, frames: [Frame], padTo target: Int?, now: ContinuousClock.Instant?) -> [UInt8] {
        let index = space.rawValue
        guard let keys = spaces[index].sendKeys else { return [] }
        let number = spaces[index].nextPacketNumber
        spaces[index].nextPacketNumber += 1
        var payload: [UInt8] = []
        for frame in frames { frame.encode(into: &payload) }
        let numberLength = PacketNumber.encodedLength(number, largestAcked: spaces[index].largestAcked)
        if let target {
            // Header bytes are known before sealing (the Length field is always 2 bytes here), so the padding is exact.
            let size = (space == .application ? 1 + remoteCID.count : headerSize(space) - 4) + numberLength + payload.count + PacketProtection.tagLength
            if size < target { payload += [UInt8](repeating: 0, count: target - size) }
        }
        let packet: [UInt8]
        switch space {
        case .application:
            packet = PacketProtection.seal(
                ShortHeader(destination: remoteCID), packetNumber: number, largestAcked: spaces[index].largestAcked, keyPhase: sendKeyPhase,
                payload: payload, keys: keys, packetNumberLength: numberLength)
        case .initial, .handshake:
            let header = LongHeader(
                type: space == .initial ? .initial : .handshake, destination: remoteCID, source: localCID, token: space == .initial ? retryToken : [])
            packet = PacketProtection.seal(
                header, packetNumber: number, largestAcked: spaces[index].largestAcked, payload: payload, keys: keys,
                packetNumberLength: numberLength)
        }
        if let now, frames.contains(where: \.isAckEliciting) {
            spaces[index].inFlight[number] = SentPacket(frames: frames, size: packet.count, sentAt: now)
            congestion.sent(packet.count)
            if probeDeadline == nil { restartProbeTimer(now: now) }
            // Only the first ack-eliciting packet after a receipt restarts the idle timer (§10.1):
            // a peer that went away cannot keep it running by our own retransmissions.
            if processedAnyPacket, !ackElicitingSentSinceReceipt {
                idleDeadline = now + idleTimeout
                ackElicitingSentSinceReceipt = true
            }
        }
        return packet
    }

    /// Declares lost what was sent three packets or 9/8 RTT before the largest
    /// acknowledged (RFC 9002 §6.1), resends its frames, and tells congestion control.
    mutating func detectLosses(_ index: Int, now: ContinuousClock.Instant) {
        spaces[index].lossTime = nil
        guard let largestAcked = spaces[index].largestAcked else { return }
        let rttBasis = max(rtt.smoothed, rtt.latest ?? rtt.smoothed)
        let lossDelay = max(rttBasis * 9 / 8, .milliseconds(1))
        var lostBytes = 0
        var newestLost: ContinuousClock.Instant?
        for number in spaces[index].inFlight.keys.sorted() where number < largestAcked {
            let sent = spaces[index].inFlight[number]!
            if largestAcked - number >= 3 || sent.sentAt + lossDelay <= now {
                for frame in sent.frames { requeue(frame, space: index) }
                spaces[index].inFlight[number] = nil
                lostBytes += sent.size
                newestLost = max(newestLost ?? sent.sentAt, sent.sentAt)
            } else {
                let due = sent.sentAt + lossDelay
                spaces[index].lossTime = min(spaces[index].lossTime ?? due, due)
            }
        }
        if let newestLost { congestion.lost(lostBytes, newestSentAt: newestLost, now: now) }
    }

    // MARK: Time

    mutating func restartProbeTimer(now: ContinuousClock.Instant) {
        let outstanding = spaces.contains { !$0.inFlight.isEmpty }
        probeDeadline = outstanding || clientAwaitsConfirmation ? now + probeTimeout : nil
    }

    /// The probe timeout, doubled for each one that expired in a row (RFC 9002 §6.2.1).
    var probeTimeout: Duration {
        let maxAckDelay = isConnected ? Duration.milliseconds(Int64(peerParameters?.maxAckDelay ?? 25)) : .zero
        return rtt.probeTimeout(maxAckDelay: maxAckDelay) * (1 << min(probeCount, 16))
    }

    /// The smaller of both sides' max_idle_timeout (0 is none), and at least
    /// three probe timeouts so that loss alone does not end the connection (§10.1).
    var idleTimeout: Duration {
        let offers = [configuration.transportParameters.maxIdleTimeout, peerParameters?.maxIdleTimeout ?? 0].filter { $0 > 0 }
        guard let agreed = offers.min() else { return .seconds(3600 * 24 * 365) }
        return max(.milliseconds(Int64(min(agreed, 1 << 40))), rtt.probeTimeout(maxAckDelay: .zero) * 3)
    }

    /// A client keeps its timer armed until the handshake is confirmed even
    /// with nothing in flight (RFC 9002 §6.2.2.1): a server stopped by the
    /// anti-amplification limit can only go on once the client sends again.
    var clientAwaitsConfirmation: Bool {
        guard role == .client else { return false }
        switch phase {
        case .handshaking, .established(confirmed: false): return true
        default: return false
        }
    }

    /// Call at `nextDeadline`: what is unacknowledged is sent again (RFC 9002 §6.2, simplified: all of it).
    public mutating func handleTimeout(now: ContinuousClock.Instant) {
        guard !isClosed else { return }
        if let idleDeadline, now >= idleDeadline {
            // Silently: the peer's own idle timer ends its side (§10.1).
            phase = .closed(.idleTimeout)
            events.append(.closed(.idleTimeout))
            return
        }
        // The loss timer comes before the probe timer (RFC 9002 §6.2.1).
        var detected = false
        for index in spaces.indices {
            if let lossTime = spaces[index].lossTime, now >= lossTime {
                detectLosses(index, now: now)
                detected = true
            }
        }
        if detected { return }
        guard let deadline = probeDeadline, now >= deadline else { return }
        let outstanding = spaces.contains { !$0.inFlight.isEmpty }
        guard outstanding || clientAwaitsConfirmation else {
            // What was outstanding was acknowledged or its space discarded.
            probeDeadline = nil
            return
        }
        probeCount += 1
        guard probeCount <= configuration.maxProbeTimeouts else {
            phase = .closed(.timedOut)
            events.append(.closed(.timedOut))
            probeDeadline = nil
            return
        }
        if !outstanding {
            let handshake = spaces[Space.handshake.rawValue]
            probeSpace = handshake.sendKeys != nil && !handshake.discarded ? .handshake : .initial
        }
        for index in spaces.indices {
            for number in spaces[index].inFlight.keys.sorted() {
                for frame in spaces[index].inFlight[number]!.frames { requeue(frame, space: index) }
            }
            congestion.forget(spaces[index].inFlight.values.reduce(0) { $0 + $1.size })
            spaces[index].inFlight = [:]
            spaces[index].lossTime = nil
        }
        // Two datagrams may go past the congestion window to probe (RFC 9002 §6.2.4).
        probeCredit = 2
        probeDeadline = now + probeTimeout
    }

    mutating func requeue(_ frame: Frame, space index: Int) {
        switch frame {
        case .crypto(let offset, let data):
            spaces[index].cryptoSend.markLost(offset: offset, length: data.count, fin: false)
        case .stream(let stream):
            streams[stream.streamID]?.send.markLost(offset: stream.offset, length: stream.data.count, fin: stream.fin)
        case .handshakeDone:
            handshakeDonePending = true
        case .maxData, .maxStreamData, .pathResponse, .resetStream:
            controlFrames.append(frame)
        case .maxStreams:
            // Only the latest limit matters; a later one may already be queued.
            if !controlFrames.contains(where: { if case .maxStreams = $0 { true } else { false } }) {
                controlFrames.append(.maxStreams(bidirectional: true, maximum: peerStreamLimit))
            }
        default:
            // ACKs are rebuilt from what was received; PING and PADDING carry nothing.
            break
        }
    }
}
