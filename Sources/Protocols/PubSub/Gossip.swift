import Identity

/// What one peer did with gossip, for the limits on it.
struct PeerGossipState: Sendable {
    /// IHAVEs taken from the peer this heartbeat (at most maxIHaveMessages).
    var ihaveThisHeartbeat = 0
    /// Message ids we asked this peer for (IWANT) this heartbeat: at most maxIHaveLength.
    var askedThisHeartbeat = 0
    /// How often the peer asked for each message (at most gossipRetransmission answered).
    var iwantCounts: [MessageID: Int] = [:]
    /// Messages the peer said IDONTWANT for, with the heartbeat they arrived in.
    var dontWant: [MessageID: Int] = [:]
    var idontwantThisHeartbeat = 0
}

/// Messages we asked for with IWANT: who promised them, and by when.
struct GossipPromises: Sendable {
    private var promises: [MessageID: [PeerID: ContinuousClock.Instant]] = [:]

    func contains(_ id: MessageID, from peer: PeerID) -> Bool { promises[id]?[peer] != nil }

    mutating func add(_ id: MessageID, from peer: PeerID, until deadline: ContinuousClock.Instant) {
        promises[id, default: [:]][peer] = deadline
    }

    /// The message arrived (from anyone): every promise of it is kept.
    mutating func fulfilled(_ id: MessageID) { promises[id] = nil }

    /// Drops the promises past their deadline; the peers that broke them (once per broken promise).
    mutating func expire(now: ContinuousClock.Instant) -> [PeerID] {
        var breakers: [PeerID] = []
        for (id, promised) in promises {
            let broken = promised.filter { $0.value <= now }
            guard !broken.isEmpty else { continue }
            breakers += broken.keys
            promises[id] = promised.count == broken.count ? nil : promised.filter { $0.value > now }
        }
        return breakers
    }
}

/// Gossip: IHAVE announced to peers outside the mesh, IWANT asked and
/// answered within limits (with promises), IDONTWANT (v1.2) sent and honoured.
extension GossipsubRouter {
    /// IHAVE: the ids to ask for (IWANT) of what we have not seen, within the
    /// limits per heartbeat; the peer promises to send them.
    mutating func handleIHave(_ control: [ControlAction], from peer: PeerID, gossipAllowed: Bool, now: ContinuousClock.Instant)
        -> [MessageID]
    {
        var wanted: [MessageID] = []
        for case .ihave(let topic, let ids) in control {
            gossipState[peer, default: .init()].ihaveThisHeartbeat += 1
            guard gossipAllowed, (gossipState[peer]?.ihaveThisHeartbeat ?? 0) <= configuration.maxIHaveMessages,
                core.subscriptions.contains(topic)
            else {
                core.counters.ignoredIHave += 1
                continue
            }
            for id in ids {
                guard (gossipState[peer]?.askedThisHeartbeat ?? 0) < configuration.maxIHaveLength else { break }
                guard !core.seen.contains(id), !promises.contains(id, from: peer) else { continue }
                wanted.append(id)
                gossipState[peer, default: .init()].askedThisHeartbeat += 1
                promises.add(id, from: peer, until: now + configuration.iwantFollowupTime)
            }
        }
        return wanted
    }

    /// IDONTWANT: remember (bounded, for the gossip window) what not to send this peer.
    mutating func handleIDontWant(_ control: [ControlAction], from peer: PeerID) {
        for case .idontwant(let ids) in control {
            gossipState[peer, default: .init()].idontwantThisHeartbeat += 1
            guard (gossipState[peer]?.idontwantThisHeartbeat ?? 0) <= configuration.maxIDontWantMessages else { break }
            for id in ids {
                core.counters.receivedIDontWant += 1
                guard (gossipState[peer]?.dontWant.count ?? 0) < configuration.maxIDontWantIDs else { break }
                gossipState[peer, default: .init()].dontWant[id] = heartbeatTicks
            }
        }
    }

    /// IWANT: the messages asked for, from the cache, a bounded number of times per message and peer.
    mutating func handleIWant(_ control: [ControlAction], from peer: PeerID, gossipAllowed: Bool) -> [RawMessage] {
        var messages: [RawMessage] = []
        guard gossipAllowed else { return messages }
        for case .iwant(let ids) in control {
            for id in ids {
                guard let message = cache.get(id), gossipState[peer]?.dontWant[id] == nil else { continue }
                let count = gossipState[peer]?.iwantCounts[id, default: 0] ?? 0
                guard count < configuration.gossipRetransmission else { continue }
                gossipState[peer, default: .init()].iwantCounts[id] = count + 1
                messages.append(message)
            }
        }
        return messages
    }

    /// Gossipsub v1.2: a large message seen for the first time; our other v1.2
    /// mesh peers need not send it to us (sent before validation, as the spec asks).
    func idontwant(_ id: MessageID, size: Int, topic: String, from source: PeerID, author: PeerID?) -> [RouterAction] {
        guard size >= configuration.idontwantMessageThreshold, let members = mesh[topic] else { return [] }
        let rpc = PubSubRPC(control: [.idontwant(messageIDs: [id])])
        return members.filter { $0 != source && $0 != author && core.peers[$0]?.protocolID == PubSubProtocol.meshsub12 }
            .map { .send($0, rpc) }
    }

    /// Heartbeat: the per-heartbeat limits start again; IDONTWANTs older than
    /// the gossip window are forgotten.
    mutating func resetGossipLimits() {
        let oldest = heartbeatTicks - configuration.historyGossip
        for peer in Array(gossipState.keys) {
            gossipState[peer]?.ihaveThisHeartbeat = 0
            gossipState[peer]?.askedThisHeartbeat = 0
            gossipState[peer]?.idontwantThisHeartbeat = 0
            if let dontWant = gossipState[peer]?.dontWant, !dontWant.isEmpty {
                gossipState[peer]?.dontWant = dontWant.filter { $0.value > oldest }
            }
        }
    }

    /// Heartbeat: IHAVE for recent messages to D_lazy random peers of each topic
    /// outside the mesh (and fanout), scoring at least the gossip threshold.
    mutating func emitGossip(now: ContinuousClock.Instant) -> [RouterAction] {
        var actions: [RouterAction] = []
        let topics = Set(mesh.keys).union(fanout.peers.keys)
        for topic in topics {
            let ids = cache.gossipIDs(topic: topic)
            guard !ids.isEmpty else { continue }
            let exclude = (mesh[topic] ?? []).union(fanout.peers[topic] ?? [])
            let candidates = gossipPeers(in: topic).subtracting(exclude).filter {
                core.score($0, atLeast: configuration.scoreThresholds.gossipThreshold, now: now)
            }
            let rpc = PubSubRPC(control: [.ihave(topic: topic, messageIDs: Array(ids.prefix(configuration.maxIHaveLength)))])
            for peer in candidates.shuffled(using: &random).prefix(configuration.dLazy) {
                actions.append(.send(peer, rpc))
            }
        }
        return actions
    }
}

extension GossipsubRouter {
    /// How many IDONTWANT ids we keep for `peer`.
    func dontWantCount(of peer: PeerID) -> Int { gossipState[peer]?.dontWant.count ?? 0 }
}
