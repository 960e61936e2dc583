import CoreMetrics
import Identity

/// Pubsub's metrics, through swift-metrics (nothing is recorded without a
/// backend). The router keeps its own counters (sans-IO); these follow them by
/// the difference since the last look, after each batch of RPCs and each heartbeat.
struct PubSubMetrics {
    private var last = PubSubCounters()
    private var meshTopics: Set<String> = []
    private let delivered = Counter(label: "libp2p_pubsub_messages_delivered_total")
    private let duplicates = Counter(label: "libp2p_pubsub_duplicates_total")
    private let graylistedRPCs = Counter(label: "libp2p_pubsub_graylisted_rpcs_total")
    private let graylistedPeers = Gauge(label: "libp2p_pubsub_graylisted_peers")
    private let rejected: [RejectReason: Counter] = Dictionary(
        uniqueKeysWithValues: RejectReason.allCases.map {
            ($0, Counter(label: "libp2p_pubsub_messages_rejected_total", dimensions: [("reason", $0.rawValue)]))
        })

    /// A message delivered to our subscribers.
    func deliveredMessage() { delivered.increment() }

    mutating func follow(_ counters: PubSubCounters) {
        if counters.duplicates > last.duplicates { duplicates.increment(by: counters.duplicates - last.duplicates) }
        if counters.graylistedRPCs > last.graylistedRPCs {
            graylistedRPCs.increment(by: counters.graylistedRPCs - last.graylistedRPCs)
        }
        for (reason, count) in counters.rejected where count > last.rejected[reason, default: 0] {
            rejected[reason]?.increment(by: count - last.rejected[reason, default: 0])
        }
        last = counters
    }

    /// At each heartbeat: the mesh size of each topic (0 for topics we left) and the graylisted peers.
    mutating func heartbeat(mesh: [String: Int], graylisted: Int) {
        for topic in meshTopics.subtracting(mesh.keys) { Self.meshGauge(topic).record(0) }
        for (topic, size) in mesh { Self.meshGauge(topic).record(size) }
        meshTopics = Set(mesh.keys)
        graylistedPeers.record(graylisted)
    }

    /// Topics are ours (those we subscribed to), so the label set stays bounded.
    private static func meshGauge(_ topic: String) -> Gauge {
        Gauge(label: "libp2p_pubsub_mesh_peers", dimensions: [("topic", topic)])
    }
}
