import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// The plain HTTP side: the page, uploads, and refusals. One request per
/// connection (answered with `Connection: close`), so nothing piles up.
final class WebChatHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum State {
        case idle
        /// A request whose answer is known at its head; its body is skipped.
        case answering(HTTPResponseStatus, String, contentType: String)
        case uploading(name: String, body: ByteBuffer)
        case done
    }

    let access: WebChatAccess
    let configuration: WebChatConfiguration
    let hub: Hub
    let logger: Logger
    private var state = State.idle

    init(access: WebChatAccess, configuration: WebChatConfiguration, hub: Hub, logger: Logger) {
        self.access = access
        self.configuration = configuration
        self.hub = hub
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            guard case .idle = state else { return }
            state = route(head)
        case .body(var chunk):
            guard case .uploading(let name, var body) = state else { return }
            guard body.readableBytes + chunk.readableBytes <= configuration.maxUploadBytes else {
                state = .done
                return respond(context: context, .payloadTooLarge, "file larger than \(configuration.maxUploadBytes) bytes\n")
            }
            state = .done  // while the buffer is out of the enum, so it is not copied
            body.writeBuffer(&chunk)
            state = .uploading(name: name, body: body)
        case .end:
            switch state {
            case .answering(let status, let body, let contentType):
                state = .done
                respond(context: context, status, body, contentType: contentType)
            case .uploading(let name, let body):
                state = .done
                store(context: context, name: name, body: body)
            case .idle, .done:
                break
            }
        }
    }

    private func route(_ head: HTTPRequestHead) -> State {
        let path = WebChatAccess.path(of: head.uri)
        if path == "/favicon.ico" { return .answering(.notFound, "", contentType: "text/plain") }
        if let refusal = access.check(target: head.uri, host: head.headers.first(name: "Host"), origin: head.headers.first(name: "Origin")) {
            logger.info("web chat request refused", metadata: ["path": "\(path)", "reason": "\(refusal)"])
            return .answering(.forbidden, "\(refusal)\n", contentType: "text/plain; charset=utf-8")
        }
        switch (head.method, path) {
        case (.GET, "/"):
            return .answering(.ok, WebChatPage.html, contentType: "text/html; charset=utf-8")
        case (.GET, "/ws"):
            return .answering(.badRequest, "a WebSocket upgrade is expected here\n", contentType: "text/plain")
        case (.POST, "/upload"):
            guard let name = WebChatAccess.queryValue("name", in: head.uri).flatMap(Self.safeFileName) else {
                return .answering(.badRequest, "upload needs ?name=FILE (a plain file name)\n", contentType: "text/plain")
            }
            if let length = head.headers.first(name: "Content-Length").flatMap(Int.init), length > configuration.maxUploadBytes {
                return .answering(.payloadTooLarge, "file larger than \(configuration.maxUploadBytes) bytes\n", contentType: "text/plain")
            }
            return .uploading(name: name, body: ByteBuffer())
        default:
            return .answering(.notFound, "not found\n", contentType: "text/plain")
        }
    }

    /// Writes the upload off the event loop, then hands its path to the chat, which offers it.
    private func store(context: ChannelHandlerContext, name: String, body: ByteBuffer) {
        let directory = (configuration.uploadDirectory as NSString).appendingPathComponent(UUID().uuidString)
        let path = (directory as NSString).appendingPathComponent(name)
        let written = context.eventLoop.makePromise(of: Void.self)
        let bytes = Data(body.readableBytesView)
        // Off the event loop (blocking file I/O); ends with the write, whose result `written` carries back.
        Task.detached {
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
                try bytes.write(to: URL(fileURLWithPath: path))
                written.succeed()
            } catch {
                written.fail(error)
            }
        }
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        let hub = self.hub
        written.futureResult.whenComplete { result in
            let (handler, context) = bound.value
            switch result {
            case .success:
                if hub.submit(.uploaded(path)) {
                    handler.respond(context: context, .ok, "{\"path\":\"\(name)\"}", contentType: "application/json")
                } else {
                    handler.respond(context: context, .serviceUnavailable, "the chat is busy; try again\n")
                }
            case .failure(let error):
                handler.respond(context: context, .internalServerError, "cannot store the file: \(error)\n")
            }
        }
    }

    private func respond(
        context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ body: String, contentType: String = "text/plain; charset=utf-8"
    ) {
        let buffer = ByteBuffer(string: body)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: contentType)
        headers.add(name: "Content-Length", value: "\(buffer.readableBytes)")
        headers.add(name: "Connection", value: "close")
        headers.add(name: "Cache-Control", value: "no-store")
        // The page loads nothing from elsewhere, and no other site may frame it.
        headers.add(
            name: "Content-Security-Policy",
            value: "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'")
        headers.add(name: "X-Content-Type-Options", value: "nosniff")
        headers.add(name: "Referrer-Policy", value: "no-referrer")
        let head = HTTPResponseHead(version: .http1_1, status: status, headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in bound.value.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A refused upgrade: the request comes next, as a plain one, and is answered with why.
        if error is NIOWebSocketUpgradeError { return }
        logger.debug("web chat HTTP error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    /// A file name without directories, control characters or a leading dot; at most 255 bytes.
    static func safeFileName(_ name: String) -> String? {
        let last = name.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        let cleaned = String(last.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }.map(Character.init))
            .trimmingCharacters(in: .whitespaces)
        guard !cleaned.isEmpty, !cleaned.hasPrefix("."), cleaned.utf8.count <= 255 else { return nil }
        return cleaned
    }
}

/// One page's WebSocket: text messages up (`WebChatInput`), events down
/// (`Hub`). A bad message gets an `error` event and the socket stays; one too
/// large, or a protocol violation, gets a close frame saying why.
final class WebChatSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let hub: Hub
    let logger: Logger
    private var socket: Hub.Socket?
    /// The text message being assembled from its frames; nil outside one.
    private var message: [UInt8]?
    /// Inside a binary message (refused), whose remaining frames are skipped.
    private var skippingBinary = false
    private var closing = false

    init(hub: Hub, logger: Logger) {
        self.hub = hub
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let socket = Hub.Socket(channel: context.channel)
        self.socket = socket
        if !hub.submit(.greet(socket)) { context.close(promise: nil) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let socket { hub.remove(socket) }
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !closing else { return }
        // Browsers mask every frame and negotiate no extension (RFC 6455 §5.1, §5.2).
        guard frame.maskKey != nil else { return close(context: context, .protocolError, "unmasked frame") }
        guard !frame.rsv1, !frame.rsv2, !frame.rsv3 else {
            return close(context: context, .protocolError, "reserved bits set without an extension")
        }
        switch frame.opcode {
        case .text:
            guard message == nil, !skippingBinary else { return close(context: context, .protocolError, "new message before the last one ended") }
            message = Array(frame.unmaskedData.readableBytesView)
            if frame.fin { finishMessage(context: context) } else { checkSize(context: context) }
        case .binary:
            guard message == nil, !skippingBinary else { return close(context: context, .protocolError, "new message before the last one ended") }
            send(context: context, WebChatInput.errorEvent(WebChatInput.Failure.binary.description))
            skippingBinary = !frame.fin
        case .continuation:
            if skippingBinary {
                skippingBinary = !frame.fin
            } else if message != nil {
                message! += frame.unmaskedData.readableBytesView
                if frame.fin { finishMessage(context: context) } else { checkSize(context: context) }
            } else {
                close(context: context, .protocolError, "continuation frame outside a message")
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            close(context: context, .normalClosure, "")
        case .pong:
            break
        default:
            close(context: context, .protocolError, "unknown opcode \(frame.opcode)")
        }
    }

    private func checkSize(context: ChannelHandlerContext) {
        guard let message, message.count > WebChatInput.maxMessageBytes else { return }
        close(context: context, .messageTooLarge, WebChatInput.Failure.tooLarge(bytes: message.count).description)
    }

    private func finishMessage(context: ChannelHandlerContext) {
        guard let bytes = message else { return }
        message = nil
        do {
            for line in try WebChatInput.decode(bytes) where !hub.submit(.line(line)) {
                return send(context: context, WebChatInput.errorEvent("the chat is busy; \(line.prefix(40)) was not taken"))
            }
        } catch {
            if case .tooLarge = error { return close(context: context, .messageTooLarge, error.description) }
            send(context: context, WebChatInput.errorEvent(error.description))
        }
    }

    private func send(context: ChannelHandlerContext, _ text: String) {
        let frame = WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))
        context.writeAndFlush(wrapOutboundOut(frame), promise: nil)
    }

    /// A close frame with `code` and `reason` (cut to fit a control frame's 125 bytes), then the close.
    private func close(context: ChannelHandlerContext, _ code: WebSocketErrorCode, _ reason: String) {
        guard !closing else { return }
        closing = true
        message = nil
        if code != .normalClosure { logger.info("web chat page closed", metadata: ["reason": "\(reason)"]) }
        var data = context.channel.allocator.buffer(capacity: 125)
        data.write(webSocketErrorCode: code)
        var cut = Substring(reason)
        while cut.utf8.count > 123 { cut = cut.dropLast() }
        data.writeString(String(cut))
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, data: data)
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(frame)).whenComplete { _ in bound.value.close(promise: nil) }
    }

    /// Decoder errors (a frame over the limit, a bad header): closed with the reason.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let error = error as? NIOWebSocketError {
            return switch error {
            case .invalidFrameLength:
                close(context: context, .messageTooLarge, "frame larger than \(WebChatInput.maxMessageBytes) bytes")
            default:
                close(context: context, .protocolError, "WebSocket protocol error: \(error)")
            }
        }
        logger.debug("web chat socket error", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }
}
