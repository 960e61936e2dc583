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
    /// The peer answered with a stateless reset: it lost the connection (restarted) (§10.3).
    case statelessReset
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
/// connection migration and connection IDs of our own beyond the handshake's
/// (the peer's are kept and followed when it retires ours), pacing, persistent
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
        /// A PING after this long without sending anything ack-eliciting, so an
        /// idle connection outlives both idle timeouts and NAT bindings (nil: none).
        public var keepAliveInterval: Duration?
        /// Makes the stateless reset token a server gives for its connection
        /// ID (nil: none given). A key that outlives the process (derived from
        /// the node's identity) lets a restarted node reset its old connections.
        public var statelessResetKey: [UInt8]?
        /// Packets sent under one generation of 1-RTT keys before we start the
        /// next (RFC 9001 §6.6: AES-GCM's confidentiality limit is 2^23 packets).
        public var keyUpdateInterval: UInt64 = 1 << 22

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
        /// No packet below this number is in flight: acknowledged, declared lost, or never
        /// ack-eliciting. Lets ACK and loss processing visit only what can still be in flight,
        /// not every packet sent (that was quadratic in the congestion window).
        var oldestInFlight: UInt64 = 0
        /// When the oldest packet below the largest acknowledged counts as lost by time (RFC 9002 §6.1.2).
        var lossTime: ContinuousClock.Instant?
        var cryptoSend = SendBuffer()
        var cryptoReceive: ReassemblyBuffer

        init(cryptoLimit: UInt64) {
            cryptoReceive = ReassemblyBuffer(limit: cryptoLimit)
        }

        /// Takes a packet out of flight.
        mutating func removeInFlight(_ number: UInt64) -> SentPacket? {
            let sent = inFlight.removeValue(forKey: number)
            if number == oldestInFlight { advanceOldestInFlight() }
            return sent
        }

        mutating func advanceOldestInFlight() {
            if inFlight.isEmpty {
                oldestInFlight = nextPacketNumber
                return
            }
            while oldestInFlight < nextPacketNumber, inFlight[oldestInFlight] == nil { oldestInFlight += 1 }
        }

        /// The packet numbers in flight within `range`, ascending.
        func inFlightNumbers(in range: ClosedRange<UInt64>) -> [UInt64] {
            let lower = max(range.lowerBound, oldestInFlight)
            let upper = min(range.upperBound, nextPacketNumber &- 1)
            guard nextPacketNumber > 0, upper >= lower else { return [] }
            if upper - lower < UInt64(inFlight.count) * 4 {
                return (lower...upper).filter { inFlight[$0] != nil }
            }
            return inFlight.keys.filter { range.contains($0) }.sorted()
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
        /// Bytes the application took (`consumed`): the window is granted from here.
        var consumed: UInt64 = 0
    }

    public let role: Role
    let configuration: Configuration
    var tls: QUICTLS
    var phase: Phase
    var spaces: [PacketSpace]
    let localCID: ConnectionID
    var remoteCID: ConnectionID
    /// The sequence number of `remoteCID` among the IDs the peer gave (§5.1.1; the handshake's is 0).
    var remoteCIDSequence: UInt64 = 0
    /// The peer's other connection IDs (NEW_CONNECTION_ID), not in use and not retired, by sequence number.
    var spareRemoteCIDs: [UInt64: ConnectionID] = [:]
    /// The peer asked us to retire every ID numbered below this.
    var remoteRetirePriorTo: UInt64 = 0
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
    /// The highest offsets received on all streams, ended ones included: what counts against MAX_DATA.
    var dataReceived: UInt64 = 0
    /// Connection-level flow control (§4.1): ours and the peer's.
    var peerMaxData: UInt64 = 0
    var dataSent: UInt64 = 0
    var maxDataAdvertised: UInt64
    /// Bytes of all streams the application took: the connection's window is granted from here.
    var dataConsumed: UInt64 = 0
    var controlFrames: [Frame] = []
    /// The stream that last got data into a packet: the next packet starts after it.
    var lastStreamServed: UInt64 = 0
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
    /// When a PING goes out if nothing ack-eliciting did (`Configuration.keepAliveInterval`).
    var keepAliveDeadline: ContinuousClock.Instant?
    /// The 1-RTT key phases (RFC 9001 §6): of the keys we send with, and of those we open with.
    var sendKeyPhase = false
    var receiveKeyPhase = false
    /// Packets sealed under the current 1-RTT send keys (`keyUpdateInterval`).
    var packetsUnderSendKeys: UInt64 = 0
    /// Key updates so far, ours and the peer's.
    public private(set) var keyUpdates = 0
    /// The receive keys before the last update, for packets sent before it
    /// that arrive after it, until three probe timeouts (RFC 9001 §6.5).
    var previousReceiveKeys: (keys: PacketKeys, until: ContinuousClock.Instant)?
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
        return ([probeDeadline, idleDeadline, isConnected ? keepAliveDeadline : nil] + spaces.map(\.lossTime)).compactMap { $0 }.min()
    }

    public var applicationProtocol: String? { tls.applicationProtocol }
    public var peerCertificates: [[UInt8]] { tls.peerCertificates }
    public var peerTransportParameters: TransportParameters? { peerParameters }
    /// The token that ends the peer's stateless reset of this connection, if it gave one.
    public var peerStatelessResetToken: [UInt8]? {
        guard let token = peerParameters?.statelessResetToken, token.count == StatelessReset.tokenLength else { return nil }
        return token
    }

    /// The peer sent a stateless reset (the owner matched its token): the
    /// connection ends at once, sending nothing more (§10.3.1).
    public mutating func receiveStatelessReset() {
        if case .closed = phase { return }
        phase = .closed(.statelessReset)
        events.append(.closed(.statelessReset))
    }

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
        packetsUnderSendKeys = 0
        keyUpdates += 1
    }

    /// The peer's packets came under the next keys: open with those from now
    /// on (the old ones kept a while for late packets), and follow with our
    /// send keys unless we led the update.
    mutating func acceptKeyUpdate(now: ContinuousClock.Instant) {
        let index = Space.application.rawValue
        if let old = spaces[index].receiveKeys { previousReceiveKeys = (old, now + probeTimeout * 3) }
        spaces[index].receiveKeys = spaces[index].receiveKeys?.updated()
        receiveKeyPhase.toggle()
        if sendKeyPhase != receiveKeyPhase {
            spaces[index].sendKeys = spaces[index].sendKeys?.updated()
            sendKeyPhase = receiveKeyPhase
            packetsUnderSendKeys = 0
            keyUpdates += 1
        }
    }
}
