import Identity
import Multiformats
import NIOCore
import LibP2PSecurity

extension Upgrader {
    /// Upgrades the byte stream carried by a stream of another connection (a
    /// relayed connection inside a circuit relay's hop or stop stream): the same
    /// multistream-select, security and muxer as over TCP, with `role` fixed by
    /// the caller. The new connection runs on the carrying connection's event
    /// loop; inbound ones also go to `onInboundConnection`.
    public func upgrade(
        stream: MuxedStream, direction: ConnectionDirection, role: UpgradeRole? = nil,
        expectedRemotePeer: PeerID?, transport: String, localAddress: Multiaddr?, remoteAddress: Multiaddr
    ) async throws -> Connection {
        let loop = stream.connection.eventLoop
        let promise = loop.makePromise(of: Connection.self)
        try await loop.submit {
            let driver = NIOLoopBound(
                makeDriver(
                    direction: direction, role: role, expectedRemotePeer: expectedRemotePeer, transport: transport,
                    addresses: .fixed(local: localAddress, remote: remoteAddress), promise: promise),
                eventLoop: loop)
            let sink = MuxedStreamSink(stream: stream, driver: driver)
            driver.value.start(sink: sink)
            sink.startReading()
        }.get()
        return try await promise.futureResult.get()
    }
}

/// The byte sink of a connection carried by a stream: writes go to the
/// stream in order through a writer task, reads come from a reader task. Both
/// tasks belong to the sink and end with the stream. Used only on the
/// driver's event loop (which is the carrying connection's).
final class MuxedStreamSink: ByteSink {
    /// Bytes handed to the writer and not yet taken by the stream before the
    /// driver is told to hold back (the stream's own credit bounds the rest).
    static let highWater = 256 * 1024

    private let stream: MuxedStream
    private let driver: NIOLoopBound<ConnectionDriver>
    private let writes: AsyncStream<ByteBuffer>.Continuation
    private var pending = 0
    private var closed = false
    private var readerEnded = false

    init(stream: MuxedStream, driver: NIOLoopBound<ConnectionDriver>) {
        self.stream = stream
        self.driver = driver
        let (chunks, writes) = AsyncStream.makeStream(of: ByteBuffer.self)
        self.writes = writes
        let me = NIOLoopBound(self, eventLoop: driver.eventLoop)
        let stream = self.stream
        let loop = driver.eventLoop
        // Writes in order; after the last (the sink closed), closes the stream's
        // write side and drops its input, which also ends the reader.
        Task {
            for await chunk in chunks {
                let count = chunk.readableBytes
                do {
                    try await stream.write(chunk)
                } catch {
                    loop.execute { me.value.failed(error) }
                    break
                }
                loop.execute { me.value.written(count) }
            }
            await stream.close()
        }
    }

    /// Starts the reader task (after the driver has started).
    func startReading() {
        let me = NIOLoopBound(self, eventLoop: driver.eventLoop)
        let stream = self.stream
        let driver = self.driver
        let loop = driver.eventLoop
        // Ends when the carrying stream ends or fails (it is reset when the sink closes).
        Task {
            do {
                while let chunk = try await stream.read() {
                    // One hop per chunk: the next read waits for the driver, so
                    // the carrying stream's window is the only buffer.
                    try await loop.submit {
                        var chunk = chunk
                        driver.value.receive(&chunk)
                        driver.value.readComplete()
                    }.get()
                }
                loop.execute { me.value.readerEnded(error: nil) }
            } catch {
                loop.execute { me.value.readerEnded(error: error) }
            }
        }
    }

    var isWritable: Bool { !closed && pending < Self.highWater }

    func write(_ bytes: ByteBuffer) {
        guard !closed else { return }
        pending += bytes.readableBytes
        writes.yield(bytes)
    }

    func close() {
        guard !closed else { return }
        closed = true
        writes.finish()
    }

    private func written(_ count: Int) {
        let wasWritable = isWritable
        pending -= count
        if !wasWritable && isWritable { driver.value.writabilityChanged() }
    }

    private func failed(_ error: any Error) {
        closed = true
        writes.finish()
        stream.reset()
        driver.value.transportFailed(error)
    }

    private func readerEnded(error: (any Error)?) {
        guard !readerEnded else { return }
        readerEnded = true
        closed = true
        writes.finish()
        if let error {
            driver.value.transportFailed(error)
        } else {
            driver.value.transportClosed()
        }
    }
}
