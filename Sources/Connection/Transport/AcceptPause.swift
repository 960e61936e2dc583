import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Pauses a listener whose accept fails for lack of resources (out of file
/// descriptors: EMFILE, ENFILE; or of kernel memory) and resumes it after
/// `backoff`. Without it the listener retries at once, in a busy loop on a
/// full core, for as long as descriptors stay short.
///
/// NIO's `AcceptBackoffHandler` does not help here: it delays the next
/// `read()`, but after a failed accept NIO issues none (the read it asked for
/// is still pending) and keeps the socket registered, so accept is retried on
/// every loop turn. Turning `autoRead` off unregisters the socket instead.
final class AcceptPauseHandler: ChannelInboundHandler {
    typealias InboundIn = Channel
    typealias InboundOut = Channel

    private let backoff: TimeAmount
    private var resume: Scheduled<Void>?

    init(backoff: TimeAmount) {
        self.backoff = backoff
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        guard let io = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(io.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        guard resume == nil, let options = context.channel.syncOptions else { return }
        try? options.setOption(.autoRead, value: false)
        resume = context.eventLoop.assumeIsolated().scheduleTask(in: backoff) {
            self.resume = nil
            try? options.setOption(.autoRead, value: true)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        resume?.cancel()
        resume = nil
    }
}
