import Metrics
import Multiformats
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Synchronization
import Transport

/// What a scraper (or anyone reaching the port) can make the exporter hold.
public struct MetricsExporterLimits: Sendable, Equatable {
    /// Connections open at once; more are closed as they are accepted.
    public var maxConnections = 16
    /// A connection must deliver its next whole request within this, and take
    /// each answer within this; else it is closed (idle keep-alive included).
    public var timeout: Duration = .seconds(30)
    /// Bytes of one request (its target, its headers and any body); a larger one closes the connection.
    public var maxRequestSize = 8 * 1024
    /// Requests read ahead of their answer (pipelined) a connection may have waiting; more close it.
    public var maxPipelined = 8

    public init() {}
}

/// Serves the process's swift-metrics as Prometheus text (format 0.0.4) at
/// `GET /metrics` on a small HTTP/1.1 server; every other path is a 404.
/// Bounded (`MetricsExporterLimits`): a few connections, each answered one
/// request at a time, the next read only once the answer was taken, so that
/// nothing accumulates per pipelined request.
///
/// ```swift
/// let exporter = try await MetricsExporter.bootstrap(listeningOn: Multiaddr("/ip4/127.0.0.1/tcp/9464"))
/// // ... run the node; scrape http://127.0.0.1:9464/metrics ...
/// try await exporter.close()
/// ```
public final class MetricsExporter: Sendable {
    /// Where the collected metrics live.
    public let registry: PrometheusCollectorRegistry
    /// The address the server listens on (`/ip4|ip6/.../tcp/N`, the real port when 0 was asked).
    public let address: Multiaddr
    public let limits: MetricsExporterLimits
    private let channel: any Channel
    private let connections: ConnectionCount

    /// Connections open now, and refused since the start (over `maxConnections`).
    final class ConnectionCount: Sendable {
        let open = Atomic(0)
        let refused = Atomic(0)
    }

    private init(
        registry: PrometheusCollectorRegistry, address: Multiaddr, limits: MetricsExporterLimits, channel: any Channel,
        connections: ConnectionCount
    ) {
        self.registry = registry
        self.address = address
        self.limits = limits
        self.channel = channel
        self.connections = connections
    }

    /// Connections open now.
    public var openConnections: Int { connections.open.load(ordering: .relaxed) }
    /// Connections closed at once since the start, for being over `maxConnections`.
    public var refusedConnections: Int { connections.refused.load(ordering: .relaxed) }

    /// Makes Prometheus the process's metrics backend (`MetricsSystem.bootstrap`,
    /// once per process, before the metrics are first used) and serves it on
    /// `address` (`/ip4|ip6/<ip>/tcp/<port>`).
    public static func bootstrap(
        listeningOn address: Multiaddr, limits: MetricsExporterLimits = .init(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> MetricsExporter {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return try await serve(registry, on: address, limits: limits, group: group)
    }

    /// Serves `registry` on `address` without touching the metrics backend.
    public static func serve(
        _ registry: PrometheusCollectorRegistry, on address: Multiaddr, limits: MetricsExporterLimits = .init(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> MetricsExporter {
        let socketAddress = try address.tcpSocketAddress()
        let connections = ConnectionCount()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            // Read only when the handler asks: the next request once the last answer was taken.
            .childChannelOption(.autoRead, value: false)
            .childChannelInitializer { channel in
                let open = connections.open.wrappingAdd(1, ordering: .relaxed).newValue
                channel.closeFuture.whenComplete { _ in connections.open.wrappingSubtract(1, ordering: .relaxed) }
                guard open <= limits.maxConnections else {
                    connections.refused.wrappingAdd(1, ordering: .relaxed)
                    return channel.close()
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: false, withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry, limits: limits))
                }
            }
            .bind(to: socketAddress).get()
        let bound = try channel.localAddress.map { try Multiaddr(socketAddress: $0) } ?? address
        return MetricsExporter(registry: registry, address: bound, limits: limits, channel: channel, connections: connections)
    }

    /// Stops listening.
    public func close() async throws {
        try await channel.close()
    }
}

/// Answers the requests of one connection, one at a time: a request is
/// answered once whole (its `end`), and nothing more is read until the answer
/// was written to the socket; requests that came in the same read wait their
/// turn (at most `maxPipelined`). A connection that takes longer than the
/// timeout to send a request or take an answer, or sends a request over the
/// size, is closed.
private final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry
    let limits: MetricsExporterLimits
    /// The request being received (its head once whole) and its bytes so far.
    private var receiving: HTTPRequestHead?
    private var receivedBytes = 0
    /// Whole requests waiting for the answer in flight.
    private var waiting: [HTTPRequestHead] = []
    private var answering = false
    private var deadline: Scheduled<Void>?

    init(registry: PrometheusCollectorRegistry, limits: MetricsExporterLimits) {
        self.registry = registry
        self.limits = limits
    }

    func channelActive(context: ChannelHandlerContext) {
        armDeadline(context)
        context.read()
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            receiving = head
            receivedBytes = head.uri.utf8.count + head.headers.reduce(0) { $0 + $1.name.utf8.count + $1.value.utf8.count + 4 }
        case .body(let body):
            receivedBytes += body.readableBytes
        case .end:
            guard let head = receiving else { return }
            receiving = nil
            guard waiting.count < limits.maxPipelined else { return context.close(promise: nil) }
            waiting.append(head)
            if !answering { answerNext(context) }
        }
        if receivedBytes > limits.maxRequestSize { context.close(promise: nil) }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Still receiving a request: read on. Else the next read waits for the answer to be taken.
        if !answering && waiting.isEmpty { context.read() }
        context.fireChannelReadComplete()
    }

    private func answerNext(_ context: ChannelHandlerContext) {
        guard !waiting.isEmpty else {
            answering = false
            armDeadline(context)
            context.read()
            return
        }
        answering = true
        armDeadline(context)
        let request = waiting.removeFirst()
        let path = request.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.uri
        let (status, body, type): (HTTPResponseStatus, [UInt8], String) =
            switch (request.method, path) {
            case (.GET, "/metrics"): (.ok, registry.emitToBuffer(), "text/plain; version=0.0.4; charset=utf-8")
            case (_, "/metrics"): (.methodNotAllowed, Array("only GET\n".utf8), "text/plain")
            default: (.notFound, Array("metrics are at /metrics\n".utf8), "text/plain")
            }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: type)
        headers.add(name: "Content-Length", value: "\(body.count)")
        if !request.isKeepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        let keepAlive = request.isKeepAlive
        // On the event loop: the promise completes there, once the socket took the whole answer.
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { result in
            let (handler, context) = loopBound.value
            guard case .success = result, keepAlive else { return context.close(promise: nil) }
            handler.answerNext(context)
        }
    }

    /// Closes the connection unless it moves on (a whole request, or an answer taken) within the timeout.
    private func armDeadline(_ context: ChannelHandlerContext) {
        deadline?.cancel()
        let loopBound = NIOLoopBound(context, eventLoop: context.eventLoop)
        deadline = context.eventLoop.scheduleTask(in: TimeAmount(limits.timeout)) { loopBound.value.close(promise: nil) }
    }
}
