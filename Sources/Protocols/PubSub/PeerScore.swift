import Identity

/// Score parameters of one topic (gossipsub v1.1, "Peer Scoring"). Counters
/// decay by their factor every decay interval; a weight of 0 turns a term off.
public struct TopicScoreParameters: Sendable {
    /// How much this topic counts in the total.
    public var topicWeight = 1.0

    /// P1, time in the mesh: the time since grafting in quanta, capped. Positive weight.
    public var timeInMeshWeight = 0.01
    public var timeInMeshQuantum: Duration = .seconds(1)
    public var timeInMeshCap = 3600.0

    /// P2, first deliveries: messages this peer was first to bring. Positive weight.
    public var firstMessageDeliveriesWeight = 1.0
    public var firstMessageDeliveriesDecay = 0.5
    public var firstMessageDeliveriesCap = 100.0

    /// P3, mesh delivery deficit: once a peer has been in the mesh for the
    /// activation time, a delivery count below the threshold costs the squared
    /// deficit. Negative weight; off by default because a chat's traffic is too
    /// sparse to set a fair threshold (set it for busy topics).
    public var meshMessageDeliveriesWeight = 0.0
    public var meshMessageDeliveriesDecay = 0.5
    public var meshMessageDeliveriesThreshold = 1.0
    public var meshMessageDeliveriesCap = 100.0
    public var meshMessageDeliveriesActivation: Duration = .seconds(30)
    /// Duplicates arriving this soon after the first copy still count as deliveries.
    public var meshMessageDeliveriesWindow: Duration = .milliseconds(10)

    /// P3b, mesh failure: the deficit squared, added when a peer with a deficit
    /// leaves the mesh. Negative weight.
    public var meshFailurePenaltyWeight = 0.0
    public var meshFailurePenaltyDecay = 0.5

    /// P4, invalid messages: the squared count. Negative weight.
    public var invalidMessageDeliveriesWeight = -10.0
    public var invalidMessageDeliveriesDecay = 0.9

    public init() {}
}

/// The score function's parameters beyond single topics.
public struct PeerScoreParameters: Sendable {
    /// Parameters of named topics.
    public var topics: [String: TopicScoreParameters] = [:]
    /// Parameters of every other topic we subscribe to (nil: unnamed topics do not count).
    public var defaultTopic: TopicScoreParameters? = TopicScoreParameters()
    /// Cap on the positive sum of the topic terms (0: none).
    public var topicScoreCap = 100.0

    /// P5, the application's own score of a peer.
    public var appSpecificScore: @Sendable (PeerID) -> Double = { _ in 0 }
    public var appSpecificWeight = 1.0

    /// P6, IP colocation: more than `threshold` peers on one IP cost the
    /// squared surplus each. Loopback is exempt (tests and local clusters).
    public var ipColocationFactorWeight = -5.0
    public var ipColocationFactorThreshold = 4
    public var ipColocationFactorWhitelist: Set<String> = ["127.0.0.1", "::1"]

    /// P7, behaviour: GRAFT during backoff, broken IWANT promises, malformed
    /// RPCs. The squared count above the threshold. Negative weight.
    public var behaviourPenaltyWeight = -10.0
    public var behaviourPenaltyThreshold = 2.0
    public var behaviourPenaltyDecay = 0.9

    public var decayInterval: Duration = .seconds(1)
    /// Decayed counters below this become 0.
    public var decayToZero = 0.01
    /// How long the counters of a disconnected peer are kept (so a bad peer
    /// cannot reconnect to a clean slate).
    public var retainScore: Duration = .seconds(3600)
    /// Disconnected peers whose counters are kept at most (oldest go first).
    public var maxRetainedPeers = 10_000

    public init() {}

}

/// What a peer's score allows (spec: gossipsub v1.1 "Score Thresholds").
public struct PeerScoreThresholds: Sendable {
    /// Below it: no gossip to or from the peer.
    public var gossipThreshold = -10.0
    /// Below it: no flood publishing or fanout to the peer.
    public var publishThreshold = -50.0
    /// Below it: everything from the peer is ignored.
    public var graylistThreshold = -80.0
    /// At least this: the peer's PRUNE peer exchange is followed.
    public var acceptPXThreshold = 10.0
    /// Median mesh score below this: graft better-scoring peers.
    public var opportunisticGraftThreshold = 5.0

    public init() {}
}

/// Per-peer counters and the score computed from them (sans-IO: every call
/// takes the current time).
struct PeerScore {
    struct TopicStats {
        /// When the peer joined our mesh of the topic; nil while it is not in it.
        var graftTime: ContinuousClock.Instant?
        var inMesh: Bool { graftTime != nil }
        var firstMessageDeliveries = 0.0
        var meshMessageDeliveries = 0.0
        var meshMessageDeliveriesActive = false
        var meshFailurePenalty = 0.0
        var invalidMessageDeliveries = 0.0
    }

    struct PeerStats {
        var connected = true
        var expire: ContinuousClock.Instant?
        var topics: [String: TopicStats] = [:]
        var ip: String?
        var behaviourPenalty = 0.0
    }

    /// What became of a message id, for counting near-first duplicates and
    /// penalising everyone who forwards an invalid message.
    struct DeliveryRecord {
        enum Status { case valid, invalid, ignored }
        var status: Status
        var firstSeen: ContinuousClock.Instant
        var peers: Set<PeerID>
    }

    let parameters: PeerScoreParameters
    /// Our topics: the default topic parameters apply to these only (a peer
    /// cannot make us keep counters for topics of its choosing).
    var subscribedTopics: Set<String> = []
    private(set) var stats: [PeerID: PeerStats] = [:]
    private var peersByIP: [String: Set<PeerID>] = [:]
    private var deliveries: [MessageID: DeliveryRecord] = [:]
    private var deliveryOrder: [(MessageID, ContinuousClock.Instant)] = []
    private var deliveryOrderStart = 0
    private var lastDecay: ContinuousClock.Instant?

    init(parameters: PeerScoreParameters) {
        self.parameters = parameters
    }

    func parameters(of topic: String) -> TopicScoreParameters? {
        parameters.topics[topic] ?? (subscribedTopics.contains(topic) ? parameters.defaultTopic : nil)
    }

    // MARK: Score

    func score(of peer: PeerID, now: ContinuousClock.Instant) -> Double {
        guard let peerStats = stats[peer] else { return 0 }
        var topicSum = 0.0
        for (topic, topicStats) in peerStats.topics {
            guard let p = self.parameters(of: topic) else { continue }
            var topicScore = 0.0
            if let graftTime = topicStats.graftTime {
                let quanta = (now - graftTime) / p.timeInMeshQuantum
                topicScore += min(quanta, p.timeInMeshCap) * p.timeInMeshWeight
            }
            topicScore += topicStats.firstMessageDeliveries * p.firstMessageDeliveriesWeight
            if topicStats.meshMessageDeliveriesActive,
                topicStats.meshMessageDeliveries < p.meshMessageDeliveriesThreshold
            {
                let deficit = p.meshMessageDeliveriesThreshold - topicStats.meshMessageDeliveries
                topicScore += deficit * deficit * p.meshMessageDeliveriesWeight
            }
            topicScore += topicStats.meshFailurePenalty * p.meshFailurePenaltyWeight
            topicScore += topicStats.invalidMessageDeliveries * topicStats.invalidMessageDeliveries
                * p.invalidMessageDeliveriesWeight
            topicSum += topicScore * p.topicWeight
        }
        if parameters.topicScoreCap > 0 { topicSum = min(topicSum, parameters.topicScoreCap) }
        var score = topicSum
        score += parameters.appSpecificScore(peer) * parameters.appSpecificWeight
        if let ip = peerStats.ip, !parameters.ipColocationFactorWhitelist.contains(ip) {
            let surplus = Double((peersByIP[ip]?.count ?? 0) - parameters.ipColocationFactorThreshold)
            if surplus > 0 { score += surplus * surplus * parameters.ipColocationFactorWeight }
        }
        let excess = peerStats.behaviourPenalty - parameters.behaviourPenaltyThreshold
        if excess > 0 { score += excess * excess * parameters.behaviourPenaltyWeight }
        return score
    }

    // MARK: Peers

    mutating func addPeer(_ peer: PeerID, ip: String?) {
        var peerStats = stats[peer] ?? PeerStats()
        peerStats.connected = true
        peerStats.expire = nil
        if let old = peerStats.ip, old != ip { peersByIP[old]?.remove(peer) }
        peerStats.ip = ip
        if let ip { peersByIP[ip, default: []].insert(peer) }
        stats[peer] = peerStats
    }

    /// The peer disconnected: its counters stay for `retainScore` (mesh membership ends).
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) {
        guard var peerStats = stats[peer] else { return }
        for topic in Array(peerStats.topics.keys) where peerStats.topics[topic]!.inMesh {
            leaveMesh(&peerStats, topic: topic, now: now)
        }
        peerStats.connected = false
        peerStats.expire = now + parameters.retainScore
        if let ip = peerStats.ip {
            peersByIP[ip]?.remove(peer)
            if peersByIP[ip]?.isEmpty == true { peersByIP[ip] = nil }
        }
        stats[peer] = peerStats
        let retained = stats.filter { !$0.value.connected }
        if retained.count > parameters.maxRetainedPeers,
            let oldest = retained.min(by: { ($0.value.expire ?? now) < ($1.value.expire ?? now) })
        {
            stats[oldest.key] = nil
        }
    }

    mutating func graft(_ peer: PeerID, topic: String, now: ContinuousClock.Instant) {
        guard stats[peer] != nil, parameters(of: topic) != nil else { return }
        var topicStats = stats[peer]!.topics[topic] ?? TopicStats()
        topicStats.graftTime = now
        topicStats.meshMessageDeliveriesActive = false
        stats[peer]!.topics[topic] = topicStats
    }

    mutating func prune(_ peer: PeerID, topic: String, now: ContinuousClock.Instant) {
        guard var peerStats = stats[peer], peerStats.topics[topic]?.inMesh == true else { return }
        leaveMesh(&peerStats, topic: topic, now: now)
        stats[peer] = peerStats
    }

    private func leaveMesh(_ peerStats: inout PeerStats, topic: String, now: ContinuousClock.Instant) {
        guard var topicStats = peerStats.topics[topic], let p = parameters(of: topic) else { return }
        // A peer that leaves the mesh with a delivery deficit keeps it as a penalty (P3b).
        if topicStats.meshMessageDeliveriesActive, topicStats.meshMessageDeliveries < p.meshMessageDeliveriesThreshold {
            let deficit = p.meshMessageDeliveriesThreshold - topicStats.meshMessageDeliveries
            topicStats.meshFailurePenalty += deficit * deficit
        }
        topicStats.graftTime = nil
        topicStats.meshMessageDeliveriesActive = false
        peerStats.topics[topic] = topicStats
    }

    // MARK: Events

    mutating func addPenalty(_ peer: PeerID, _ count: Double = 1) {
        stats[peer]?.behaviourPenalty += count
    }

    /// A message arrived that we had not seen, and passed validation.
    mutating func deliverFirst(_ id: MessageID, topic: String, from peer: PeerID, now: ContinuousClock.Instant) {
        record(id, DeliveryRecord(status: .valid, firstSeen: now, peers: [peer]), now: now)
        guard let p = parameters(of: topic), stats[peer] != nil else { return }
        var topicStats = stats[peer]!.topics[topic] ?? TopicStats()
        topicStats.firstMessageDeliveries = min(topicStats.firstMessageDeliveries + 1, p.firstMessageDeliveriesCap)
        if topicStats.inMesh {
            topicStats.meshMessageDeliveries = min(topicStats.meshMessageDeliveries + 1, p.meshMessageDeliveriesCap)
        }
        stats[peer]!.topics[topic] = topicStats
    }

    /// A message was rejected (bad signature, validator): P4 for the sender.
    /// With `remember`, later copies from others count against them too (not for
    /// signature failures, whose id an attacker could forge for a genuine message).
    mutating func reject(_ id: MessageID?, topic: String, from peer: PeerID, remember: Bool, now: ContinuousClock.Instant) {
        if remember, let id {
            record(id, DeliveryRecord(status: .invalid, firstSeen: now, peers: [peer]), now: now)
        }
        countInvalid(peer, topic: topic)
    }

    /// The application validator said ignore: no reward, no penalty.
    mutating func ignore(_ id: MessageID, from peer: PeerID, now: ContinuousClock.Instant) {
        record(id, DeliveryRecord(status: .ignored, firstSeen: now, peers: [peer]), now: now)
    }

    /// A copy of a message we already had.
    mutating func duplicate(_ id: MessageID, topic: String, from peer: PeerID, now: ContinuousClock.Instant) {
        guard var delivery = deliveries[id], !delivery.peers.contains(peer) else { return }
        delivery.peers.insert(peer)
        deliveries[id] = delivery
        switch delivery.status {
        case .invalid:
            countInvalid(peer, topic: topic)
        case .valid:
            guard let p = parameters(of: topic), var topicStats = stats[peer]?.topics[topic],
                topicStats.inMesh, now - delivery.firstSeen <= p.meshMessageDeliveriesWindow
            else { return }
            topicStats.meshMessageDeliveries = min(topicStats.meshMessageDeliveries + 1, p.meshMessageDeliveriesCap)
            stats[peer]!.topics[topic] = topicStats
        case .ignored:
            break
        }
    }

    private mutating func countInvalid(_ peer: PeerID, topic: String) {
        guard parameters(of: topic) != nil, stats[peer] != nil else { return }
        stats[peer]!.topics[topic, default: TopicStats()].invalidMessageDeliveries += 1
    }

    private mutating func record(_ id: MessageID, _ delivery: DeliveryRecord, now: ContinuousClock.Instant) {
        guard deliveries[id] == nil else { return }
        deliveries[id] = delivery
        deliveryOrder.append((id, now))
    }

    // MARK: Time

    /// Decays the counters (once per decay interval), activates P3, forgets
    /// expired peers and old delivery records.
    mutating func refresh(now: ContinuousClock.Instant, recordTTL: Duration) {
        // Delivery records live as long as the seen-cache.
        while deliveryOrderStart < deliveryOrder.count, now - deliveryOrder[deliveryOrderStart].1 > recordTTL {
            deliveries[deliveryOrder[deliveryOrderStart].0] = nil
            deliveryOrderStart += 1
        }
        if deliveryOrderStart > 1024 && deliveryOrderStart * 2 > deliveryOrder.count {
            deliveryOrder.removeFirst(deliveryOrderStart)
            deliveryOrderStart = 0
        }
        if let last = lastDecay, now - last < parameters.decayInterval { return }
        lastDecay = now
        let zero = parameters.decayToZero
        func decay(_ value: Double, _ factor: Double) -> Double {
            let decayed = value * factor
            return abs(decayed) < zero ? 0 : decayed
        }
        for peer in Array(stats.keys) {
            var peerStats = stats[peer]!
            if !peerStats.connected, let expire = peerStats.expire, expire <= now {
                stats[peer] = nil
                continue
            }
            for (topic, var topicStats) in peerStats.topics {
                guard let p = parameters(of: topic) else { continue }
                topicStats.firstMessageDeliveries = decay(topicStats.firstMessageDeliveries, p.firstMessageDeliveriesDecay)
                topicStats.meshMessageDeliveries = decay(topicStats.meshMessageDeliveries, p.meshMessageDeliveriesDecay)
                topicStats.meshFailurePenalty = decay(topicStats.meshFailurePenalty, p.meshFailurePenaltyDecay)
                topicStats.invalidMessageDeliveries = decay(
                    topicStats.invalidMessageDeliveries, p.invalidMessageDeliveriesDecay)
                if let graftTime = topicStats.graftTime, now - graftTime >= p.meshMessageDeliveriesActivation {
                    topicStats.meshMessageDeliveriesActive = true
                }
                peerStats.topics[topic] = topicStats
            }
            peerStats.behaviourPenalty = decay(peerStats.behaviourPenalty, parameters.behaviourPenaltyDecay)
            stats[peer] = peerStats
        }
    }
}
