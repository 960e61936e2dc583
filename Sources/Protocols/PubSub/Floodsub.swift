import Identity

/// Floodsub (`/floodsub/1.0.0`): every message goes to every peer on its topic
/// (scoring at least the publish threshold), no mesh, no control messages.
struct FloodsubRouter: PubSubRouter {
    var core: RouterCore

    init(localKey: PrivateKey, configuration: PubSubConfiguration = .init()) {
        core = RouterCore(localKey: localKey, configuration: configuration)
    }

    var meshMembers: Set<PeerID> { [] }

    func meshPeers(_ topic: String) -> [PeerID] { [] }

    mutating func subscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.subscriptions.insert(topic).inserted else { return [] }
        core.scores.subscribedTopics.insert(topic)
        return core.announce(topic, subscribe: true)
    }

    mutating func unsubscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.subscriptions.remove(topic) != nil else { return [] }
        core.scores.subscribedTopics.remove(topic)
        return core.announce(topic, subscribe: false)
    }

    @discardableResult
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        core.removePeer(peer, now: now)
    }

    mutating func publishMessage(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws
        -> (actions: [RouterAction], message: PubSubMessage)
    {
        let (message, id) = try core.makeMessage(topic: topic, data: data, now: now)
        return core.published(message, id: id, to: core.floodTargets(topic, floodsubOnly: false, now: now))
    }

    mutating func handle(_ rpc: PubSubRPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard core.accepts(from: peer, now: now) else { return [] }
        var actions = core.applySubscriptions(rpc.subscriptions, from: peer)
        for message in rpc.messages {
            guard case .fresh(let id, let author) = core.admit(message, from: peer, now: now),
                let delivered = core.validate(message, id: id, author: author, from: peer, now: now)
            else { continue }
            if core.subscriptions.contains(message.topic) { actions.append(.deliver(delivered)) }
            let targets = core.forwardable(
                core.floodTargets(message.topic, floodsubOnly: false, now: now), source: peer, author: author, now: now)
            let forward = PubSubRPC(messages: [message])
            actions += targets.map { .send($0, forward) }
        }
        // Control messages are gossipsub's: ignored.
        return actions
    }

    mutating func heartbeat(now: ContinuousClock.Instant) -> [RouterAction] {
        core.scores.refresh(now: now, recordTTL: core.configuration.seenTTL)
        let actions = core.reannounce()
        core.seen.expire(now: now, ttl: core.configuration.seenTTL)
        return actions
    }
}
