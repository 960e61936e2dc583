import Identity

/// The gossipsub mesh: joining and leaving topics, GRAFT and PRUNE (with
/// backoff and peer exchange), and the heartbeat's mesh maintenance by score
/// (D, D_lo, D_hi, D_score, D_out, opportunistic grafting).
extension GossipsubRouter {
    /// Joining `topic`: fanout peers first (those still scoring at least 0),
    /// then others, up to D; each gets a GRAFT.
    mutating func join(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        var members = fanout.take(topic).filter { core.score($0, atLeast: 0, now: now) }
        fill(&members, upTo: configuration.d, from: graftCandidates(topic, excluding: members, now: now))
        mesh[topic] = members
        var actions: [RouterAction] = []
        for peer in members {
            core.scores.graft(peer, topic: topic, now: now)
            actions.append(.send(peer, PubSubRPC(control: [.graft(topic: topic)])))
        }
        return actions
    }

    /// Leaving `topic`: every mesh peer gets a PRUNE (with peer exchange) and a backoff.
    mutating func leave(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        var actions: [RouterAction] = []
        for peer in mesh[topic] ?? [] {
            actions.append(.send(peer, PubSubRPC(control: [prune(topic, for: peer, exchange: true, now: now)])))
            core.scores.prune(peer, topic: topic, now: now)
            backoff.start(topic, peer, until: now + configuration.pruneBackoff)
        }
        mesh[topic] = nil
        return actions
    }

    /// GRAFT: accept into the mesh unless the peer scores negative, is backing
    /// off, or the mesh is full (outbound peers are always welcome); the PRUNEs
    /// of those refused.
    mutating func handleGraft(_ control: [ControlAction], from peer: PeerID, now: ContinuousClock.Instant) -> [ControlAction] {
        var refusals: [ControlAction] = []
        for case .graft(let topic) in control {
            // Not our topic: ignored (answering would let anyone make us send).
            guard core.subscriptions.contains(topic), mesh[topic]?.contains(peer) != true else { continue }
            if let until = backoff.until(topic, peer), until > now {
                // Grafting during backoff is misbehaviour (P7), doubly so right after the prune.
                core.scores.addPenalty(peer)
                if until - configuration.pruneBackoff + configuration.graftFloodThreshold > now {
                    core.scores.addPenalty(peer)
                }
                refusals.append(prune(topic, for: peer, exchange: false, now: now))
                backoff.start(topic, peer, until: now + configuration.pruneBackoff)
                continue
            }
            if core.scores.score(of: peer, now: now) < 0 {
                refusals.append(prune(topic, for: peer, exchange: false, now: now))
                backoff.start(topic, peer, until: now + configuration.pruneBackoff)
                continue
            }
            if (mesh[topic]?.count ?? 0) >= configuration.dHigh && !(core.peers[peer]?.outbound ?? false) {
                refusals.append(prune(topic, for: peer, exchange: true, now: now))
                backoff.start(topic, peer, until: now + configuration.pruneBackoff)
                continue
            }
            mesh[topic, default: []].insert(peer)
            core.scores.graft(peer, topic: topic, now: now)
        }
        return refusals
    }

    /// PRUNE: leave the mesh, back off, and dial the exchanged peers if the pruner is trusted.
    mutating func handlePrune(_ control: [ControlAction], from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        var actions: [RouterAction] = []
        for case .prune(let topic, let exchanged, let requested) in control {
            if mesh[topic]?.remove(peer) != nil { core.scores.prune(peer, topic: topic, now: now) }
            let duration = requested.flatMap { $0 > .zero ? $0 : nil } ?? configuration.pruneBackoff
            backoff.start(topic, peer, until: now + duration)
            guard configuration.peerExchange, !exchanged.isEmpty,
                core.score(peer, atLeast: configuration.scoreThresholds.acceptPXThreshold, now: now)
            else { continue }
            for info in exchanged where info.peer != core.localPeer && core.peers[info.peer] == nil {
                // A record that does not verify, or names another peer, is dropped (the peer id still counts).
                var record: PeerRecord?
                if let envelope = info.signedRecord, let opened = try? PeerRecord.open(envelope), opened.peerID == info.peer {
                    record = opened
                }
                actions.append(.connect(info.peer, record: record, envelope: record.map { _ in info.signedRecord ?? [] }))
            }
        }
        return actions
    }

    /// A PRUNE for `peer`. Gossipsub v1.1 peers get the backoff and, with
    /// `exchange`, other mesh peers of the topic that score at least 0.
    mutating func prune(_ topic: String, for peer: PeerID, exchange: Bool, now: ContinuousClock.Instant) -> ControlAction {
        guard PubSubProtocol.hasV11(core.peers[peer]?.protocolID ?? "") else {
            return .prune(topic: topic, peers: [], backoff: nil)
        }
        var exchanged: [PeerExchange] = []
        if exchange && configuration.peerExchange {
            let others = (mesh[topic] ?? []).subtracting([peer]).filter { core.score($0, atLeast: 0, now: now) }
            exchanged = others.shuffled(using: &random).prefix(configuration.prunePeers).map { other in
                PeerExchange(peer: other, signedRecord: core.signedRecord(other))
            }
        }
        return .prune(topic: topic, peers: exchanged, backoff: configuration.pruneBackoff)
    }

    // MARK: - Heartbeat

    /// Each topic's mesh kept within [D_lo, D_hi]: negative scorers pruned,
    /// missing peers grafted, an oversubscribed mesh cut to D by score (D_score
    /// best kept, D_out outbound kept), opportunistic grafting. Returns the
    /// GRAFTs (topics) and PRUNEs to send, per peer.
    mutating func maintainMeshes(now: ContinuousClock.Instant, scores: inout HeartbeatScores)
        -> (grafts: [PeerID: [String]], prunes: [PeerID: [ControlAction]])
    {
        var grafts: [PeerID: [String]] = [:]
        var prunes: [PeerID: [ControlAction]] = [:]
        func isOutbound(_ peer: PeerID) -> Bool { core.peers[peer]?.outbound ?? false }
        for topic in core.subscriptions {
            let before = mesh[topic] ?? []
            var members = before.filter { core.peers[$0]?.topics.contains(topic) ?? false }
            var pruned: [PeerID: Bool] = [:]  // peer -> with peer exchange
            // Peers scoring negative leave the mesh (without peer exchange).
            for peer in members where scores.of(peer, core.scores) < 0 {
                members.remove(peer)
                pruned[peer] = false
            }
            if members.count < configuration.dLow {
                fill(&members, upTo: configuration.d, from: graftCandidates(topic, excluding: members, now: now))
            }
            if members.count > configuration.dHigh {
                // Keep the D_score best, fill to D at random, and keep at least D_out outbound peers.
                let byScore = members.shuffled(using: &random).map { ($0, scores.of($0, core.scores)) }
                    .sorted { $0.1 > $1.1 }.map(\.0)
                var keep = Array(byScore.prefix(configuration.dScore))
                var rest = Array(byScore.dropFirst(configuration.dScore)).shuffled(using: &random)
                keep += rest.prefix(max(0, configuration.d - keep.count))
                rest = Array(rest.dropFirst(max(0, configuration.d - configuration.dScore)))
                var outboundKept = keep.filter(isOutbound).count
                for candidate in rest where isOutbound(candidate) && outboundKept < configuration.dOut {
                    // Swap an inbound peer of the random part for an outbound one.
                    guard let index = keep.indices.last(where: { $0 >= configuration.dScore && !isOutbound(keep[$0]) })
                    else { break }
                    keep[index] = candidate
                    outboundKept += 1
                }
                for peer in members.subtracting(keep) where pruned[peer] == nil { pruned[peer] = true }
                members = Set(keep)
            }
            if members.count >= configuration.dLow {
                let outboundCount = members.filter(isOutbound).count
                if outboundCount < configuration.dOut {
                    let candidates = graftCandidates(topic, excluding: members, now: now).filter(isOutbound)
                    members.formUnion(candidates.shuffled(using: &random).prefix(configuration.dOut - outboundCount))
                }
            }
            // Opportunistic grafting: a mesh of poor peers takes a few better ones.
            if heartbeatTicks % max(1, configuration.opportunisticGraftTicks) == 0, members.count > 1 {
                let sorted = members.map { scores.of($0, core.scores) }.sorted()
                let median = sorted[sorted.count / 2]
                if median < configuration.scoreThresholds.opportunisticGraftThreshold {
                    let better = graftCandidates(topic, excluding: members, now: now).filter { scores.of($0, core.scores) > median }
                    members.formUnion(better.shuffled(using: &random).prefix(configuration.opportunisticGraftPeers))
                }
            }
            for peer in members.subtracting(before) {
                core.scores.graft(peer, topic: topic, now: now)
                grafts[peer, default: []].append(topic)
            }
            mesh[topic] = members
            for (peer, exchange) in pruned {
                prunes[peer, default: []].append(prune(topic, for: peer, exchange: exchange, now: now))
                core.scores.prune(peer, topic: topic, now: now)
                backoff.start(topic, peer, until: now + configuration.pruneBackoff)
            }
            // Peers that left the topic or the connection are simply gone from the mesh.
            for peer in before.subtracting(members) where pruned[peer] == nil {
                core.scores.prune(peer, topic: topic, now: now)
            }
        }
        return (grafts, prunes)
    }

    /// The heartbeat's GRAFTs and PRUNEs, one RPC per peer.
    func meshChanges(grafts: [PeerID: [String]], prunes: [PeerID: [ControlAction]]) -> [RouterAction] {
        var prunes = prunes
        var actions: [RouterAction] = []
        for (peer, topics) in grafts {
            let control = topics.map { ControlAction.graft(topic: $0) } + (prunes.removeValue(forKey: peer) ?? [])
            actions.append(.send(peer, PubSubRPC(control: control)))
        }
        for (peer, pruned) in prunes {
            actions.append(.send(peer, PubSubRPC(control: pruned)))
        }
        return actions
    }

    // MARK: - Candidates

    /// Adds peers of `candidates` at random to `members` until it holds `target` (or they run out).
    mutating func fill(_ members: inout Set<PeerID>, upTo target: Int, from candidates: Set<PeerID>) {
        members.formUnion(candidates.shuffled(using: &random).prefix(max(0, target - members.count)))
    }

    /// Gossipsub peers on `topic`.
    func gossipPeers(in topic: String) -> Set<PeerID> {
        Set(core.peers.filter { $0.value.topics.contains(topic) && PubSubProtocol.isGossip($0.value.protocolID) }.map(\.key))
    }

    /// Peers the heartbeat may graft into the topic's mesh: gossipsub peers on
    /// the topic, not yet members, not in backoff, scoring at least 0.
    func graftCandidates(_ topic: String, excluding members: Set<PeerID>, now: ContinuousClock.Instant) -> Set<PeerID> {
        gossipPeers(in: topic).subtracting(members).filter {
            !backoff.contains(topic, $0, now: now) && core.score($0, atLeast: 0, now: now)
        }
    }
}

/// Until when we must not graft a peer into a topic's mesh (after a PRUNE
/// either way).
struct Backoff: Sendable {
    private var until: [String: [PeerID: ContinuousClock.Instant]] = [:]

    func until(_ topic: String, _ peer: PeerID) -> ContinuousClock.Instant? { until[topic]?[peer] }

    func contains(_ topic: String, _ peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        guard let until = until[topic]?[peer] else { return false }
        return until > now
    }

    mutating func start(_ topic: String, _ peer: PeerID, until deadline: ContinuousClock.Instant) {
        until[topic, default: [:]][peer] = deadline
    }

    mutating func expire(now: ContinuousClock.Instant) {
        for topic in Array(until.keys) {
            until[topic] = until[topic]?.filter { $0.value > now }
            if until[topic]?.isEmpty ?? false { until[topic] = nil }
        }
    }
}

/// Scores during one heartbeat, each computed once (they do not change within one).
struct HeartbeatScores {
    let now: ContinuousClock.Instant
    private var known: [PeerID: Double] = [:]

    init(now: ContinuousClock.Instant) { self.now = now }

    mutating func of(_ peer: PeerID, _ scores: PeerScore) -> Double {
        if let value = known[peer] { return value }
        let value = scores.score(of: peer, now: now)
        known[peer] = value
        return value
    }
}
