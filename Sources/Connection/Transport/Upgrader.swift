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
    package let acceptor: any InboundStreamAcceptor
    /// Receives every upgraded inbound connection.
    public let onInboundConnection: @Sendable (Connection) -> Void
    package let logger: Logger
    /// What every connection may make the host buffer (nil: unbounded).
    public let memoryBudget: MemoryBudget?
    /// Told of everything a limit refused or closed (handshakes in flight,
    /// streams negotiating, memory, stalled writes).
    package let onLimitReached: @Sendable (LimitRefusal) -> Void
    private let connectionIDs: ConnectionIDs

    /// A fresh connection number (logs, metrics), for transports with a driver of their own.
    package func nextConnectionID() -> UInt64 { connectionIDs.next() }
    private let handshakes: HandshakeSlots

    public init(
        localKey: PrivateKey, security: [any SecurityProtocol], muxers: [String] = [TransportConfiguration.yamuxProtocolID],
        configuration: TransportConfiguration = .init(), acceptor: any InboundStreamAcceptor,
        logger: Logger = Logger(label: "p2p.transport"), memoryBudget: MemoryBudget? = nil,
        onLimitReached: @escaping @Sendable (LimitRefusal) -> Void = { _ in },
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
        self.memoryBudget = memoryBudget
        self.onLimitReached = onLimitReached
        self.connectionIDs = ConnectionIDs()
        self.handshakes = HandshakeSlots()
    }

    /// A place among the inbound handshakes in flight, for a transport with a
    /// handshake of its own before the libp2p upgrade (WebSocket's HTTP
    /// upgrade); nil (counted as refused) when `maxInboundHandshakes` are in flight.
    public func takeInboundHandshakeSlot(from remote: SocketAddress?) -> InboundHandshakeSlot? {
        let source = remote.flatMap { HandshakeSlots.source(of: $0, limitLoopback: configuration.limitLoopbackHandshakes) }
        let refusal = handshakes.take(
            limit: configuration.maxInboundHandshakes, perSource: configuration.maxInboundHandshakesPerAddress, from: source)
        if let refusal {
            let limit: Limit = switch refusal {
            case .total: .handshakes(configuration.maxInboundHandshakes)
            case .perSource: .handshakesPerAddress(configuration.maxInboundHandshakesPerAddress)
            }
            logger.debug("inbound connection refused", metadata: ["reason": "\(limit)"])
            onLimitReached(
                LimitRefusal(limit, peer: nil, address: remote.flatMap { try? Multiaddr(socketAddress: $0) }))
            return nil
        }
        return InboundHandshakeSlot(handshakes, source: source)
    }

    /// Inbound connections in the upgrade now, and those refused because
    /// `maxInboundHandshakes` were already (counted since the start).
    public var inboundHandshakes: (inFlight: Int, refused: Int) { handshakes.snapshot }

    /// Upgrades a channel whose pipeline carries the raw byte stream (ByteBuffers
    /// both ways). Call on the channel's event loop, before or after it is active.
    /// Inbound connections also go to `onInboundConnection`.
    ///
    /// `addressSuffix` is appended to the socket addresses (`/ws` for WebSocket).
    ///
    /// An inbound connection takes a place among the handshakes in flight,
    /// unless the transport took one for it already (`handshakeSlot`: a
    /// WebSocket listener takes it before the HTTP upgrade).
    public func upgrade(
        channel: Channel, direction: ConnectionDirection, role: UpgradeRole? = nil,
        expectedRemotePeer: PeerID? = nil, transport: String = "tcp",
        addressSuffix: [MultiaddrComponent] = [], handshakeSlot: InboundHandshakeSlot? = nil
    ) -> EventLoopFuture<Connection> {
        let promise = channel.eventLoop.makePromise(of: Connection.self)
        if direction == .inbound {
            guard let slot = handshakeSlot ?? takeInboundHandshakeSlot(from: channel.remoteAddress) else {
                channel.close(promise: nil)
                promise.fail(TransportError.limitReached(.handshakes(configuration.maxInboundHandshakes)))
                return promise.futureResult
            }
            promise.futureResult.whenComplete { _ in slot.release() }
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
        direction: ConnectionDirection, role: UpgradeRole?, expectedRemotePeer: PeerID?, transport: String,
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
    private struct Counts {
        var inFlight = 0
        var refused = 0
        /// In flight per source address (only sources that have some).
        var bySource: [[UInt8]: Int] = [:]
    }
    private let counts = Mutex(Counts())

    enum Refusal { case total, perSource }

    /// Where a connection comes from, for the per-address share: an IPv4
    /// address, or an IPv6 /64 (one host's whole range); nil for loopback when
    /// it is exempt (and for what is not IP).
    static func source(of address: SocketAddress, limitLoopback: Bool) -> [UInt8]? {
        switch address {
        case .v4(let v4):
            let bytes = withUnsafeBytes(of: v4.address.sin_addr.s_addr) { Array($0) }
            return bytes[0] == 127 && !limitLoopback ? nil : bytes
        case .v6(let v6):
            let bytes = withUnsafeBytes(of: v6.address.sin6_addr) { Array($0) }
            let loopback = bytes == [UInt8](repeating: 0, count: 15) + [1]
            return loopback && !limitLoopback ? nil : Array(bytes.prefix(8))
        default:
            return nil
        }
    }

    /// Takes a slot, or says which limit refused it.
    func take(limit: Int, perSource: Int, from source: [UInt8]?) -> Refusal? {
        counts.withLock { counts in
            guard counts.inFlight < limit else {
                counts.refused += 1
                return .total
            }
            if let source {
                guard counts.bySource[source, default: 0] < perSource else {
                    counts.refused += 1
                    return .perSource
                }
                counts.bySource[source, default: 0] += 1
            }
            counts.inFlight += 1
            return nil
        }
    }

    func give(from source: [UInt8]?) {
        counts.withLock { counts in
            counts.inFlight -= 1
            if let source, let held = counts.bySource[source] {
                counts.bySource[source] = held > 1 ? held - 1 : nil
            }
        }
    }

    var snapshot: (inFlight: Int, refused: Int) { counts.withLock { ($0.inFlight, $0.refused) } }
}

/// Something a limit refused or closed: which limit (in words), and whose.
public struct LimitRefusal: Sendable, Hashable, CustomStringConvertible {
    public let limit: Limit
    /// The limit in words (what the chat's `limits` event prints).
    public var reason: String { limit.description }
    /// The peer, once its connection is secured.
    public let peer: PeerID?
    /// The remote address, when known.
    public let address: Multiaddr?

    public init(_ limit: Limit, peer: PeerID?, address: Multiaddr?) {
        self.limit = limit
        self.peer = peer
        self.address = address
    }

    public var description: String {
        "\(reason)" + (peer.map { " (peer \($0))" } ?? "") + (address.map { " from \($0)" } ?? "")
    }
}

/// One inbound connection's place among the handshakes in flight, given
/// back once (by `release` or when dropped).
public final class InboundHandshakeSlot: Sendable {
    private let handshakes: HandshakeSlots
    private let source: [UInt8]?
    private let released = Atomic<Bool>(false)

    init(_ handshakes: HandshakeSlots, source: [UInt8]?) {
        self.handshakes = handshakes
        self.source = source
    }

    public func release() {
        guard !released.exchange(true, ordering: .relaxed) else { return }
        handshakes.give(from: source)
    }

    deinit { release() }
}

/// Numbers connections for logs, process-wide per upgrader.
final class ConnectionIDs: Sendable {
    private let counter = Atomic<UInt64>(1)

    func next() -> UInt64 {
        counter.add(1, ordering: .relaxed).oldValue
    }
}
