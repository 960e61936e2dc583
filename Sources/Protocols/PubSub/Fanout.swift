import Identity

/// Gossipsub fanout: the peers we publish to on topics we are not subscribed
/// to, forgotten `fanoutTTL` after our last publish there.
struct Fanout: Sendable {
    private(set) var peers: [String: Set<PeerID>] = [:]
    private var lastPublished: [String: ContinuousClock.Instant] = [:]

    /// The topic's fanout, gone from here (we joined the topic).
    mutating func take(_ topic: String) -> Set<PeerID> {
        lastPublished[topic] = nil
        return peers.removeValue(forKey: topic) ?? []
    }

    mutating func remove(_ peer: PeerID) {
        for topic in Array(peers.keys) { peers[topic]?.remove(peer) }
    }

    mutating func remove(_ peer: PeerID, from topic: String) {
        peers[topic]?.remove(peer)
    }

    mutating func set(_ topic: String, _ members: Set<PeerID>) { peers[topic] = members }

    mutating func published(_ topic: String, now: ContinuousClock.Instant) { lastPublished[topic] = now }

    /// Drops the topics not published to within `ttl`; those left.
    mutating func expire(now: ContinuousClock.Instant, ttl: Duration) -> [String] {
        var kept: [String] = []
        for topic in Array(peers.keys) {
            if let last = lastPublished[topic], now - last > ttl {
                peers[topic] = nil
                lastPublished[topic] = nil
            } else {
                kept.append(topic)
            }
        }
        return kept
    }
}

extension GossipsubRouter {
    /// The fanout of `topic` for a publish there, topped up to D with gossipsub
    /// peers scoring at least the publish threshold.
    mutating func fanoutPeers(_ topic: String, now: ContinuousClock.Instant) -> Set<PeerID> {
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        var members = fanout.peers[topic] ?? []
        if members.count < configuration.d {
            let candidates = gossipPeers(in: topic).subtracting(members).filter {
                core.score($0, atLeast: publishThreshold, now: now)
            }
            fill(&members, upTo: configuration.d, from: candidates)
        }
        fanout.set(topic, members)
        fanout.published(topic, now: now)
        return members
    }

    /// Heartbeat: unused topics expire; peers that left the topic or fell below
    /// the publish threshold go, and the rest is refilled to D.
    mutating func maintainFanout(now: ContinuousClock.Instant, scores: inout HeartbeatScores) {
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        for topic in fanout.expire(now: now, ttl: configuration.fanoutTTL) {
            var members = (fanout.peers[topic] ?? []).filter {
                core.peers[$0]?.topics.contains(topic) ?? false && scores.of($0, core.scores) >= publishThreshold
            }
            if members.count < configuration.d {
                let candidates = gossipPeers(in: topic).subtracting(members).filter {
                    scores.of($0, core.scores) >= publishThreshold
                }
                fill(&members, upTo: configuration.d, from: candidates)
            }
            fanout.set(topic, members)
        }
    }
}
