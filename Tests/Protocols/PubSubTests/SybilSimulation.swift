import Foundation
import Identity
import TestSupport

@testable import PubSub

/// What the Sybils do: the attacks of the gossipsub v1.1 evaluation report
/// (Protocol Labs, PL-TechRep-2020-001), played against real routers.
enum SybilAttack: String, CaseIterable, Sendable {
    /// The Sybils behave: the baseline of the same topology.
    case none
    /// Forward nothing: no messages, no IHAVE, no answer to IWANT (network degradation).
    case drop
    /// Drop, and send invalid messages to every honest neighbour each heartbeat.
    case invalidFlood
    /// Drop, and GRAFT every honest neighbour each heartbeat, backoff or not.
    case graftSpam
    /// Drop, and announce made-up message ids in IHAVE each heartbeat, never answering IWANT.
    case brokenPromises
    /// Drop, every Sybil also connected to (and grafting) one honest target.
    case eclipse
    /// Behave through the warm-up (building score), then drop all at once (covert flash).
    case covert
}

/// The shape of one run.
struct SybilScenario: Sendable {
    var attack: SybilAttack
    var scoring: Bool
    /// All nodes, Sybils included.
    var nodes = 200
    var sybilFraction = 0.2
    /// Honest nodes each dial this many other nodes (Sybils among them).
    var honestDials = 6
    /// Sybils each dial this many honest nodes (as in the evaluation, many more than an honest node).
    var sybilDials = 25
    /// Messages published per heartbeat by random honest nodes.
    var messagesPerHeartbeat = 1
    /// Heartbeats before measuring (scores build; covert Sybils behave), measured, then drained.
    var warmupHeartbeats = 14
    var measuredHeartbeats = 8
    var drainHeartbeats = 2
    /// One-way delay of a link, fixed per link, uniform in this range (virtual milliseconds).
    var linkDelayMs: ClosedRange<Int> = 20...100
    var invalidPerHeartbeat = 3
    var fakeIHavePerHeartbeat = 10
    var seed: UInt64 = 1
}

extension SybilScenario {
    /// The report's scenario: more nodes, links and heartbeats than the tests'
    /// (covert Sybils get time to be found out, graylisted peers to be disconnected).
    static func report(attack: SybilAttack, scoring: Bool, nodes: Int) -> SybilScenario {
        var scenario = SybilScenario(attack: attack, scoring: scoring, nodes: nodes)
        scenario.honestDials = 8
        scenario.sybilDials = 40
        scenario.warmupHeartbeats = 25
        scenario.measuredHeartbeats = 30
        scenario.drainHeartbeats = 3
        return scenario
    }
}

/// What a run measured: messages published by honest nodes in the measured
/// window, at honest nodes (the publisher excluded).
struct SybilReport: Sendable {
    let scenario: SybilScenario
    let messages: Int
    /// Deliveries over messages × honest receivers.
    let delivery: Double
    /// The worst honest node's share of the messages (for the eclipse, the target).
    let worstNode: Double
    /// Delivery latency in heartbeats, over the deliveries that happened.
    let p50: Double
    let p99: Double
    /// Every RPC byte (all nodes, Sybils too) from the start of the measured window to the end, per delivery.
    let bytesPerDelivery: Double
    /// Share of honest nodes' mesh slots held by Sybils when the measured window
    /// starts (covert Sybils turn) and at the end.
    let sybilMeshShareAtWarmupEnd: Double
    let sybilMeshShare: Double
    /// Links the honest side closed for staying graylisted.
    let graylistDisconnects: Int
}

/// Topic parameters as go-libp2p-pubsub's guidance and the ETH2/Filecoin
/// deployments derive them: from the topic's expected message rate.
enum SybilScoring {
    static let topic = "t"
    /// Honest nodes reject messages whose data starts with this byte.
    static let invalidMarker: UInt8 = 0xFF

    static func topicParameters(messagesPerSecond rate: Double) -> TopicScoreParameters {
        var p = TopicScoreParameters()
        p.topicWeight = 1
        // P1: at most +10, reached after an hour in the mesh.
        p.timeInMeshQuantum = .seconds(1)
        p.timeInMeshCap = 3600
        p.timeInMeshWeight = 10 / 3600
        // P2: at most +20; the counter halves in about 7 s.
        p.firstMessageDeliveriesWeight = 1
        p.firstMessageDeliveriesDecay = 0.9
        p.firstMessageDeliveriesCap = 20
        // P3: with decay 0.9 a peer bringing every message holds about 10 × rate;
        // a mesh peer must bring at least a fifth of that (first, or within the
        // window of the first: a few hop delays). The full deficit costs 40, more
        // than P1 and P2 can ever give, so a silent mesh peer goes negative (pruned,
        // refused) but stays above the gossip threshold until it breaks other rules.
        let saturated = rate / (1 - 0.9)
        p.meshMessageDeliveriesDecay = 0.9
        p.meshMessageDeliveriesThreshold = saturated / 5
        p.meshMessageDeliveriesCap = saturated
        p.meshMessageDeliveriesActivation = .seconds(10)
        p.meshMessageDeliveriesWindow = .milliseconds(500)
        p.meshMessageDeliveriesWeight = -40 / (p.meshMessageDeliveriesThreshold * p.meshMessageDeliveriesThreshold)
        // P3b: the deficit a pruned peer leaves with, remembered longer (half-life ~14 s)
        // so that it is refused when it grafts again after its backoff.
        p.meshFailurePenaltyWeight = p.meshMessageDeliveriesWeight
        p.meshFailurePenaltyDecay = 0.95
        // P4: one invalid message is below the graylist threshold (-80); remembered for minutes.
        p.invalidMessageDeliveriesWeight = -100
        p.invalidMessageDeliveriesDecay = 0.99
        return p
    }

    /// Honest nodes' configuration: content-addressed unsigned messages (the
    /// routing is what is under test; signatures would only cost CPU), scoring on or off.
    static func honest(scoring: Bool, messagesPerSecond rate: Double) -> PubSubConfiguration {
        var configuration = PubSubConfiguration()
        configuration.signaturePolicy = .strictNoSign
        if scoring {
            configuration.scoreParameters.topics = [topic: topicParameters(messagesPerSecond: rate)]
            configuration.scoreParameters.defaultTopic = nil
            // P7 as in the ETH2 parameters: a few slips are free, then it grows with the square.
            configuration.scoreParameters.behaviourPenaltyThreshold = 6
            configuration.scoreParameters.behaviourPenaltyWeight = -10
            configuration.scoreParameters.behaviourPenaltyDecay = 0.9
        } else {
            configuration.scoreParameters = .off
        }
        return configuration
    }

    /// A Sybil's router: grafts every neighbour it can and never prunes, scores nobody.
    static func sybil() -> PubSubConfiguration {
        var configuration = PubSubConfiguration()
        configuration.signaturePolicy = .strictNoSign
        configuration.d = 10_000
        configuration.dLow = 10_000
        configuration.dHigh = 10_000
        configuration.dScore = 10_000
        configuration.scoreParameters = .off
        return configuration
    }
}

extension PeerScoreParameters {
    /// Every weight 0: every peer scores 0, above every threshold.
    static var off: PeerScoreParameters {
        var parameters = PeerScoreParameters()
        parameters.defaultTopic = nil
        parameters.behaviourPenaltyWeight = 0
        parameters.ipColocationFactorWeight = 0
        parameters.appSpecificWeight = 0
        return parameters
    }
}

/// Events in virtual time, earliest first (ties in scheduling order). The heap
/// moves small keys; events wait in slots, reused once taken.
struct EventQueue<Event> {
    private var heap: [(time: Int64, order: Int, slot: Int)] = []
    private var slots: [Event?] = []
    private var free: [Int] = []
    private var scheduled = 0

    var nextTime: Int64? { heap.first?.time }

    mutating func push(_ event: Event, at time: Int64) {
        let slot: Int
        if let reused = free.popLast() {
            slot = reused
            slots[slot] = event
        } else {
            slot = slots.count
            slots.append(event)
        }
        heap.append((time, scheduled, slot))
        scheduled += 1
        var child = heap.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard earlier(heap[child], heap[parent]) else { break }
            heap.swapAt(child, parent)
            child = parent
        }
    }

    mutating func pop() -> (time: Int64, event: Event)? {
        guard !heap.isEmpty else { return nil }
        heap.swapAt(0, heap.count - 1)
        let top = heap.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1
            let right = left + 1
            var first = parent
            if left < heap.count, earlier(heap[left], heap[first]) { first = left }
            if right < heap.count, earlier(heap[right], heap[first]) { first = right }
            guard first != parent else { break }
            heap.swapAt(parent, first)
            parent = first
        }
        guard let event = slots[top.slot] else { return nil }
        slots[top.slot] = nil
        free.append(top.slot)
        return (top.time, event)
    }

    private func earlier(_ a: (time: Int64, order: Int, slot: Int), _ b: (time: Int64, order: Int, slot: Int)) -> Bool {
        a.time != b.time ? a.time < b.time : a.order < b.order
    }
}

/// Honest routers and Sybils on a `SimulatedNetwork`, with per-link delays and
/// per-node heartbeats in virtual time. Every RPC goes through
/// `SimulatedNetwork.deliver`; a Sybil is a real router whose output it filters
/// (dropping what it should forward) plus RPCs it crafts each heartbeat.
struct SybilSimulation {
    enum Event {
        case rpc(from: Int, to: Int, Pubsub_Pb_RPC)
        case heartbeat(Int)
        case publish(Int)
    }

    struct Published {
        let time: Int64
        let publisher: Int
        let measured: Bool
        /// Delivery time at each node (index), for honest receivers.
        var deliveredAt: [Int: Int64] = [:]
    }

    let scenario: SybilScenario
    private(set) var network: SimulatedNetwork
    let ids: [PeerID]
    private let index: [PeerID: Int]
    let isSybil: [Bool]
    private(set) var neighbours: [[Int]]
    private var delays: [Int: Int64] = [:]
    private var queue = EventQueue<Event>()
    private let start: ContinuousClock.Instant
    private(set) var clock: Int64 = 0
    private var rng: SplitMix
    private(set) var published: [MessageID: Published] = [:]
    private var crafted: UInt64 = 0
    /// Each node's graylist clock; nil where graylisted peers stay connected.
    private var graylists: [GraylistTracker<Int>?]
    /// Links closed because the honest end kept the other graylisted.
    private(set) var graylistDisconnects = 0
    /// The eclipse's target: the first honest node.
    var target: Int { isSybil.firstIndex(of: false)! }
    private let heartbeatMs: Int64 = 1000
    var warmupEnd: Int64 { Int64(scenario.warmupHeartbeats) * heartbeatMs }
    var measureEnd: Int64 { warmupEnd + Int64(scenario.measuredHeartbeats) * heartbeatMs }
    var end: Int64 { measureEnd + Int64(scenario.drainHeartbeats) * heartbeatMs }

    init(_ scenario: SybilScenario) {
        self.scenario = scenario
        rng = SplitMix(seed: scenario.seed)
        let sybils = Int((Double(scenario.nodes) * scenario.sybilFraction).rounded())
        let honestCount = scenario.nodes - sybils
        let honestConfiguration = SybilScoring.honest(
            scoring: scenario.scoring, messagesPerSecond: Double(scenario.messagesPerHeartbeat))
        var network = SimulatedNetwork(nodes: 0, seed: scenario.seed)
        var ids: [PeerID] = []
        for node in 0..<scenario.nodes {
            ids.append(network.addNode(configuration: node < honestCount ? honestConfiguration : SybilScoring.sybil()))
        }
        for id in ids.prefix(honestCount) {
            network.routers[id]!.setValidator(topic: SybilScoring.topic) { message in
                message.data.first == SybilScoring.invalidMarker ? .reject : .accept
            }
        }
        self.network = network
        self.ids = ids
        index = Dictionary(uniqueKeysWithValues: ids.enumerated().map { ($1, $0) })
        isSybil = (0..<scenario.nodes).map { $0 >= honestCount }
        neighbours = Array(repeating: [], count: scenario.nodes)
        graylists = ids.map { network.routers[$0]!.configuration.graylistDisconnectAfter.map { GraylistTracker(after: $0) } }
        start = network.now
        buildTopology(honestCount: honestCount)
        // Everyone subscribes at time 0; heartbeats start at a random phase per node.
        for node in 0..<scenario.nodes {
            dispatch(self.network.routers[ids[node]]!.subscribe(SybilScoring.topic, now: self.network.now), at: node)
            queue.push(.heartbeat(node), at: Int64(rng.next() % UInt64(heartbeatMs)))
        }
        for second in 0..<Int64(scenario.warmupHeartbeats + scenario.measuredHeartbeats) {
            for _ in 0..<scenario.messagesPerHeartbeat {
                let publisher = Int(rng.next() % UInt64(honestCount))
                queue.push(.publish(publisher), at: second * heartbeatMs + Int64(rng.next() % UInt64(heartbeatMs)))
            }
        }
    }

    private mutating func buildTopology(honestCount: Int) {
        func link(_ dialer: Int, _ listener: Int) {
            let key = min(dialer, listener) * scenario.nodes + max(dialer, listener)
            guard dialer != listener, delays[key] == nil else { return }
            let span = UInt64(scenario.linkDelayMs.count)
            delays[key] = Int64(scenario.linkDelayMs.lowerBound) + Int64(rng.next() % span)
            neighbours[dialer].append(listener)
            neighbours[listener].append(dialer)
            network.connect(ids[dialer], ids[listener])
        }
        // Honest nodes dial whoever they find (Sybils too); Sybils dial honest nodes only.
        for node in 0..<honestCount {
            for _ in 0..<scenario.honestDials { link(node, Int(rng.next() % UInt64(scenario.nodes))) }
        }
        for sybil in honestCount..<scenario.nodes {
            if scenario.attack == .eclipse { link(sybil, target) }
            for _ in 0..<scenario.sybilDials { link(sybil, Int(rng.next() % UInt64(honestCount))) }
        }
    }

    /// Whether the Sybils misbehave at the current time.
    private var attacking: Bool {
        switch scenario.attack {
        case .none: return false
        case .covert: return clock >= warmupEnd
        default: return true
        }
    }

    // MARK: Running

    mutating func run() -> SybilReport {
        var bytesAtMeasureStart: Int?
        var shareAtTurn = 0.0
        while let time = queue.nextTime, time <= end {
            if bytesAtMeasureStart == nil, time >= warmupEnd {
                bytesAtMeasureStart = network.bytesOnWire
                shareAtTurn = sybilMeshShare
            }
            let (_, event) = queue.pop()!
            clock = time
            network.now = start + .milliseconds(time)
            switch event {
            case .rpc(let from, let to, let rpc):
                // A Sybil that forwards nothing need not read the messages it gets.
                let actions = network.deliver(
                    rpc, from: ids[from], to: ids[to], discardingMessages: isSybil[to] && attacking)
                dispatch(actions, at: to)
            case .heartbeat(let node):
                dispatch(network.routers[ids[node]]!.heartbeat(now: network.now), at: node)
                if isSybil[node] {
                    if attacking { craft(at: node) }
                } else {
                    disconnectGraylisted(at: node)
                }
                queue.push(.heartbeat(node), at: time + heartbeatMs)
            case .publish(let node):
                let data = Array("message \(published.count) from \(node)".utf8)
                let (actions, message) = try! network.routers[ids[node]]!.publishMessage(
                    topic: SybilScoring.topic, data: data, now: network.now)
                published[message.id] = Published(time: time, publisher: node, measured: time >= warmupEnd)
                dispatch(actions, at: node)
            }
        }
        return report(bytes: network.bytesOnWire - (bytesAtMeasureStart ?? network.bytesOnWire), shareAtTurn: shareAtTurn)
    }

    /// Carries out a node's router actions; a Sybil's output goes through its filter first.
    private mutating func dispatch(_ actions: [RouterAction], at node: Int) {
        for action in actions {
            switch action {
            case .deliver(let message):
                if !isSybil[node], published[message.id]?.deliveredAt[node] == nil {
                    published[message.id]?.deliveredAt[node] = clock
                }
            case .send(let peer, let routed):
                guard let to = index[peer] else { continue }
                var rpc = routed.wire
                if isSybil[node], attacking {
                    // Nothing it should pass on: no messages (forwards, IWANT answers), no gossip.
                    rpc.publish = []
                    rpc.control.ihave = []
                    guard !Self.isEmpty(rpc) else { continue }
                }
                send(rpc, from: node, to: to)
            case .connect, .event:
                continue  // the topology is fixed (no peer exchange dials)
            }
        }
    }

    /// As `PubSubService` does: a peer graylisted for `graylistDisconnectAfter` is disconnected.
    private mutating func disconnectGraylisted(at node: Int) {
        let router = network.routers[ids[node]]!
        guard var tracker = graylists[node] else { return }
        let threshold = router.configuration.scoreThresholds.graylistThreshold
        let now = network.now
        let ids = self.ids
        let gone = tracker.check(neighbours[node], now: now) { router.score(of: ids[$0], now: now) < threshold }
        graylists[node] = tracker
        for peer in gone {
            graylistDisconnects += 1
            neighbours[node].removeAll { $0 == peer }
            neighbours[peer].removeAll { $0 == node }
            delays[min(node, peer) * scenario.nodes + max(node, peer)] = nil
            network.routers[ids[node]]!.removePeer(ids[peer], now: network.now)
            network.routers[ids[peer]]!.removePeer(ids[node], now: network.now)
        }
    }

    private mutating func send(_ rpc: Pubsub_Pb_RPC, from: Int, to: Int) {
        let delay = delays[min(from, to) * scenario.nodes + max(from, to)] ?? 0
        queue.push(.rpc(from: from, to: to, rpc), at: clock + delay)
    }

    /// What a misbehaving Sybil adds each heartbeat, to each honest neighbour.
    private mutating func craft(at sybil: Int) {
        var rpc = Pubsub_Pb_RPC()
        switch scenario.attack {
        case .invalidFlood:
            rpc.publish = (0..<scenario.invalidPerHeartbeat).map { _ in
                crafted += 1
                var message = Pubsub_Pb_Message()
                message.topic = SybilScoring.topic
                message.data = Data([SybilScoring.invalidMarker] + withUnsafeBytes(of: crafted.bigEndian, Array.init))
                return message
            }
        case .graftSpam:
            var graft = Pubsub_Pb_ControlGraft()
            graft.topicID = SybilScoring.topic
            rpc.control.graft = [graft]
        case .brokenPromises:
            var ihave = Pubsub_Pb_ControlIHave()
            ihave.topicID = SybilScoring.topic
            ihave.messageIds = (0..<scenario.fakeIHavePerHeartbeat).map { _ in
                crafted += 1
                return Data(withUnsafeBytes(of: crafted.bigEndian, Array.init) + [UInt8](repeating: 0xEE, count: 24))
            }
            rpc.control.ihave = [ihave]
        case .none, .drop, .eclipse, .covert:
            return
        }
        for neighbour in neighbours[sybil] where !isSybil[neighbour] {
            send(rpc, from: sybil, to: neighbour)
        }
    }

    private static func isEmpty(_ rpc: Pubsub_Pb_RPC) -> Bool {
        let control = rpc.control
        return rpc.subscriptions.isEmpty && rpc.publish.isEmpty && control.graft.isEmpty && control.prune.isEmpty
            && control.iwant.isEmpty && control.ihave.isEmpty && control.idontwant.isEmpty
    }

    // MARK: Measuring

    /// The share of honest nodes' mesh slots held by Sybils now.
    var sybilMeshShare: Double {
        var slots = 0
        var held = 0
        for node in 0..<scenario.nodes where !isSybil[node] {
            let mesh = network.routers[ids[node]]!.meshPeers(SybilScoring.topic)
            slots += mesh.count
            held += mesh.filter { isSybil[index[$0]!] }.count
        }
        return Double(held) / Double(max(1, slots))
    }

    private func report(bytes: Int, shareAtTurn: Double) -> SybilReport {
        let honest = (0..<scenario.nodes).filter { !isSybil[$0] }
        let measured = published.values.filter(\.measured)
        var latencies: [Int64] = []
        var deliveries = 0
        var expected = 0
        var perNode: [Int: (got: Int, of: Int)] = [:]
        for message in measured {
            for node in honest where node != message.publisher {
                expected += 1
                perNode[node, default: (0, 0)].of += 1
                guard let at = message.deliveredAt[node] else { continue }
                deliveries += 1
                perNode[node, default: (0, 0)].got += 1
                latencies.append(at - message.time)
            }
        }
        latencies.sort()
        func percentile(_ p: Double) -> Double {
            guard !latencies.isEmpty else { return .nan }
            let rank = min(latencies.count - 1, Int((Double(latencies.count) * p).rounded(.up)) - 1)
            return Double(latencies[max(0, rank)]) / Double(heartbeatMs)
        }
        let shares = perNode.values.map { Double($0.got) / Double(max(1, $0.of)) }
        let worst =
            scenario.attack == .eclipse
            ? perNode[target].map { Double($0.got) / Double(max(1, $0.of)) } ?? 0 : shares.min() ?? 0
        return SybilReport(
            scenario: scenario, messages: measured.count,
            delivery: Double(deliveries) / Double(max(1, expected)), worstNode: worst,
            p50: percentile(0.5), p99: percentile(0.99),
            bytesPerDelivery: Double(bytes) / Double(max(1, deliveries)),
            sybilMeshShareAtWarmupEnd: shareAtTurn, sybilMeshShare: sybilMeshShare,
            graylistDisconnects: graylistDisconnects)
    }
}

extension SybilReport {
    static let tableHeader = """
        | attack | scoring | delivery | worst node | p50 (hb) | p99 (hb) | bytes/delivery | Sybil mesh share (start → end) | graylist disconnects |
        | --- | --- | --- | --- | --- | --- | --- | --- | --- |
        """

    var tableRow: String {
        func percent(_ value: Double) -> String { String(format: "%.2f%%", value * 100) }
        return "| \(scenario.attack.rawValue) | \(scenario.scoring ? "on" : "off") | \(percent(delivery)) | "
            + "\(percent(worstNode)) | \(String(format: "%.2f", p50)) | \(String(format: "%.2f", p99)) | "
            + "\(Int(bytesPerDelivery.rounded())) | \(percent(sybilMeshShareAtWarmupEnd)) → \(percent(sybilMeshShare)) | "
            + "\(graylistDisconnects) |"
    }
}
