import NIOCore

/// The clock of a connection whose socket stopped taking bytes: started when
/// the sink turns unwritable with data for it, cancelled when it takes bytes
/// again; if it runs out the connection is closed. Used on the driver's event loop.
struct WriteStallWatch {
    private var timer: Scheduled<Void>?

    /// Starts the clock unless it runs already.
    mutating func start(on eventLoop: EventLoop, in timeout: TimeAmount, expired: @escaping @Sendable () -> Void) {
        guard timer == nil else { return }
        timer = eventLoop.scheduleTask(in: timeout, expired)
    }

    mutating func cancel() {
        timer?.cancel()
        timer = nil
    }
}
