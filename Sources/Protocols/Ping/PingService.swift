import Host
import NIOCore
import Transport

/// Errors of ping.
public enum PingError: Error, CustomStringConvertible, Sendable {
    case mismatchedPayload
    case streamEnded

    public var description: String {
        switch self {
        case .mismatchedPayload: return "ping: the echoed payload differs from what was sent"
        case .streamEnded: return "ping: the remote closed the stream"
        }
    }
}

/// `/ipfs/ping/1.0.0`: echoes 32-byte payloads back; measures round trips.
public final class PingService: Sendable {
    public static let protocolID = "/ipfs/ping/1.0.0"
    public static let payloadSize = 32

    public let host: Libp2pHost
    /// The streams being echoed on, ended by `stop`.
    let tasks = ServiceTasks()

    public init(host: Libp2pHost) {
        self.host = host
    }

    /// Serves ping: echoes each 32-byte payload until the remote closes.
    public func start() {
        host.setStreamHandler(Self.protocolID) { [tasks] stream in
            await tasks.serve(stream, Self.echo)
        }
    }

    /// Stops serving; returns once every stream being echoed on has ended (reset).
    public func stop() async {
        host.removeStreamHandler(Self.protocolID)
        await tasks.stop()
    }

    private static func echo(_ stream: MuxedStream) async {
        var reader = StreamReader(stream)
        do {
            while true {
                let payload = try await reader.readExactly(Self.payloadSize)
                try await stream.write(payload)
            }
        } catch {
            // End of stream (the normal end) or a failure: either way we are done.
        }
        await stream.close()
    }

    /// Pings over `connection` `count` times, on one stream; returns each round trip.
    public static func ping(
        _ connection: Connection, count: Int = 1,
        onResult: (@Sendable (Duration) -> Void)? = nil
    ) async throws -> [Duration] {
        let stream = try await connection.newStream(protocols: [protocolID])
        var reader = StreamReader(stream)
        var results: [Duration] = []
        let clock = ContinuousClock()
        do {
            for _ in 0..<count {
                var generator = SystemRandomNumberGenerator()
                let payload = (0..<payloadSize).map { _ in UInt8.random(in: 0...255, using: &generator) }
                let start = clock.now
                try await stream.write(payload)
                let echoed: ByteBuffer
                do {
                    echoed = try await reader.readExactly(payloadSize)
                } catch is StreamReader.ReadError {
                    throw PingError.streamEnded
                }
                let elapsed = clock.now - start
                guard Array(echoed.readableBytesView) == payload else { throw PingError.mismatchedPayload }
                results.append(elapsed)
                onResult?(elapsed)
            }
        } catch {
            stream.reset()
            throw error
        }
        await stream.close()
        return results
    }
}
