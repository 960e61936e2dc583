import Logging
import NIOCore
import NIOWebSocket

/// Turns a WebSocket into the plain byte stream libp2p runs over: the payloads of
/// binary frames (and their continuations) go up as `ByteBuffer`s, bytes written
/// down go out as binary frames, masked with a fresh random key per frame on the
/// client side (RFC 6455 §5.3).
///
/// It answers pings, answers a close frame and closes the channel, and closes with
/// a protocol error on text frames and other violations. It never buffers: each
/// write becomes frames at once, so channel writability (what the libp2p handler
/// above watches) reflects exactly what waits in the socket.
final class WebSocketByteStreamHandler: ChannelDuplexHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    enum Role {
        case client
        case server
    }

    let role: Role
    let maxFramePayload: Int
    let logger: Logger

    /// Inside a binary message whose last frame has not arrived yet.
    private var inFragmentedMessage = false
    /// We sent a close frame: no data frames may follow it.
    private var closeSent = false
    /// The remote closed or broke the protocol: what still arrives is dropped.
    private var discardingInput = false

    init(role: Role, maxFramePayload: Int, logger: Logger) {
        precondition(maxFramePayload > 0)
        self.role = role
        self.maxFramePayload = maxFramePayload
        self.logger = logger
    }

    private func maskKey() -> WebSocketMaskingKey? {
        role == .client ? .random() : nil
    }

    // MARK: - Inbound

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard !discardingInput else { return }
        // No extension is ever negotiated, so the reserved bits must be clear (§5.2).
        guard !frame.rsv1, !frame.rsv2, !frame.rsv3 else {
            return violation(context: context, "reserved bits set without an extension")
        }
        // Clients mask every frame, servers none (§5.1).
        guard (frame.maskKey != nil) == (role == .server) else {
            return violation(context: context, role == .server ? "unmasked frame from a client" : "masked frame from a server")
        }
        switch frame.opcode {
        case .binary:
            guard !inFragmentedMessage else {
                return violation(context: context, "new message before the last one ended")
            }
            inFragmentedMessage = !frame.fin
            deliver(frame, context: context)
        case .continuation:
            guard inFragmentedMessage else {
                return violation(context: context, "continuation frame outside a message")
            }
            inFragmentedMessage = !frame.fin
            deliver(frame, context: context)
        case .text:
            // libp2p's /ws carries the byte stream in binary frames only.
            violation(context: context, "text frame")
        case .ping:
            guard !closeSent else { return }
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: maskKey(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .pong:
            break
        case .connectionClose:
            discardingInput = true
            var payload = frame.unmaskedData
            let code = payload.readWebSocketErrorCode()
            logger.debug("websocket closed by the remote", metadata: ["code": "\(code.map { "\($0)" } ?? "none")"])
            // Echo the status code (§5.5.1), then close the TCP connection.
            sendCloseFrame(context: context, code: code ?? .normalClosure, thenClose: true)
        default:
            violation(context: context, "unknown opcode \(frame.opcode)")
        }
    }

    private func deliver(_ frame: WebSocketFrame, context: ChannelHandlerContext) {
        // No extension is negotiated, so the payload is all application data.
        var payload = frame.data
        guard payload.readableBytes > 0 else { return }
        if let key = frame.maskKey { payload.unmaskWebSocketPayload(key) }
        context.fireChannelRead(wrapInboundOut(payload))
    }

    /// Closes with status 1002 and tells the handlers above why (before the
    /// channel goes inactive, so the error they report is this one).
    private func violation(context: ChannelHandlerContext, _ reason: String) {
        discardingInput = true
        logger.debug("websocket protocol violation", metadata: ["reason": "\(reason)"])
        sendCloseFrame(context: context, code: .protocolError, thenClose: false)
        context.fireErrorCaught(WebSocketError.protocolViolation(reason))
        context.close(promise: nil)
    }

    /// Sends a close frame once; closes the channel when it is written, if asked.
    private func sendCloseFrame(context: ChannelHandlerContext, code: WebSocketErrorCode, thenClose: Bool) {
        guard !closeSent else {
            if thenClose { context.close(promise: nil) }
            return
        }
        closeSent = true
        var payload = context.channel.allocator.buffer(capacity: 2)
        payload.write(webSocketErrorCode: code)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: maskKey(), data: payload)
        let written = context.writeAndFlush(wrapOutboundOut(frame))
        guard thenClose else { return }
        written.assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }

    /// The frame decoder's errors (a frame over the size limit, a fragmented or
    /// oversized control frame): closed with 1009 or 1002 here rather than by
    /// NIO's error handler, so that exactly one close frame goes out.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let decoding = error as? NIOWebSocketError else {
            context.fireErrorCaught(error)
            return
        }
        discardingInput = true
        logger.debug("websocket frame refused", metadata: ["error": "\(decoding)"])
        let code: WebSocketErrorCode = decoding == .invalidFrameLength ? .messageTooLarge : .protocolError
        sendCloseFrame(context: context, code: code, thenClose: false)
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    // MARK: - Outbound

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var bytes = unwrapOutboundIn(data)
        guard !closeSent else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        guard bytes.readableBytes > 0 else {
            promise?.succeed()
            return
        }
        // Bounded frames: some peers refuse large messages (py-libp2p's listener takes at most 1 MiB).
        while bytes.readableBytes > maxFramePayload {
            let piece = bytes.readSlice(length: maxFramePayload)!
            context.write(wrapOutboundOut(binaryFrame(piece)), promise: nil)
        }
        context.write(wrapOutboundOut(binaryFrame(bytes)), promise: promise)
    }

    private func binaryFrame(_ payload: ByteBuffer) -> WebSocketFrame {
        WebSocketFrame(fin: true, opcode: .binary, maskKey: maskKey(), data: payload)
    }

    /// A full close sends a close frame first (best effort: it goes out if the
    /// socket takes it before the close), so the remote sees an orderly WebSocket close.
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all, context.channel.isActive {
            sendCloseFrame(context: context, code: .normalClosure, thenClose: false)
        }
        context.close(mode: mode, promise: promise)
    }
}
