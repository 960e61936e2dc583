import Foundation
import Host
import Multiformats
import NIOPosix
import PubSub
import Transport

// MARK: Pubsub as the network grows

/// What one network delivered: latency from publish to each delivery, in ms
/// and in heartbeats; copies of each message a node received (duplicates
/// included); bytes put on the wire per delivery; the fraction delivered.
struct PubSubScaleResult {
    var latencies: [Double]
    var heartbeat: Double
    var copiesPerDelivery: Double
    var bytesPerDelivery: Double
    var delivered: Double
}

/// `count` hosts in one process over the in-memory transport (Noise and
/// Yamux as on TCP), each dialling `degree / 2` random others (a ring keeps
/// the graph connected), real heartbeats; `messages` of 256 bytes published
/// from random nodes at `rate` a second.
func pubsubScaleBenchmark(_ router: RouterKind, nodes count: Int, degree: Int = 8, messages: Int, rate: Double) async throws
    -> PubSubScaleResult
{
    let group = MultiThreadedEventLoopGroup.singleton
    let memory = MemoryNetwork()
    var configuration = PubSubConfiguration()
    configuration.router = router
    var services: [PubSubService] = []
    var addresses: [Multiaddr] = []
    for _ in 0..<count {
        let host = try makeBenchHost(key: .generateEd25519(), group: group, transports: [MemoryTransport(group: group, network: memory)])
        let service = try PubSubService(host: host, configuration: configuration)
        service.start()
        let bound = try await host.listen(on: [Multiaddr([.memory(0)])])
        addresses.append(bound[0].encapsulating(.p2p(host.localPeer.bytes)))
        services.append(service)
    }
    let book = LatencyBook()
    var receivers: [Task<Void, Never>] = []
    for service in services {
        let inbox = await service.subscribe("scale")
        // Owned here: cancelled below once the counting is over.
        receivers.append(Task { for await message in inbox { await book.delivered(message.data) } })
    }
    var generator = SystemRandomNumberGenerator()
    // Dials a few at a time: a thousand handshakes at once would only queue.
    try await withThrowingTaskGroup(of: Void.self) { dials in
        for index in 0..<count {
            if index >= 16 { try await dials.next() }
            let targets = [(index + 1) % count] + (1..<max(1, degree / 2)).map { _ in Int.random(in: 0..<count, using: &generator) }
            dials.addTask { [services, addresses] in
                for target in targets where target != index { _ = try? await services[index].host.connect(addresses[target]) }
            }
        }
        try await dials.waitForAll()
    }
    // Subscriptions spread and meshes form over a few heartbeats.
    let heartbeat = seconds(configuration.heartbeatInterval)
    try await Task.sleep(for: configuration.heartbeatInterval * 4)
    let bytesBefore = await services.asyncSum { await $0.counters().bytesSent }
    let duplicatesBefore = await services.asyncSum { await $0.counters().duplicates }
    for sequence in 0..<messages {
        var data = [UInt8](repeating: 0x42, count: 256)
        withUnsafeBytes(of: UInt32(sequence).bigEndian) { for i in 0..<4 { data[i] = $0[i] } }
        await book.published(sequence)
        _ = try await services[Int.random(in: 0..<count, using: &generator)].publish("scale", data: data)
        try await Task.sleep(for: .seconds(1.0 / rate))
    }
    // Late copies (gossip, IWANT) arrive within a few heartbeats.
    try await Task.sleep(for: configuration.heartbeatInterval * 3)
    let bytes = await services.asyncSum { await $0.counters().bytesSent } - bytesBefore
    let duplicates = await services.asyncSum { await $0.counters().duplicates } - duplicatesBefore
    for receiver in receivers { receiver.cancel() }
    let latencies = await book.latencies.sorted()
    for service in services {
        await service.stop()
        await service.host.close()
    }
    let deliveries = Double(max(1, latencies.count))
    return PubSubScaleResult(
        latencies: latencies, heartbeat: heartbeat * 1000, copiesPerDelivery: (deliveries + Double(duplicates)) / deliveries,
        bytesPerDelivery: Double(bytes) / deliveries, delivered: Double(latencies.count) / Double(messages * (count - 1)))
}

/// `p2pbench pubsub-scale [N ...]`: gossipsub and floodsub in networks of N
/// nodes (50, 200 and 1000 unless given).
func runPubSubScaleBenchmarks(sizes: [Int]) async throws {
    print("pubsub-scale: hosts in one process over /memory (Noise, Yamux), about 8 connections each, 1 s heartbeats, 256-byte messages")
    for count in sizes {
        // Fewer messages in large networks: each is delivered count - 1 times.
        let messages = count >= 1000 ? 30 : count >= 200 ? 60 : 100
        for router in [RouterKind.gossipsub, .floodsub] {
            let started = clock.now
            let result = try await pubsubScaleBenchmark(router, nodes: count, messages: messages, rate: 10)
            let p50 = percentile(result.latencies, 0.5)
            let p99 = percentile(result.latencies, 0.99)
            let name = "\(router.rawValue) \(count) nodes"
            report("\(name): delivery p50 / p99", p50, String(
                format: "/ %.1f ms (%.2f / %.2f heartbeats), %d messages, run %.0f s",
                p99, p50 / result.heartbeat, p99 / result.heartbeat, messages, seconds(clock.now - started)))
            report("  copies received per delivery", result.copiesPerDelivery, "")
            report("  bytes sent per delivery (256-byte payload)", result.bytesPerDelivery, "")
            report("  delivered fraction", result.delivered, "")
        }
    }
}
