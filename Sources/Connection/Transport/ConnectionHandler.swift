import NIOCore

/// Connects a NIO channel carrying a raw byte stream (TCP, WebSocket frames
/// turned into bytes) to a connection driver: bytes in, writability and
/// closure events; the driver writes back through the channel.
final class ConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let driver: ConnectionDriver
    private var started = false

    init(driver: ConnectionDriver) {
        self.driver = driver
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { start(context: context) }
    }

    /// Also reached when the channel never became active (a failed connect):
    /// the driver settles its promises either way.
    func handlerRemoved(context: ChannelHandlerContext) {
        driver.transportClosed()
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        driver.start(sink: ChannelSink(context: context))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        driver.receive(&bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        driver.readComplete()
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        driver.writabilityChanged()
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        driver.transportClosed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        driver.transportFailed(error)
    }
}

/// The driver's view of the channel.
private final class ChannelSink: ByteSink {
    private let context: ChannelHandlerContext

    init(context: ChannelHandlerContext) {
        self.context = context
    }

    var isWritable: Bool { context.channel.isWritable }

    func write(_ bytes: ByteBuffer) {
        context.writeAndFlush(NIOAny(bytes), promise: nil)
    }

    func close() {
        context.close(promise: nil)
    }
}
