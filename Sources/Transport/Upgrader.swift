import Identity
import Logging
import Multiformats
import NIOCore
import LibP2PSecurity
import Synchronization

/// Turns raw byte streams into secured, multiplexed connections: what every
/// transport hands its connections to. Holds our identity, the security
/// protocols and muxers we offer (in order of preference), the limits, and
/// where inbound streams and connections go.
public struct Upgrader: Sendable {
    public let localKey: PrivateKey
    public let localPeer: PeerID
    /// Offered in this order (the first the remote also speaks wins when we dial).
    public let security: [any SecurityProtocol]
    /// Muxer protocol ids, in order of preference (only Yamux is implemented).
    public let muxers: [String]
    public let configuration: TransportConfiguration
    let acceptor: any InboundStreamAcceptor
    /// Receives every upgraded inbound connection.
    public let onInboundConnection: @Sendable (Connection) -> Void
    let logger: Logger
    private let connectionIDs: ConnectionIDs
    private let handshakes: HandshakeSlots

    public init(
        localKey: PrivateKey, security: [any SecurityProtocol], muxers: [String] = [TransportConfiguration.yamuxProtocolID],
        configuration: TransportConfiguration = .init(), acceptor: any InboundStreamAcceptor,
        logger: Logger = Logger(label: "p2p.transport"),
        onInboundConnection: @escaping @Sendable (Connection) -> Void
    ) {
        precondition(!security.isEmpty, "at least one security protocol")
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.security = security
        self.muxers = muxers.filter { $0 == TransportConfiguration.yamuxProtocolID }
        self.configuration = configuration
        self.acceptor = acceptor
        self.logger = logger
        self.onInboundConnection = onInboundConnection
        self.connectionIDs = ConnectionIDs()
        self.handshakes = HandshakeSlots()
    }

    /// Inbound connections in the upgrade now, and those refused because
    /// `maxInboundHandshakes` were already (counted since the start).
    public var inboundHandshakes: (inFlight: Int, refused: Int) { handshakes.snapshot }

    /// Upgrades a channel whose pipeline carries the raw byte stream (ByteBuffers
    /// both ways). Call on the channel's event loop, before or after it is active.
    /// Inbound connections also go to `onInboundConnection`.
    ///
    /// `addressSuffix` is appended to the socket addresses (`/ws` for WebSocket).
    public func upgrade(
        channel: Channel, direction: ConnectionDirection, role: SecurityRole? = nil,
        expectedRemotePeer: PeerID? = nil, transport: String = "tcp",
        addressSuffix: [MultiaddrComponent] = []
    ) -> EventLoopFuture<Connection> {
        let promise = channel.eventLoop.makePromise(of: Connection.self)
        if direction == .inbound {
            guard handshakes.take(limit: configuration.maxInboundHandshakes) else {
                logger.debug("inbound connection refused: too many handshakes in flight")
                channel.close(promise: nil)
                promise.fail(TransportError.limitReached("\(configuration.maxInboundHandshakes) inbound handshakes in flight"))
                return promise.futureResult
            }
            let handshakes = self.handshakes
            promise.futureResult.whenComplete { _ in handshakes.give() }
        }
        let driver = makeDriver(
            direction: direction, role: role, expectedRemotePeer: expectedRemotePeer, transport: transport,
            addresses: .channel(channel, suffix: addressSuffix), promise: promise)
        do {
            try channel.pipeline.syncOperations.addHandler(ConnectionHandler(driver: driver))
        } catch {
            promise.fail(TransportError.io(underlying: error))
        }
        return promise.futureResult
    }

    /// A driver for a byte stream that is not a NIO channel (in-memory, relayed).
    func makeDriver(
        direction: ConnectionDirection, role: SecurityRole?, expectedRemotePeer: PeerID?, transport: String,
        addresses: ConnectionDriver.Addresses, promise: EventLoopPromise<Connection>
    ) -> ConnectionDriver {
        let parameters = ConnectionDriver.Parameters(
            upgrader: self, direction: direction,
            role: role ?? (direction == .outbound ? .initiator : .responder),
            expectedRemotePeer: expectedRemotePeer, transport: transport, addresses: addresses)
        let driver = ConnectionDriver(
            parameters: parameters, id: connectionIDs.next(), eventLoop: promise.futureResult.eventLoop,
            established: promise)
        if direction == .inbound {
            let onInbound = onInboundConnection
            let logger = self.logger
            promise.futureResult.whenComplete { result in
                switch result {
                case .success(let connection): onInbound(connection)
                case .failure(let error): logger.debug("inbound upgrade failed", metadata: ["error": "\(error)"])
                }
            }
        }
        return driver
    }
}

/// Inbound upgrades in flight, bounded, and how many were refused.
final class HandshakeSlots: Sendable {
    private let counts = Mutex((inFlight: 0, refused: 0))

    func take(limit: Int) -> Bool {
        counts.withLock { counts in
            guard counts.inFlight < limit else {
                counts.refused += 1
                return false
            }
            counts.inFlight += 1
            return true
        }
    }

    func give() {
        counts.withLock { $0.inFlight -= 1 }
    }

    var snapshot: (inFlight: Int, refused: Int) { counts.withLock { ($0.inFlight, $0.refused) } }
}

/// Numbers connections for logs, process-wide per upgrader.
final class ConnectionIDs: Sendable {
    private let counter = Atomic<UInt64>(1)

    func next() -> UInt64 {
        counter.add(1, ordering: .relaxed).oldValue
    }
}
