import NIOCore

/// Where a connection's bytes go: a NIO channel, an in-memory pipe (later a
/// relayed stream). Used only on the driver's event loop.
protocol ByteSink: AnyObject {
    /// Whether the sink takes more now; when it turns true again the owner
    /// calls the driver's `writabilityChanged`.
    var isWritable: Bool { get }
    /// Writes and flushes.
    func write(_ bytes: ByteBuffer)
    /// Closes the byte stream; the owner then calls `transportClosed`.
    func close()
}
