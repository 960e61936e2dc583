import Crypto
import Identity
import Multiformats
import NIOCore
import NIOPosix
import QUIC
import Synchronization
import TLS
import Transport

/// One UDP socket and every QUIC connection on it, dialled or accepted,
/// routed by the destination connection ID of each datagram. Dials leave from
/// a listener's socket, so they come from the port that NATs map and that
/// peers learn (hole punching needs that).
///
/// `@unchecked Sendable`: the mutable state (`connections`, `routes`,
/// `needsFlush`) is touched only on `eventLoop`, the socket channel's loop:
/// reads arrive there, the drivers run there, and `dial` and `close` hop there
/// first (`eventLoop.preconditionInEventLoop()` guards the entry points).
final class QUICEndpoint: @unchecked Sendable {
    let eventLoop: EventLoop
    /// The socket; set by the channel initializer before any read.
    private var channel: Channel?
    private(set) var localMultiaddr: Multiaddr
    /// Accepts inbound connections with this upgrader; nil for a dial-only socket.
    private let inbound: Upgrader?
    private let certificates: QUICCertificates
    private var routes: [ConnectionID: QUICConnectionDriver] = [:]
    private var connections: [ObjectIdentifier: (driver: QUICConnectionDriver, ids: [ConnectionID])] = [:]
    /// The peers' stateless reset tokens, to the connection each ends.
    private var resetTokens: [ArraySlice<UInt8>: QUICConnectionDriver] = [:]
    /// Stateless resets sent in the current second, and that second (a bound
    /// on what forged packets make us send).
    private var resetsSent = (second: Int64(0), count: 0)
    static let maxResetsPerSecond = 64
    private var needsFlush = false
    /// Connections that received datagrams in the current burst of reads.
    private var receivedInBurst: [ObjectIdentifier: QUICConnectionDriver] = [:]
    private var closing = false
    private let retryTokens = RetryTokens()
    private let retryPolicy: QUICRetryPolicy
    /// Retry packets sent (counted since the start).
    private(set) var retriesSent = 0

    private init(eventLoop: EventLoop, inbound: Upgrader?, certificates: QUICCertificates, retryPolicy: QUICRetryPolicy) {
        self.eventLoop = eventLoop
        self.inbound = inbound
        self.certificates = certificates
        self.retryPolicy = retryPolicy
        self.localMultiaddr = Multiaddr([])
    }

    /// A socket bound to `address`; with `inbound`, it accepts connections too.
    static func bind(
        group: EventLoopGroup, to address: SocketAddress, inbound: Upgrader?, certificates: QUICCertificates,
        retryPolicy: QUICRetryPolicy = .underLoad
    ) async throws -> QUICEndpoint {
        let endpoint = QUICEndpoint(eventLoop: group.next(), inbound: inbound, certificates: certificates, retryPolicy: retryPolicy)
        let channel: Channel
        do {
            channel = try await DatagramBootstrap(group: endpoint.eventLoop)
                .channelOption(.socketOption(.so_reuseaddr), value: 1)
                .channelOption(.socketOption(.so_rcvbuf), value: 4 << 20)
                .channelOption(.socketOption(.so_sndbuf), value: 4 << 20)
                .channelOption(.maxMessagesPerRead, value: 32)
                // One datagram per read, in a 2048-byte buffer. Reading 32 per
                // recvmmsg doubled throughput, but echoes that py-libp2p 0.8.1
                // served then came back short in 5 of 14 runs (1 in 10 without
                // it; the cause is not found yet).
                .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: QUICTransport.maxDatagramSize))
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        endpoint.channel = channel
                        try channel.pipeline.syncOperations.addHandler(QUICDatagramHandler(endpoint: endpoint))
                    }
                }
                .bind(to: address).get()
        } catch {
            throw TransportError.listenFailed(address: "\(address)", underlying: error)
        }
        guard let bound = channel.localAddress else {
            channel.close(promise: nil)
            throw TransportError.listenFailed(address: "\(address)", underlying: TransportError.unsupportedAddress("\(address)"))
        }
        let multiaddr = try Multiaddr(quicSocketAddress: bound)
        try await endpoint.eventLoop.submit { endpoint.localMultiaddr = multiaddr }.get()
        return endpoint
    }

    var localAddress: SocketAddress? { channel?.localAddress }

    // MARK: - Datagrams in

    /// Routes one datagram: to the connection its destination ID names, to a
    /// new server connection if it is a client's first Initial, or to a
    /// Version Negotiation answer; anything else is dropped.
    func receive(_ datagram: [UInt8], from remote: SocketAddress) {
        eventLoop.preconditionInEventLoop()
        guard let header = QUICDatagramHeader(datagram, shortHeaderIDLength: QUICTransport.connectionIDLength) else { return }
        if let driver = routes[header.destination] {
            driver.receive(datagram)
            receivedInBurst[ObjectIdentifier(driver)] = driver
            return
        }
        if !header.isLong {
            return receiveUnroutedShortHeader(datagram, destination: header.destination, from: remote)
        }
        guard let inbound, !closing, datagram.count >= 1200 else { return }
        guard header.version == QUICVersion.v1 else {
            if header.version != QUICVersion.negotiation { answerVersionNegotiation(header, to: remote) }
            return
        }
        guard header.isInitial else { return }
        acceptInitial(datagram, from: remote, upgrader: inbound)
    }

    /// A client's first Initial: only one that opens under the Initial keys of
    /// its destination ID is considered (garbage takes no slot). Under load
    /// (or always, by policy) one without our token gets a Retry; one with a
    /// valid token becomes a connection that knows what the Retry validated.
    private func acceptInitial(_ datagram: [UInt8], from remote: SocketAddress, upgrader: Upgrader) {
        guard let packet = PacketParser.split(datagram: datagram, shortHeaderCIDLength: QUICTransport.connectionIDLength).packets.first,
            case .long(let header) = packet.header, header.type == .initial, header.destination.count >= 8,
            (try? PacketProtection.open(packet, keys: InitialSecrets.keys(destination: header.destination).client, largestReceived: nil)) != nil
        else { return }
        let now = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        if !header.token.isEmpty {
            guard let validated = retryTokens.validate(header.token, from: remote, now: now) else {
                // A token we did not make (or a stale one): the client must start over (§8.1.3 lets us drop it).
                return
            }
            accept(datagram, destination: header.destination, from: remote, upgrader: upgrader,
                afterRetry: QUICConnection.RetryContext(originalDestination: validated.originalDestination, retrySource: header.destination))
            return
        }
        if shouldRetry(upgrader) {
            let source = ConnectionID.random(length: QUICTransport.connectionIDLength)
            let token = retryTokens.make(for: remote, originalDestination: header.destination, now: now)
            let retry = RetryPacket(destination: header.source, source: source, token: token, integrityTag: [])
            send([RetryIntegrity.seal(retry, originalDestination: header.destination)], to: remote)
            flush()
            retriesSent += 1
            return
        }
        accept(datagram, destination: header.destination, from: remote, upgrader: upgrader, afterRetry: nil)
    }

    /// A short-header packet for no connection of ours: a peer's stateless
    /// reset of one of our connections (its token matches), or a packet of a
    /// connection we lost (we restarted), which we reset in turn when we know
    /// the token we gave it (our key is derived from our identity).
    private func receiveUnroutedShortHeader(_ datagram: [UInt8], destination: ConnectionID, from remote: SocketAddress) {
        if let token = StatelessReset.candidateToken(datagram), let driver = resetTokens[token] {
            resetTokens[token] = nil
            driver.receiveStatelessReset()
            return
        }
        guard !closing, destination.count == QUICTransport.connectionIDLength, let inbound else { return }
        let key = certificates.statelessResetKey(for: inbound)
        let second = Int64(NIODeadline.now().uptimeNanoseconds / 1_000_000_000)
        if resetsSent.second != second { resetsSent = (second, 0) }
        guard resetsSent.count < Self.maxResetsPerSecond,
            let reset = StatelessReset.packet(token: StatelessReset.token(for: destination, key: key), answering: datagram.count)
        else { return }
        resetsSent.count += 1
        send([reset], to: remote)
        flush()
    }

    func registerResetToken(_ token: [UInt8], for driver: QUICConnectionDriver) {
        eventLoop.preconditionInEventLoop()
        resetTokens[token[...]] = driver
    }

    private func shouldRetry(_ upgrader: Upgrader) -> Bool {
        switch retryPolicy {
        case .always: return true
        case .never: return false
        case .underLoad: return upgrader.inboundHandshakes.inFlight * 2 >= upgrader.configuration.maxInboundHandshakes
        }
    }

    private func answerVersionNegotiation(_ header: QUICDatagramHeader, to remote: SocketAddress) {
        let answer = VersionNegotiationPacket(
            destination: header.source.bytes, source: header.destination.bytes, versions: [QUICVersion.v1])
        send([answer.encoded()], to: remote)
        flush()
    }

    private func accept(
        _ datagram: [UInt8], destination: ConnectionID, from remote: SocketAddress, upgrader: Upgrader,
        afterRetry: QUICConnection.RetryContext?
    ) {
        guard let slot = upgrader.takeInboundHandshakeSlot(from: remote) else { return }
        do {
            let configuration = try certificates.configuration(for: upgrader, expectedPeer: nil)
            let quic = try QUICConnection(server: configuration, afterRetry: afterRetry)
            let local = quic.localConnectionID
            let driver = try QUICConnectionDriver(
                quic: quic, endpoint: self, remote: remote, direction: .inbound, upgrader: upgrader, expectedPeer: nil,
                handshakeSlot: slot)
            register(driver, ids: [local, destination])
            driver.start()
            driver.receive(datagram)
            receivedInBurst[ObjectIdentifier(driver)] = driver
        } catch {
            slot.release()
            upgrader.logger.debug("QUIC connection not accepted", metadata: ["error": "\(error)", "from": "\(remote)"])
        }
    }

    // MARK: - Dialling

    /// Starts a client connection to `remote`; the future completes once the
    /// handshake did and the peer's certificate proved `expectedPeer` (if given).
    func dial(to remote: SocketAddress, upgrader: Upgrader, expectedPeer: PeerID?) -> EventLoopFuture<Connection> {
        eventLoop.flatSubmit {
            guard !self.closing else { return self.eventLoop.makeFailedFuture(TransportError.connectionClosed) }
            do {
                let configuration = try self.certificates.configuration(for: upgrader, expectedPeer: expectedPeer)
                let quic = try QUICConnection(client: configuration)
                let local = quic.localConnectionID
                let driver = try QUICConnectionDriver(
                    quic: quic, endpoint: self, remote: remote, direction: .outbound, upgrader: upgrader,
                    expectedPeer: expectedPeer, handshakeSlot: nil)
                self.register(driver, ids: [local])
                driver.start()
                return driver.establishedFuture
            } catch {
                return self.eventLoop.makeFailedFuture(error)
            }
        }
    }

    // MARK: - Routing table

    private func register(_ driver: QUICConnectionDriver, ids: [ConnectionID]) {
        for id in ids { routes[id] = driver }
        connections[ObjectIdentifier(driver)] = (driver, ids)
    }

    func unregister(_ driver: QUICConnectionDriver) {
        eventLoop.preconditionInEventLoop()
        guard let entry = connections.removeValue(forKey: ObjectIdentifier(driver)) else { return }
        for id in entry.ids where routes[id] === driver { routes[id] = nil }
        if let token = driver.peerStatelessResetToken, resetTokens[token[...]] === driver { resetTokens[token[...]] = nil }
    }

    /// Connections on this socket (handshaking or established).
    var connectionCount: Int {
        eventLoop.preconditionInEventLoop()
        return connections.count
    }

    // MARK: - Datagrams out

    func send(_ datagrams: [[UInt8]], to remote: SocketAddress) {
        guard let channel, !datagrams.isEmpty else { return }
        for datagram in datagrams {
            channel.write(AddressedEnvelope(remoteAddress: remote, data: ByteBuffer(bytes: datagram)), promise: nil)
        }
        needsFlush = true
    }

    /// The end of the socket's burst of reads: every connection that received answers once.
    func readComplete() {
        let drivers = receivedInBurst
        receivedInBurst = [:]
        for driver in drivers.values { driver.readComplete() }
        flush()
    }

    func flush() {
        guard needsFlush else { return }
        needsFlush = false
        channel?.flush()
    }

    // MARK: - Closing

    /// Closes every connection on the socket (CONNECTION_CLOSE to each), then the socket.
    func close() async {
        let closed: EventLoopFuture<Void> = eventLoop.flatSubmit {
            self.closing = true
            let drivers = self.connections.values.map(\.driver)
            let futures = drivers.map { $0.closeGracefully(.connectionClosed) }
            return EventLoopFuture.andAllComplete(futures, on: self.eventLoop).flatMap {
                self.channel?.close() ?? self.eventLoop.makeSucceededVoidFuture()
            }
        }
        try? await closed.get()
    }

    /// The socket closed (or failed): every connection on it ends.
    func socketClosed() {
        eventLoop.preconditionInEventLoop()
        closing = true
        for (driver, _) in connections.values { driver.endpointClosed() }
        channel = nil
    }
}

/// Hands the socket's datagrams to the endpoint.
final class QUICDatagramHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    private let endpoint: QUICEndpoint

    init(endpoint: QUICEndpoint) {
        self.endpoint = endpoint
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        endpoint.receive(Array(envelope.data.readableBytesView), from: envelope.remoteAddress)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        endpoint.readComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP errors and the like on an unconnected UDP socket concern one
        // peer, not the socket: the connections' own timers deal with loss.
    }

    func channelInactive(context: ChannelHandlerContext) {
        endpoint.socketClosed()
    }
}

/// The routing part of a datagram's first packet header, read without keys.
struct QUICDatagramHeader {
    let isLong: Bool
    let version: UInt32
    let isInitial: Bool
    let destination: ConnectionID
    let source: ConnectionID

    init?(_ datagram: [UInt8], shortHeaderIDLength: Int) {
        guard let first = datagram.first else { return nil }
        if first & 0x80 == 0 {
            guard datagram.count >= 1 + shortHeaderIDLength,
                let destination = try? ConnectionID(datagram[1..<(1 + shortHeaderIDLength)])
            else { return nil }
            self.isLong = false
            self.version = QUICVersion.v1
            self.isInitial = false
            self.destination = destination
            self.source = .empty
            return
        }
        guard datagram.count >= 7 else { return nil }
        let version = datagram[1..<5].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        let destinationLength = Int(datagram[5])
        let sourceAt = 6 + destinationLength
        guard destinationLength <= ConnectionID.maxLength, datagram.count > sourceAt else { return nil }
        let sourceLength = Int(datagram[sourceAt])
        guard sourceLength <= ConnectionID.maxLength, datagram.count >= sourceAt + 1 + sourceLength,
            let destination = try? ConnectionID(datagram[6..<sourceAt]),
            let source = try? ConnectionID(datagram[(sourceAt + 1)..<(sourceAt + 1 + sourceLength)])
        else { return nil }
        self.isLong = true
        self.version = version
        // Type bits 00 are Initial in version 1 (RFC 9000 §17.2.2).
        self.isInitial = version == QUICVersion.v1 && (first & 0x30) == 0
        self.destination = destination
        self.source = source
    }
}

/// Our libp2p certificate per identity (made once: a P-256 key and a
/// signature), and the QUIC settings of libp2p connections.
final class QUICCertificates: Sendable {
    private let generated = Mutex<[PeerID: LibP2PCertificate.Generated]>([:])
    private let resetKeys = Mutex<[PeerID: [UInt8]]>([:])

    /// The key of our stateless reset tokens, derived from our identity's
    /// private key so that it survives a restart (a fresh random key would
    /// make tokens no peer knows).
    func statelessResetKey(for upgrader: Upgrader) -> [UInt8] {
        resetKeys.withLock { cache in
            if let key = cache[upgrader.localPeer] { return key }
            let key = HKDF<SHA256>.deriveKey(
                inputKeyMaterial: SymmetricKey(data: upgrader.localKey.marshal()),
                info: Array("p2pchat QUIC stateless reset key".utf8), outputByteCount: 32
            ).withUnsafeBytes { Array($0) }
            cache[upgrader.localPeer] = key
            return key
        }
    }

    func configuration(for upgrader: Upgrader, expectedPeer: PeerID?) throws -> QUICConnection.Configuration {
        let certificate = try generated.withLock { cache in
            if let made = cache[upgrader.localPeer] { return made }
            let made = try LibP2PCertificate.generate(identity: upgrader.localKey)
            cache[upgrader.localPeer] = made
            return made
        }
        let tls = QUICTLSConfiguration(
            certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER,
            applicationProtocols: ["libp2p"], transportParameters: [],
            verifyPeer: { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: expectedPeer)) != nil })
        var configuration = QUICConnection.Configuration(tls: tls, transportParameters: QUICTransport.transportParameters)
        configuration.keepAliveInterval = QUICTransport.keepAliveInterval
        configuration.statelessResetKey = statelessResetKey(for: upgrader)
        return configuration
    }
}
