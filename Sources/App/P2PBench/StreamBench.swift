import Foundation
import Host
import LibP2PSecurity
import Multiformats
import NIOCore
import Noise
import Ping
import Transport

// One Yamux stream between two hosts, and handshakes.

// MARK: One Yamux stream over Noise

/// Experiments: P2PBENCH_WINDOW, P2PBENCH_MAXWINDOW, P2PBENCH_QUEUE, P2PBENCH_FRAME,
/// P2PBENCH_LOWAT (bytes; 0: the kernel's default), P2PBENCH_GROWTH_RTTS, P2PBENCH_GROWTH_FLOOR_US,
/// P2PBENCH_SOLO_FLOOR_US and P2PBENCH_SOLO_QUIET_MS override the defaults.
let benchConfiguration: TransportConfiguration = {
    var configuration = TransportConfiguration()
    let environment = ProcessInfo.processInfo.environment
    if let window = environment["P2PBENCH_WINDOW"].flatMap(UInt32.init) { configuration.yamux.initialWindow = window }
    if let queue = environment["P2PBENCH_QUEUE"].flatMap(Int.init) { configuration.maxQueuedBytesPerStream = queue }
    if let frame = environment["P2PBENCH_FRAME"].flatMap(Int.init) { configuration.yamux.maxFramePayload = frame }
    if let window = environment["P2PBENCH_MAXWINDOW"].flatMap(UInt32.init) { configuration.yamux.maxStreamWindow = window }
    if let lowat = environment["P2PBENCH_LOWAT"].flatMap(Int.init) { configuration.notSentLowWatermark = lowat == 0 ? nil : lowat }
    if let rtts = environment["P2PBENCH_GROWTH_RTTS"].flatMap(Double.init) { configuration.yamux.growthRoundTrips = rtts }
    if let floor = environment["P2PBENCH_GROWTH_FLOOR_US"].flatMap(Int64.init) { configuration.yamux.growthTimeFloor = .microseconds(floor) }
    if let floor = environment["P2PBENCH_SOLO_FLOOR_US"].flatMap(Int64.init) { configuration.yamux.soloGrowthTimeFloor = .microseconds(floor) }
    if let span = environment["P2PBENCH_SOLO_QUIET_MS"].flatMap(Int64.init) { configuration.yamux.soloQuietSpan = .milliseconds(span) }
    return configuration
}()

let sinkProtocol = "/p2pbench/sink/1.0.0"

/// Counts what a stream sends until it ends, then answers the count (8 bytes).
func serveSink(on host: Libp2pHost) {
    host.setStreamHandler(sinkProtocol) { stream in
        var count = 0
        do {
            while let piece = try await stream.read() { count += piece.readableBytes }
            var reply = ByteBuffer()
            reply.writeInteger(UInt64(count))
            try await stream.write(reply)
            try await stream.closeWrite()
        } catch {
            stream.reset()
        }
    }
}

func makeHost() async throws -> (Libp2pHost, Multiaddr) {
    let host = try makeBenchHost(key: .generateEd25519(), configuration: benchConfiguration, group: serverLoop)
    PingService(host: host).start()
    serveSink(on: host)
    let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0"), Multiaddr("/ip4/127.0.0.1/tcp/0/ws")])
    webSocketAddress = bound[1].encapsulating(.p2p(host.localPeer.bytes))
    return (host, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
}

/// The server's `/ws` address (set by makeHost).
nonisolated(unsafe) var webSocketAddress: Multiaddr?

func streamThroughput(server: Multiaddr, client: Libp2pHost) async throws -> Double {
    let connection = try await client.connect(server)
    let stream = try await connection.newStream(protocols: [sinkProtocol])
    let start = clock.now
    try await sendThroughSink(stream, bytes: totalBytes)
    return Double(totalBytes) / seconds(clock.now - start) / 1e6
}

/// Writes `bytes` to a sink stream in `chunk`s, closes, and checks the sink's count.
func sendThroughSink(_ stream: MuxedStream, bytes: Int) async throws {
    let payload = ByteBuffer(repeating: 0x5a, count: chunk)
    var sent = 0
    while sent < bytes {
        let size = min(chunk, bytes - sent)
        try await stream.write(payload.getSlice(at: 0, length: size)!)
        sent += size
    }
    try await stream.closeWrite()
    var reader = StreamReader(stream)
    let count = try await reader.readExactly(8).getInteger(at: 0, as: UInt64.self)!
    precondition(Int(count) == bytes, "sink received \(count) of \(bytes)")
}

// MARK: Handshakes per second

func handshakesPerSecond(
    server: Multiaddr, count: Int, concurrency: Int, security: [any SecurityProtocol] = [NoiseSecurity()],
    transports: @escaping @Sendable () -> [any Transport]? = { nil }
) async throws -> Double {
    let start = clock.now
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for worker in 0..<concurrency {
            tasks.addTask {
                let client = try makeBenchHost(key: .generateEd25519(), group: group, transports: transports(), security: security)
                for _ in stride(from: worker, to: count, by: concurrency) {
                    let connection = try await client.connect(server)
                    await connection.close()
                }
                await client.close()
            }
        }
        try await tasks.waitForAll()
    }
    return Double(count) / seconds(clock.now - start)
}
