import Host
import Multiformats
import NIOCore
import Perf
import Ping
import Synchronization
import Transport

// MARK: Ping

func pingRoundTrip(server: Multiaddr, client: Libp2pHost) async throws -> Double {
    let connection = try await client.connect(server)
    let rtts = try await PingService.ping(connection, count: 200)
    let sorted = rtts.sorted()
    return seconds(sorted[sorted.count / 2]) * 1e6
}

/// Ping on a connection one of whose streams sends as fast as it can: control
/// traffic must not queue behind bulk data (streams take turns frame by
/// frame, and data waits in its stream, not in the socket's output buffer).
func pingUnderLoad(server: Multiaddr, client: Libp2pHost) async throws -> (p50: Double, p99: Double, flood: Double) {
    let connection = try await client.connect(server)
    let stream = try await connection.newStream(protocols: [sinkProtocol])
    let stop = Atomic<Bool>(false)
    let sent = Atomic<Int>(0)
    let payload = ByteBuffer(repeating: 0x5a, count: chunk)
    let flood = Task {
        while !stop.load(ordering: .relaxed) {
            try await stream.write(payload)
            sent.add(payload.readableBytes, ordering: .relaxed)
        }
        try await stream.closeWrite()
        var reader = StreamReader(stream)
        _ = try await reader.readExactly(8)
    }
    // Measure once the flood is under way.
    while sent.load(ordering: .relaxed) < 64 * 1024 * 1024 { try await Task.sleep(for: .milliseconds(10)) }
    let (sentBefore, start) = (sent.load(ordering: .relaxed), clock.now)
    let rtts = try await PingService.ping(connection, count: 200)
    // What the flood moved while the pings ran (written into its stream's queue).
    let floodRate = Double(sent.load(ordering: .relaxed) - sentBefore) / seconds(clock.now - start) / 1e6
    stop.store(true, ordering: .relaxed)
    try await flood.value
    let sorted = rtts.sorted()
    return (seconds(sorted[sorted.count / 2]) * 1e6, seconds(sorted[sorted.count * 99 / 100]) * 1e6, floodRate)
}

/// Ping idle, then while a stream floods the same connection.
func reportPing(server: Multiaddr, client: Libp2pHost) async throws {
    report("ping round trip (median of 200)", try await pingRoundTrip(server: server, client: client), "µs")
    let loaded = try await pingUnderLoad(server: server, client: client)
    report("  under a flooding stream, p50 of 200", loaded.p50, "µs")
    report("  under a flooding stream, p99 of 200", loaded.p99, "µs")
    report("  the flooding stream meanwhile", loaded.flood, "MB/s")
}

/// Pings a remote perf-server while a /perf upload fills the same connection.
func pingUnderUpload(remote: Multiaddr) async throws {
    let host = try makeBenchHost(key: .generateEd25519(), configuration: benchConfiguration, group: group)
    let connection = try await host.connect(remote)
    let idle = try await PingService.ping(connection, count: 10).sorted()
    let upload = Task { try await PerfService.run(connection, upload: 1 << 40, download: 0) }
    try await Task.sleep(for: .seconds(3))
    let loaded = try await PingService.ping(connection, count: 20).sorted()
    upload.cancel()
    _ = await upload.result
    report("ping round trip, idle (median of 10)", seconds(idle[idle.count / 2]) * 1e3, "ms")
    report("  during a /perf upload (median of 20)", seconds(loaded[loaded.count / 2]) * 1e3, "ms")
    report("  during a /perf upload (worst of 20)", seconds(loaded.last!) * 1e3, "ms")
    await host.close()
}
