import Identity

/// Gossipsub (`/meshsub/1.0.0`, `1.1.0`, `1.2.0`; floodsub to floodsub-only
/// peers): messages travel a mesh of D peers per topic (`Mesh.swift`), go to a
/// fanout when we publish on a topic we are not in (`Fanout.swift`), and are
/// announced to others by gossip (IHAVE/IWANT/IDONTWANT, `Gossip.swift`) from
/// the message cache; peers are scored (v1.1, `PeerScore.swift`).
struct GossipsubRouter: PubSubRouter {
    var core: RouterCore
    /// Our mesh of each topic we are subscribed to.
    var mesh: [String: Set<PeerID>] = [:]
    var fanout = Fanout()
    var backoff = Backoff()
    var promises = GossipPromises()
    /// What each peer asked and announced, for the gossip limits.
    var gossipState: [PeerID: PeerGossipState] = [:]
    var cache: MessageCache
    var heartbeatTicks = 0
    var random = SystemRandomNumberGenerator()

    init(localKey: PrivateKey, configuration: PubSubConfiguration = .init()) {
        core = RouterCore(localKey: localKey, configuration: configuration)
        cache = MessageCache(history: configuration.historyLength, gossip: configuration.historyGossip)
    }

    var meshMembers: Set<PeerID> { mesh.values.reduce(into: Set<PeerID>()) { $0.formUnion($1) } }

    func meshPeers(_ topic: String) -> [PeerID] { Array(mesh[topic] ?? []) }

    // MARK: - Local operations

    mutating func subscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.subscriptions.insert(topic).inserted else { return [] }
        core.scores.subscribedTopics.insert(topic)
        return core.announce(topic, subscribe: true) + join(topic, now: now)
    }

    mutating func unsubscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.subscriptions.remove(topic) != nil else { return [] }
        let actions = core.announce(topic, subscribe: false) + leave(topic, now: now)
        core.scores.subscribedTopics.remove(topic)
        return actions
    }

    @discardableResult
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        let actions = core.removePeer(peer, now: now)
        gossipState[peer] = nil
        for topic in Array(mesh.keys) { mesh[topic]?.remove(peer) }
        fanout.remove(peer)
        return actions
    }

    mutating func publishMessage(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws
        -> (actions: [RouterAction], message: PubSubMessage)
    {
        let (message, id) = try core.makeMessage(topic: topic, data: data, now: now)
        cache.put(id, message)
        var targets: Set<PeerID>
        if configuration.floodPublish {
            targets = core.floodTargets(topic, floodsubOnly: false, now: now)
        } else {
            targets = core.floodTargets(topic, floodsubOnly: true, now: now)
            if let members = mesh[topic] {
                targets.formUnion(members)
            } else {
                targets.formUnion(fanoutPeers(topic, now: now))
            }
        }
        return core.published(message, id: id, to: targets)
    }

    // MARK: - Remote input

    mutating func handle(_ rpc: PubSubRPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.accepts(from: peer, now: now) else { return [] }
        var actions = core.applySubscriptions(rpc.subscriptions, from: peer)
        // A peer leaving a topic leaves our mesh and fanout of it.
        for subscription in rpc.subscriptions where !subscription.subscribe {
            let topic = subscription.topic
            if mesh[topic]?.remove(peer) != nil { core.scores.prune(peer, topic: topic, now: now) }
            fanout.remove(peer, from: topic)
        }
        for message in rpc.messages {
            actions += receive(message, from: peer, now: now)
        }
        if !rpc.control.isEmpty, PubSubProtocol.isGossip(core.peers[peer]?.protocolID ?? "") {
            actions += handleControl(rpc.control, from: peer, now: now)
        }
        return actions
    }

    private mutating func receive(_ message: RawMessage, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        let id: MessageID
        let author: PeerID?
        switch core.admit(message, from: peer, now: now) {
        case .dropped: return []
        case .duplicate(let duplicate):
            promises.fulfilled(duplicate)
            return []
        case .fresh(let fresh, let signer):
            (id, author) = (fresh, signer)
        }
        promises.fulfilled(id)
        var actions = idontwant(id, size: message.data.count, topic: message.topic, from: peer, author: author)
        guard let delivered = core.validate(message, id: id, author: author, from: peer, now: now) else { return actions }
        cache.put(id, message)
        if core.subscriptions.contains(message.topic) { actions.append(.deliver(delivered)) }
        actions += forward(message, id: id, from: peer, author: author, now: now)
        return actions
    }

    /// To floodsub peers on the topic and to our mesh (or fanout) of it, but
    /// not to peers that said IDONTWANT.
    private mutating func forward(
        _ message: RawMessage, id: MessageID, from source: PeerID, author: PeerID?, now: ContinuousClock.Instant
    ) -> [RouterAction] {
        var targets = core.floodTargets(message.topic, floodsubOnly: true, now: now)
        targets.formUnion(mesh[message.topic] ?? fanout.peers[message.topic] ?? [])
        targets = core.forwardable(targets, source: source, author: author, now: now)
        for peer in targets where gossipState[peer]?.dontWant[id] != nil {
            targets.remove(peer)
            core.counters.skippedForIDontWant += 1
        }
        let rpc = PubSubRPC(messages: [message])
        return targets.map { .send($0, rpc) }
    }

    /// Control messages kind by kind: IHAVE, IDONTWANT, IWANT, GRAFT, PRUNE. The
    /// reply (IWANT, PRUNE and the messages asked for) goes in one RPC.
    private mutating func handleControl(_ control: [ControlAction], from peer: PeerID, now: ContinuousClock.Instant)
        -> [RouterAction]
    {
        var reply = PubSubRPC()
        var actions: [RouterAction] = []
        let gossipAllowed = core.score(peer, atLeast: configuration.scoreThresholds.gossipThreshold, now: now)
        let wanted = handleIHave(control, from: peer, gossipAllowed: gossipAllowed, now: now)
        if !wanted.isEmpty { reply.control.append(.iwant(messageIDs: wanted)) }
        handleIDontWant(control, from: peer)
        reply.messages = handleIWant(control, from: peer, gossipAllowed: gossipAllowed)
        reply.control += handleGraft(control, from: peer, now: now)
        actions += handlePrune(control, from: peer, now: now)
        if !reply.control.isEmpty || !reply.messages.isEmpty { actions.append(.send(peer, reply)) }
        return actions
    }

    // MARK: - Heartbeat

    /// Mesh maintenance by score, fanout expiry, gossip emission, cache shifting,
    /// score decay and broken IWANT promises.
    mutating func heartbeat(now: ContinuousClock.Instant) -> [RouterAction] {
        heartbeatTicks += 1
        core.scores.refresh(now: now, recordTTL: configuration.seenTTL)
        for peer in promises.expire(now: now) {
            core.scores.addPenalty(peer)
            core.counters.brokenPromises += 1
        }
        resetGossipLimits()
        var actions = core.reannounce()
        core.seen.expire(now: now, ttl: configuration.seenTTL)
        backoff.expire(now: now)
        var scores = HeartbeatScores(now: now)
        let (grafts, prunes) = maintainMeshes(now: now, scores: &scores)
        maintainFanout(now: now, scores: &scores)
        actions += meshChanges(grafts: grafts, prunes: prunes)
        actions += emitGossip(now: now)
        cache.shift()
        return actions
    }
}
