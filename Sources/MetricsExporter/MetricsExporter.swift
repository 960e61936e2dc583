import Metrics
import Multiformats
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import Transport

/// Serves the process's swift-metrics as Prometheus text (format 0.0.4) at
/// `GET /metrics` on a small HTTP/1.1 server; every other path is a 404.
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
    private let channel: any Channel

    private init(registry: PrometheusCollectorRegistry, address: Multiaddr, channel: any Channel) {
        self.registry = registry
        self.address = address
        self.channel = channel
    }

    /// Makes Prometheus the process's metrics backend (`MetricsSystem.bootstrap`,
    /// once per process, before the metrics are first used) and serves it on
    /// `address` (`/ip4|ip6/<ip>/tcp/<port>`).
    public static func bootstrap(
        listeningOn address: Multiaddr, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> MetricsExporter {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        return try await serve(registry, on: address, group: group)
    }

    /// Serves `registry` on `address` without touching the metrics backend.
    public static func serve(
        _ registry: PrometheusCollectorRegistry, on address: Multiaddr,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton
    ) async throws -> MetricsExporter {
        let socketAddress = try address.tcpSocketAddress()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                }
            }
            .bind(to: socketAddress).get()
        let bound = try channel.localAddress.map { try Multiaddr(socketAddress: $0) } ?? address
        return MetricsExporter(registry: registry, address: bound, channel: channel)
    }

    /// Stops listening.
    public func close() async throws {
        try await channel.close()
    }
}

/// Answers each request: the registry's text for `GET /metrics`, 404 or 405 otherwise.
private final class MetricsHTTPHandler: ChannelInboundHandler, Sendable {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let registry: PrometheusCollectorRegistry

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data) else { return }
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
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }
}
