import Identity
import Logging
import Multiformats
import Multistream
import NIOCore
import NIOPosix
import Yamux
import Synchronization

/// Limits and timeouts of the TCP + Noise + Yamux stack.
public struct TransportConfiguration: Sendable {
    public static let noiseProtocolID = "/noise"
    public static let yamuxProtocolID = "/yamux/1.0.0"

    /// TCP connect.
    public var dialTimeout: TimeAmount = .seconds(10)
    /// From TCP established to Yamux running (both multistream rounds and Noise).
    public var upgradeTimeout: TimeAmount = .seconds(15)
    /// Multistream-select on a new stream.
    public var streamNegotiationTimeout: TimeAmount = .seconds(10)
    /// A writer waits while this much of its data is handed over and not yet
    /// framed (behind the remote's receive window or a full socket); it goes on
    /// once half of it has gone out.
    public var maxQueuedBytesPerStream: Int = 1024 * 1024
    /// Bounds on what a peer can make multistream-select allocate.
    public var multistreamLimits = MultistreamLimits()
    /// Yamux windows and stream limits.
    public var yamux = YamuxSession.Configuration()
    /// The kernel takes more from us only while less than this is waiting
    /// unsent in the socket (TCP_NOTSENT_LOWAT). What the link cannot carry yet
    /// then waits in the streams' queues, where streams take turns and control
    /// frames go first, rather than in one kernel queue where a chat message
    /// would sit behind megabytes of a bulk stream on a slow link. nil leaves
    /// the kernel's default (no limit).
    public var notSentLowWatermark: Int? = 128 * 1024
    /// Socket reads grow up to 256 KiB under load (NIO's default stops at 64 KiB):
    /// fewer Noise frames are split across reads, and each split costs a copy.
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2048, maximum: 256 * 1024)

    public init() {}
}

extension NIOBSDSocket.Option {
    /// TCP_NOTSENT_LOWAT (Linux, since 3.12); 0 means the kernel default.
    static let tcp_notsent_lowat = NIOBSDSocket.Option(rawValue: 25)
}

/// A listener (TCP, or another transport's server channel) with its bound address.
public struct Listener: Sendable {
    /// The address actually bound (port 0 resolved).
    public let address: Multiaddr
    let channel: Channel

    /// A listener whose `channel` is the bound server channel (other transports make theirs).
    public init(address: Multiaddr, channel: Channel) {
        self.address = address
        self.channel = channel
    }

    public func close() async {
        try? await channel.close()
    }
}

/// Dials and accepts TCP connections and upgrades them to secured, multiplexed
/// libp2p connections.
public final class TCPTransport: Sendable {
    public let group: EventLoopGroup
    public let localKey: PrivateKey
    public let localPeer: PeerID
    public let configuration: TransportConfiguration
    let acceptor: InboundStreamAcceptor
    let onInboundConnection: @Sendable (Connection) -> Void
    let logger: Logger
    private let nextConnectionID = Atomic<UInt64>(1)

    public init(
        group: EventLoopGroup, localKey: PrivateKey, configuration: TransportConfiguration = .init(),
        acceptor: InboundStreamAcceptor, logger: Logger = Logger(label: "p2p.transport"),
        onInboundConnection: @escaping @Sendable (Connection) -> Void
    ) {
        self.group = group
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.configuration = configuration
        self.acceptor = acceptor
        self.logger = logger
        self.onInboundConnection = onInboundConnection
    }

    private func makeHandler(
        direction: ConnectionDirection, expectedRemotePeer: PeerID?, promise: EventLoopPromise<Connection>
    ) -> ConnectionHandler {
        let id = nextConnectionID.add(1, ordering: .relaxed).oldValue
        let handler = ConnectionHandler(
            configuration: configuration, localKey: localKey, direction: direction,
            expectedRemotePeer: expectedRemotePeer, acceptor: acceptor, connectionID: id,
            established: promise, logger: logger)
        return handler
    }

    /// Runs the libp2p upgrade (multistream-select, Noise, Yamux) over whatever
    /// raw byte stream `channel`'s pipeline carries (TCP, or WebSocket frames
    /// turned into bytes), and completes with the connection.
    ///
    /// Temporary seam for other byte-stream transports until the `Upgrader`
    /// refactor offers the same call. Must be called on the channel's event loop.
    public func upgrade(
        channel: Channel, direction: ConnectionDirection, expectedRemotePeer: PeerID?
    ) -> EventLoopFuture<Connection> {
        channel.eventLoop.preconditionInEventLoop()
        let promise = channel.eventLoop.makePromise(of: Connection.self)
        let handler = makeHandler(direction: direction, expectedRemotePeer: expectedRemotePeer, promise: promise)
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
        } catch {
            promise.fail(error)
        }
        return promise.futureResult
    }

    /// Listens on an `/ip4|ip6/<addr>/tcp/<port>` address (port 0 picks one).
    public func listen(on address: Multiaddr) async throws -> Listener {
        let socketAddress = try address.tcpSocketAddress()
        let onInbound = onInboundConnection
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .childChannelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
            .childChannelInitializer { [self] channel in
                let promise = channel.eventLoop.makePromise(of: Connection.self)
                let handler = self.makeHandler(direction: .inbound, expectedRemotePeer: nil, promise: promise)
                promise.futureResult.whenComplete { result in
                    switch result {
                    case .success(let connection): onInbound(connection)
                    case .failure(let error):
                        logger.debug("inbound upgrade failed", metadata: ["error": "\(error)"])
                    }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        let channel = try await bootstrap.bind(to: socketAddress).get()
        guard let bound = channel.localAddress, let boundAddress = try? Multiaddr(socketAddress: bound) else {
            try? await channel.close()
            throw TransportError.unsupportedAddress("\(address)")
        }
        logger.debug("listening", metadata: ["address": "\(boundAddress)"])
        return Listener(address: boundAddress, channel: channel)
    }

    /// Dials a TCP address and upgrades the connection. If the address ends in
    /// `/p2p/<id>`, a remote with another peer id is rejected.
    public func dial(_ address: Multiaddr) async throws -> Connection {
        let target = try address.tcpTarget()
        let expected = address.peerID
        // Pick the loop first so the handler and its promise exist before connecting.
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Connection.self)
        let established = promise.futureResult
        let initialized = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.dialTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .channelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
            .channelInitializer { [self] channel in
                let handler = self.makeHandler(direction: .outbound, expectedRemotePeer: expected, promise: promise)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(handler)
                }
            }
        do {
            switch target {
            case .socket(let socketAddress):
                _ = try await initialized.connect(to: socketAddress).get()
            case .host(let host, let port):
                _ = try await initialized.connect(host: host, port: port).get()
            }
        } catch {
            let failure: TransportError
            if case ChannelError.connectTimeout = error {
                failure = .dialTimeout(address: "\(address)")
            } else {
                failure = .dialFailed(address: "\(address)", reason: "\(error)")
            }
            // The handler may never have been created: settle the promise ourselves.
            promise.fail(failure)
            throw failure
        }
        return try await established.get()
    }
}
