import Foundation
import Host
import Multiformats
import PubSub

// MARK: Pubsub on 20 nodes

/// 20 nodes in a ring with random chords; 1 KiB messages from random nodes at a
/// steady total rate. Latency from publish to each delivery, delivered fraction,
/// and bytes sent per byte published.
func pubsubBenchmark(_ router: RouterKind, nodes count: Int = 20, messages: Int = 400, rate: Double = 100) async throws
    -> (p50: Double, p99: Double, delivered: Double, amplification: Double)
{
    var services: [PubSubService] = []
    var addresses: [Multiaddr] = []
    for _ in 0..<count {
        let host = try makeBenchHost(key: .generateEd25519(), group: group)
        var configuration = PubSubConfiguration()
        configuration.router = router
        // Experiment: P2PBENCH_IDONTWANT overrides the IDONTWANT size threshold (bytes).
        if let threshold = ProcessInfo.processInfo.environment["P2PBENCH_IDONTWANT"].flatMap(Int.init) {
            configuration.idontwantMessageThreshold = threshold
        }
        let service = try PubSubService(host: host, configuration: configuration)
        service.start()
        let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
        addresses.append(bound[0].encapsulating(.p2p(host.localPeer.bytes)))
        services.append(service)
    }
    let sent = LatencyBook()
    var receivers: [Task<Void, Never>] = []
    for service in services {
        let inbox = await service.subscribe("bench")
        receivers.append(Task {
            for await message in inbox { await sent.delivered(message.data) }
        })
    }
    var generator = SystemRandomNumberGenerator()
    for index in 0..<count {
        _ = try await services[index].host.connect(addresses[(index + 1) % count])
        let chord = Int.random(in: 0..<count, using: &generator)
        if chord != index { _ = try? await services[index].host.connect(addresses[chord]) }
    }
    // Let subscriptions spread and meshes form.
    try await Task.sleep(for: .seconds(3))
    let before = await services.asyncSum { await $0.counters().bytesSent }
    let payloadSize = 1024
    for sequence in 0..<messages {
        var data = [UInt8](repeating: 0x42, count: payloadSize)
        withUnsafeBytes(of: UInt32(sequence).bigEndian) { for i in 0..<4 { data[i] = $0[i] } }
        await sent.published(sequence)
        _ = try await services[Int.random(in: 0..<count, using: &generator)].publish("bench", data: data)
        try await Task.sleep(for: .seconds(1.0 / rate))
    }
    try await Task.sleep(for: .seconds(3))
    let after = await services.asyncSum { await $0.counters().bytesSent }
    for receiver in receivers { receiver.cancel() }
    let latencies = await sent.latencies.sorted()
    for service in services {
        await service.stop()
        await service.host.close()
    }
    let expected = Double(messages * (count - 1))
    let p50 = latencies.isEmpty ? 0 : latencies[latencies.count / 2]
    let p99 = latencies.isEmpty ? 0 : latencies[min(latencies.count - 1, latencies.count * 99 / 100)]
    return (p50, p99, Double(latencies.count) / expected, Double(after - before) / Double(messages * payloadSize))
}

/// Publish times by sequence number, and the latency of each delivery.
actor LatencyBook {
    private var start: [UInt32: ContinuousClock.Instant] = [:]
    private(set) var latencies: [Double] = []

    func published(_ sequence: Int) { start[UInt32(sequence)] = .now }

    func delivered(_ data: [UInt8]) {
        guard data.count >= 4 else { return }
        let sequence = data.prefix(4).reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
        guard let begin = start[sequence] else { return }
        latencies.append(seconds(ContinuousClock.now - begin) * 1000)
    }
}

extension Array {
    func asyncSum(_ value: (Element) async -> Int) async -> Int {
        var total = 0
        for element in self { total += await value(element) }
        return total
    }
}

// MARK: Run

func runPubSubBenchmarks() async throws {
    print("pubsub: 20 nodes on loopback, 400 messages of 1 KiB at 100/s from random nodes")
    for router in [RouterKind.gossipsub, .floodsub] {
        let result = try await pubsubBenchmark(router)
        report("\(router.rawValue) delivery latency p50", result.p50, "ms")
        report("\(router.rawValue) delivery latency p99", result.p99, "ms")
        report("\(router.rawValue) delivered fraction", result.delivered, "")
        report("\(router.rawValue) bytes sent per byte published", result.amplification, "")
    }
}
