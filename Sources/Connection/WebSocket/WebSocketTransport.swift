import Identity
import Logging
import Multiformats
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import LibP2PSecurity
import Transport

/// Limits of the WebSocket layer (the libp2p upgrade above it keeps the TCP
/// transport's `TransportConfiguration`).
public struct WebSocketConfiguration: Sendable {
    /// Largest frame accepted from the remote; a larger one closes the connection
    /// with status 1009. Fragments are passed on as they come, so this also bounds
    /// what one frame can make us buffer.
    public var maxFrameSize: Int = 1 << 20
    /// Our writes go out in binary frames of at most this many bytes. Kept well
    /// under 1 MiB: py-libp2p's listener refuses larger messages (trio-websocket's default limit).
    public var maxOutboundFramePayload: Int = 64 * 1024
    /// From TCP established to the WebSocket upgrade done (both sides).
    public var handshakeTimeout: Duration = .seconds(10)

    public init() {}
}

/// libp2p's `/ws` transport: a TCP connection upgraded to a WebSocket (HTTP/1.1
/// `GET /`, RFC 6455) whose binary frames carry the raw libp2p byte stream, which
/// then goes through the usual upgrade (multistream-select, Noise, Yamux).
///
/// `/wss` (WebSocket over TLS) is not supported: such addresses are refused with
/// `WebSocketError.secureWebSocketUnsupported`.
public struct WebSocketTransport: Transport {
    public let group: EventLoopGroup
    public let configuration: WebSocketConfiguration
    let logger: Logger
    public var name: String { "ws" }

    public init(
        group: EventLoopGroup, configuration: WebSocketConfiguration = .init(),
        logger: Logger = Logger(label: "p2p.transport.ws")
    ) {
        self.group = group
        self.configuration = configuration
        self.logger = logger
    }

    public func canDial(_ address: Multiaddr) -> Bool { Self.canDial(address) }

    public func canListen(_ address: Multiaddr) -> Bool { Self.canListen(address) }

    /// Whether `dial` takes this address: `/ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/ws[/p2p/<id>]`.
    public static func canDial(_ address: Multiaddr) -> Bool {
        guard let parsed = try? WebSocketAddress(address) else { return false }
        return (try? parsed.dialTarget(original: address)) != nil
    }

    /// Whether `listen` takes this address: `/ip4|ip6/<ip>/tcp/<port>/ws`.
    public static func canListen(_ address: Multiaddr) -> Bool {
        guard let parsed = try? WebSocketAddress(address) else { return false }
        return (try? parsed.listenAddress(original: address)) != nil
    }

    // MARK: - Listen

    /// Listens on `/ip4|ip6/<ip>/tcp/<port>/ws` (port 0 picks one). The listener's
    /// address is the bound one, ending in `/ws`. Only a `GET /` over HTTP/1.1 upgrades.
    public func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener {
        let socketAddress = try WebSocketAddress(address).listenAddress(original: address)
        let configuration = self.configuration
        let logger = self.logger
        let bootstrap = SocketDial.serverBootstrap(group: group, configuration: upgrader.configuration)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // The HTTP upgrade counts among the handshakes in flight, as
                    // the libp2p upgrade after it does: a peer cannot hold sockets
                    // half-open in HTTP beyond the limit.
                    guard let slot = upgrader.takeInboundHandshakeSlot(from: channel.remoteAddress) else {
                        throw TransportError.limitReached(.handshakes(upgrader.configuration.maxInboundHandshakes))
                    }
                    channel.closeFuture.whenComplete { _ in slot.release() }
                    try Self.configureServerPipeline(
                        channel: channel, configuration: configuration, upgrader: upgrader, slot: slot, logger: logger)
                }
            }
        let channel = try await SocketDial.bind(bootstrap, to: socketAddress, address: address)
        guard let bound = channel.localAddress, let boundAddress = try? Multiaddr(socketAddress: bound) else {
            try? await channel.close()
            throw WebSocketError.unsupportedAddress("\(address)")
        }
        let listening = boundAddress.encapsulating(.ws)
        logger.debug("listening", metadata: ["address": "\(listening)"])
        return Listener(address: listening) { try? await channel.close() }
    }

    /// Whether a request may become a WebSocket: a `GET` (RFC 6455 §4.1), over
    /// HTTP/1.1 or later, of `/` (what every libp2p implementation's `/ws`
    /// dials; a query is ignored). Not a `POST`, an HTTP/1.0 request, nor any path.
    static func mayUpgrade(_ head: HTTPRequestHead) -> Bool {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return head.method == .GET && (head.version.major, head.version.minor) >= (1, 1) && path == "/"
    }

    /// HTTP server with the WebSocket upgrader; plain requests get 426/400.
    private static func configureServerPipeline(
        channel: Channel, configuration: WebSocketConfiguration, upgrader: Upgrader, slot: InboundHandshakeSlot,
        logger: Logger
    ) throws {
        // The HTTP upgrade holds a handshake slot: no longer than the libp2p upgrade's deadline.
        let timeout = TimeAmount(min(configuration.handshakeTimeout, upgrader.configuration.upgradeTimeout))
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: configuration.maxFrameSize,
            // Decoder errors are answered by WebSocketByteStreamHandler.
            automaticErrorHandling: false,
            // Only what RFC 6455 §4.1 allows and libp2p's /ws dials: the others get a 400.
            shouldUpgrade: { channel, head in
                channel.eventLoop.makeSucceededFuture(Self.mayUpgrade(head) ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { channel, _ in
                let ready = channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    _ = pipeline.removeHandler(try pipeline.handler(type: PlainHTTPRefusalHandler.self))
                    try pipeline.addHandler(
                        WebSocketByteStreamHandler(
                            role: .server, maxFramePayload: configuration.maxOutboundFramePayload, logger: logger))
                    // Upgraded inbound connections go to the upgrader's onInboundConnection.
                    _ = upgrader.upgrade(
                        channel: channel, direction: .inbound, transport: "ws", addressSuffix: [.ws], handshakeSlot: slot)
                }
                // Nothing else would end a connection stuck between HTTP and libp2p.
                ready.whenFailure { error in
                    logger.debug("websocket pipeline setup failed", metadata: ["error": "\(error)"])
                    channel.close(promise: nil)
                }
                return ready
            }
        )
        let pipeline = channel.pipeline.syncOperations
        try pipeline.configureHTTPServerPipeline(
            withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        try pipeline.addHandler(PlainHTTPRefusalHandler(timeout: timeout, logger: logger))
    }

    // MARK: - Dial

    /// Dials a `/ws` address: TCP, `GET /` upgraded to a WebSocket, then the libp2p
    /// upgrade. If the address ends in `/p2p/<id>`, a remote with another peer id is rejected.
    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection {
        let target = try WebSocketAddress(address).dialTarget(original: address)
        let configuration = self.configuration
        let logger = self.logger
        let addressText = "\(address)"
        // Pick the loop first so the promise exists before connecting.
        let eventLoop = group.next()
        let promise = eventLoop.makePromise(of: Connection.self)
        return try await SocketDial.connect(
            target.endpoint, address: address, on: eventLoop, configuration: upgrader.configuration,
            established: promise
        ) { channel in
            try Self.configureClientPipeline(
                channel: channel, target: target, address: addressText, configuration: configuration,
                upgrader: upgrader, role: role, established: promise, logger: logger)
        }
    }

    /// HTTP client with the WebSocket upgrader, and the handler that sends `GET /`.
    private static func configureClientPipeline(
        channel: Channel, target: WebSocketDialTarget, address: String, configuration: WebSocketConfiguration,
        upgrader: Upgrader, role: UpgradeRole, established: EventLoopPromise<Connection>, logger: Logger
    ) throws {
        let expectedPeer = target.expectedPeer
        let upgrader = NIOWebSocketClientUpgrader(
            maxFrameSize: configuration.maxFrameSize,
            // Decoder errors are answered by WebSocketByteStreamHandler.
            automaticErrorHandling: false,
            upgradePipelineHandler: { channel, _ in
                let ready = channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    _ = pipeline.removeHandler(try pipeline.handler(type: WebSocketDialHandshakeHandler.self))
                    try pipeline.addHandler(
                        WebSocketByteStreamHandler(
                            role: .client, maxFramePayload: configuration.maxOutboundFramePayload, logger: logger))
                    upgrader.upgrade(
                        channel: channel, direction: .outbound, role: role, expectedRemotePeer: expectedPeer,
                        transport: "ws", addressSuffix: [.ws]
                    ).cascade(to: established)
                }
                // The handshake handler (and its timeout) may be gone already: fail the dial here.
                ready.whenFailure { error in
                    established.fail(WebSocketError.handshakeFailed(address: address, underlying: error))
                    channel.close(promise: nil)
                }
                return ready
            }
        )
        let pipeline = channel.pipeline.syncOperations
        // Bytes that came with the 101 response are WebSocket frames: keep them.
        try pipeline.addHTTPClientHandlers(
            leftOverBytesStrategy: .forwardBytes,
            withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        try pipeline.addHandler(
            WebSocketDialHandshakeHandler(
                address: address, hostHeader: target.hostHeader, timeout: TimeAmount(configuration.handshakeTimeout),
                established: established))
    }
}
