import Host
import NIOCore
import Transport

/// Errors of the perf protocol.
public enum PerfError: Error, CustomStringConvertible, Sendable, Equatable {
    /// The stream ended before the 8-byte download size arrived.
    case truncatedHeader(got: Int)
    /// The server sent back a different number of bytes than asked for.
    case wrongDownloadSize(expected: UInt64, got: UInt64)

    public var description: String {
        switch self {
        case .truncatedHeader(let got):
            return "perf: the stream ended after \(got) of the 8 header bytes"
        case .wrongDownloadSize(let expected, let got):
            return "perf: asked for \(expected) bytes but the server sent \(got)"
        }
    }
}

/// What one perf run measured.
public struct PerfResult: Sendable, Equatable {
    public var uploadBytes: UInt64
    public var downloadBytes: UInt64
    /// From the first byte written until the server answered (it answers only
    /// after it has read the whole upload).
    public var uploadDuration: Duration
    /// From the server's first answer until the end of its data.
    public var downloadDuration: Duration

    /// Upload throughput in bytes per second (0 when nothing was uploaded).
    public var uploadBytesPerSecond: Double { Self.rate(uploadBytes, uploadDuration) }
    /// Download throughput in bytes per second (0 when nothing was downloaded).
    public var downloadBytesPerSecond: Double { Self.rate(downloadBytes, downloadDuration) }

    static func rate(_ bytes: UInt64, _ duration: Duration) -> Double {
        let seconds = duration.seconds
        return bytes == 0 || seconds <= 0 ? 0 : Double(bytes) / seconds
    }
}

extension Duration {
    /// The duration in seconds, as a Double.
    public var seconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

/// `/perf/1.0.0` (perf/perf.md of the libp2p specs): the client sends the number
/// of bytes it wants back as a big-endian u64, then uploads its bytes and closes
/// its write side; the server reads to the end, then sends the asked-for bytes
/// and closes.
///
/// The server keeps no more than one block in memory, whatever is asked: a
/// large request costs bandwidth, never memory. Serve it only where measuring
/// is wanted (hosts do not register it by default).
public final class PerfService: Sendable {
    public static let protocolID = "/perf/1.0.0"
    /// Bytes per write: large enough that per-write costs vanish, small enough
    /// to share the connection fairly (Yamux splits it into window-sized frames).
    public static let blockSize = 256 * 1024

    public let host: Libp2pHost
    /// The streams being served, ended by `stop`.
    let tasks = ServiceTasks()

    public init(host: Libp2pHost) {
        self.host = host
    }

    /// Serves `/perf/1.0.0` on the host.
    public func start() {
        host.setStreamHandler(Self.protocolID) { [tasks] stream in
            await tasks.serve(stream) { stream in
                do {
                    try await Self.serve(stream)
                } catch {
                    stream.reset()
                }
            }
        }
    }

    /// Stops serving; returns once every stream being served has ended (reset).
    public func stop() async {
        host.removeStreamHandler(Self.protocolID)
        await tasks.stop()
    }

    /// The server side on one stream.
    static func serve(_ stream: MuxedStream) async throws {
        var reader = StreamReader(stream)
        let requested: UInt64
        do {
            requested = try await reader.readExactly(8).getInteger(at: 0, endianness: .big, as: UInt64.self) ?? 0
        } catch StreamReader.ReadError.endOfStream(_, let had) {
            throw PerfError.truncatedHeader(got: had)
        }
        // The rest is upload data, dropped as it comes.
        while try await reader.readChunk() != nil {}
        try await send(requested, on: stream)
        try await stream.closeWrite()
    }

    /// Writes `count` zero bytes in blocks; each write waits for flow control.
    static func send(_ count: UInt64, on stream: MuxedStream) async throws {
        let block = ByteBuffer(repeating: 0, count: blockSize)
        var remaining = count
        while remaining > 0 {
            let size = Int(min(UInt64(blockSize), remaining))
            try await stream.write(block.getSlice(at: 0, length: size)!)
            remaining -= UInt64(size)
        }
    }

    /// Runs the client side on a new stream of `connection`: uploads `upload`
    /// bytes, then downloads `download` bytes.
    public static func run(_ connection: Connection, upload: UInt64, download: UInt64) async throws -> PerfResult {
        let stream = try await connection.newStream(protocols: [protocolID])
        let clock = ContinuousClock()
        do {
            let start = clock.now
            var header = ByteBuffer()
            header.writeInteger(download, endianness: .big)
            try await stream.write(header)
            try await send(upload, on: stream)
            try await stream.closeWrite()
            // The first answer (data or, for an empty download, the end) marks
            // the moment the server had read everything.
            var received: UInt64 = 0
            var firstAnswer: ContinuousClock.Instant?
            while let chunk = try await stream.read() {
                if firstAnswer == nil { firstAnswer = clock.now }
                received += UInt64(chunk.readableBytes)
                if received > download { break }
            }
            let end = clock.now
            guard received == download else {
                throw PerfError.wrongDownloadSize(expected: download, got: received)
            }
            let answered = firstAnswer ?? end
            await stream.close()
            return PerfResult(
                uploadBytes: upload, downloadBytes: download,
                uploadDuration: answered - start, downloadDuration: end - answered)
        } catch {
            stream.reset()
            throw error
        }
    }
}
