import Logging
import NIOCore
import NIOHTTP1
import Transport

/// Client side of the HTTP/1.1 upgrade: sends `GET /` once the TCP connection is
/// up (`NIOHTTPClientUpgradeHandler`, before it in the pipeline, adds the upgrade
/// headers and key) and fails the dial if the server answers anything but a valid
/// 101, errors, closes, or is too slow. Removed by the upgrade callback once the
/// WebSocket is up; its timeout goes with it (the libp2p upgrade has its own).
final class WebSocketDialHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    let address: String
    let hostHeader: String
    let timeout: TimeAmount
    let established: EventLoopPromise<Connection>
    private var requestSent = false
    private var timer: Scheduled<Void>?

    init(address: String, hostHeader: String, timeout: TimeAmount, established: EventLoopPromise<Connection>) {
        self.address = address
        self.hostHeader = hostHeader
        self.timeout = timeout
        self.established = established
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    /// Once connected (the connect has its own timeout): sends the request, starts the clock.
    private func start(context: ChannelHandlerContext) {
        guard !requestSent else { return }
        requestSent = true
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let address = self.address
        let established = self.established
        timer = context.eventLoop.scheduleTask(in: timeout) {
            established.fail(WebSocketError.handshakeTimeout(address: address))
            bound.value.close(promise: nil)
        }
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: hostHeader)
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// Only reached when the server did not switch protocols: the upgrade
    /// handler passes the response on instead of upgrading.
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let response) = unwrapInboundIn(data) {
            fail(context: context, .upgradeRefused(address: address, status: response.status))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context: context, .handshakeFailed(address: address, underlying: error))
    }

    func channelInactive(context: ChannelHandlerContext) {
        established.fail(WebSocketError.closedDuringHandshake(address: address))
        context.fireChannelInactive()
    }

    private func fail(context: ChannelHandlerContext, _ error: WebSocketError) {
        // The first failure wins; later ones find the promise completed.
        established.fail(error)
        context.close(promise: nil)
    }
}

/// Server side, behind NIO's HTTP server pipeline with the WebSocket upgrader:
/// sees only requests that were not upgraded and answers them 426 (no upgrade
/// asked) or 400 (a WebSocket upgrade asked for but malformed), then closes.
/// Closes a connection that has not upgraded within `timeout`. Removed by the
/// upgrade callback once the WebSocket is up.
final class PlainHTTPRefusalHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    let timeout: TimeAmount
    let logger: Logger
    private var timer: Scheduled<Void>?
    private var answered = false

    init(timeout: TimeAmount, logger: Logger) {
        self.timeout = timeout
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        let logger = self.logger
        timer = context.eventLoop.scheduleTask(in: timeout) {
            logger.debug("websocket upgrade timed out")
            bound.value.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head(let request) = unwrapInboundIn(data), !answered else { return }
        answered = true
        let askedForWebSocket = request.headers[canonicalForm: "upgrade"].contains { $0.lowercased() == "websocket" }
        let status: HTTPResponseStatus = askedForWebSocket ? .badRequest : .upgradeRequired
        logger.debug(
            "refusing a plain HTTP request",
            metadata: ["method": "\(request.method)", "uri": "\(request.uri)", "status": "\(status.code)"])
        var headers = HTTPHeaders()
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Content-Length", value: "0")
        if !askedForWebSocket {
            headers.add(name: "Upgrade", value: "websocket")
        }
        // The only version we speak (RFC 6455 §4.4).
        headers.add(name: "Sec-WebSocket-Version", value: "13")
        let head = HTTPResponseHead(version: request.version, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// Unparsable HTTP (NIO's error handler has answered 400): we close, nobody
    /// else will. Errors of a failed upgrade attempt (a bad key or version) come
    /// before the request itself, which then gets its 400 here.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("websocket upgrade failed", metadata: ["error": "\(error)"])
        if error is HTTPParserError {
            context.close(promise: nil)
        }
    }
}
