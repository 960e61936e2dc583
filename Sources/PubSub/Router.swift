import Crypto
import Foundation
import Identity

/// The pubsub protocol ids.
public enum PubSubProtocol {
    public static let floodsub = "/floodsub/1.0.0"
    public static let meshsub10 = "/meshsub/1.0.0"
    public static let meshsub11 = "/meshsub/1.1.0"
    /// What we propose when opening a stream, best first.
    public static let gossipsubPreference = [meshsub11, meshsub10, floodsub]
    public static let floodsubPreference = [floodsub]

    static func isGossip(_ id: String) -> Bool { id == meshsub10 || id == meshsub11 }
}

/// Which router a node runs.
public enum RouterKind: String, Sendable {
    case gossipsub
    case floodsub
}

/// Gossipsub parameters (names as in the spec) and pubsub bounds.
public struct PubSubConfiguration: Sendable {
    public var router: RouterKind = .gossipsub
    public var signaturePolicy: SignaturePolicy = .strictSign
    public var d = 6
    public var dLow = 5
    public var dHigh = 12
    public var dLazy = 6
    public var dOut = 2
    public var heartbeatInterval: Duration = .seconds(1)
    public var fanoutTTL: Duration = .seconds(60)
    public var historyLength = 5
    public var historyGossip = 3
    public var seenTTL: Duration = .seconds(120)
    public var pruneBackoff: Duration = .seconds(60)
    public var floodPublish = true
    /// How message ids are computed (every node of a network must agree). Nil:
    /// the spec's default, `from` followed by `seqno`, or for unsigned messages
    /// a SHA-256 of topic and data. Content-based ids (a hash of `data`) make
    /// the same text from two publishers one message.
    public var messageID: (@Sendable (MessageFields) -> MessageID)?
    /// Largest message data accepted or published.
    public var maxMessageSize = 1024 * 1024
    /// Largest RPC frame read from a peer (a message plus control overhead).
    public var maxRPCSize: Int { maxMessageSize + 64 * 1024 }
    /// IHAVE messages accepted from one peer per heartbeat, and ids per IHAVE answered.
    public var maxIHaveMessages = 10
    public var maxIHaveLength = 5000
    /// How often one peer may ask for the same message through IWANT.
    public var gossipRetransmission = 3
    /// Topics a peer may announce (bounds what a peer can make us store).
    public var maxTopicsPerPeer = 1024
    /// Outbound RPCs queued per peer before we drop (and count) them.
    public var maxQueuedRPCsPerPeer = 1024

    public init() {}
}

/// What the router asks its owner to do.
enum RouterAction: Sendable {
    case send(PeerID, Pubsub_Pb_RPC)
    case deliver(PubSubMessage)
}

/// Counters of what was dropped and why.
public struct PubSubCounters: Sendable {
    public var rejected: [RejectReason: Int] = [:]
    public var duplicates = 0
    public var malformedRPCs = 0
    public var droppedOutbound = 0
    public var ignoredIHave = 0
    /// RPC bytes written to peers (frames with their length prefixes).
    public var bytesSent = 0
}

/// Floodsub and gossipsub v1.1 routing, sans-IO: feed it peers, RPCs, local
/// publishes and heartbeats with the current time; it returns RPCs to send and
/// messages to deliver.
struct PubSubRouter {
    struct PeerState {
        var protocolID: String
        var topics: Set<String> = []
        var outbound: Bool
        var ihaveThisHeartbeat = 0
        /// Our subscriptions go out again on the next heartbeat: some peers
        /// (py-libp2p 0.8.1) drop what arrives before they have registered us.
        var reannounce = true
        var iwantCounts: [MessageID: Int] = [:]
        /// Penalty for misbehaviour (invalid messages, malformed RPCs, backoff violations).
        var penalty: Double = 0
    }

    let configuration: PubSubConfiguration
    let localPeer: PeerID
    private let localKey: PrivateKey
    private var peers: [PeerID: PeerState] = [:]
    private(set) var subscriptions: Set<String> = []
    private(set) var mesh: [String: Set<PeerID>] = [:]
    private var fanout: [String: Set<PeerID>] = [:]
    private var lastPublished: [String: ContinuousClock.Instant] = [:]
    private var backoff: [String: [PeerID: ContinuousClock.Instant]] = [:]
    private var seen = SeenCache()
    private var cache: MessageCache
    private var seqno: UInt64
    private var validators: [String: @Sendable (PubSubMessage) -> ValidationResult] = [:]
    private(set) var counters = PubSubCounters()
    private var random: SystemRandomNumberGenerator = .init()

    /// Peers at or below this penalty are ignored (the graylist).
    static let graylistPenalty: Double = -80

    init(localKey: PrivateKey, configuration: PubSubConfiguration = .init()) {
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.configuration = configuration
        self.cache = MessageCache(history: configuration.historyLength, gossip: configuration.historyGossip)
        // Start the sequence from the clock so restarts do not reuse numbers.
        self.seqno = UInt64(Date().timeIntervalSince1970 * 1_000_000_000)
    }

    // MARK: - Views

    var knownPeers: [PeerID] { Array(peers.keys) }

    func peers(in topic: String) -> [PeerID] {
        peers.filter { $0.value.topics.contains(topic) }.map(\.key)
    }

    func meshPeers(_ topic: String) -> [PeerID] { Array(mesh[topic] ?? []) }

    func penalty(of peer: PeerID) -> Double { peers[peer]?.penalty ?? 0 }

    func protocolOf(_ peer: PeerID) -> String? { peers[peer]?.protocolID }

    mutating func setValidator(topic: String, _ validator: @escaping @Sendable (PubSubMessage) -> ValidationResult) {
        validators[topic] = validator
    }

    private func isGraylisted(_ peer: PeerID) -> Bool {
        (peers[peer]?.penalty ?? 0) <= Self.graylistPenalty
    }

    // MARK: - Peers

    /// A peer with our outbound pubsub stream negotiated for `protocolID`: we tell
    /// it our subscriptions (the protocol of our stream is the one that counts).
    mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool) -> [RouterAction] {
        if peers[peer] == nil {
            peers[peer] = PeerState(protocolID: protocolID, outbound: outbound)
        } else {
            peers[peer]?.protocolID = protocolID
            peers[peer]?.outbound = outbound
        }
        guard !subscriptions.isEmpty else { return [] }
        var rpc = Pubsub_Pb_RPC()
        rpc.subscriptions = subscriptions.sorted().map { Self.subOpts($0, subscribe: true) }
        return [.send(peer, rpc)]
    }

    /// A peer whose inbound pubsub stream arrived before we attached: remember it
    /// so its subscriptions are not lost.
    mutating func notePeer(_ peer: PeerID, protocolID: String) {
        guard peers[peer] == nil else { return }
        peers[peer] = PeerState(protocolID: protocolID, outbound: false)
    }

    mutating func removePeer(_ peer: PeerID) {
        peers[peer] = nil
        for topic in Array(mesh.keys) { mesh[topic]?.remove(peer) }
        for topic in Array(fanout.keys) { fanout[topic]?.remove(peer) }
    }

    // MARK: - Local operations

    mutating func subscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard subscriptions.insert(topic).inserted else { return [] }
        var actions = announce(topic, subscribe: true)
        guard configuration.router == .gossipsub else { return actions }
        // Join: take fanout peers first, then others, up to D.
        var members = fanout.removeValue(forKey: topic) ?? []
        lastPublished[topic] = nil
        let candidates = gossipPeers(in: topic).subtracting(members).filter { !inBackoff(topic, $0, now: now) }
        members.formUnion(candidates.shuffled(using: &random).prefix(max(0, configuration.d - members.count)))
        mesh[topic] = members
        for peer in members { actions.append(.send(peer, Self.graft(topic))) }
        return actions
    }

    mutating func unsubscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard subscriptions.remove(topic) != nil else { return [] }
        var actions = announce(topic, subscribe: false)
        for peer in mesh.removeValue(forKey: topic) ?? [] {
            actions.append(.send(peer, prune(topic, for: peer)))
            setBackoff(topic, peer, now: now)
        }
        return actions
    }

    private func announce(_ topic: String, subscribe: Bool) -> [RouterAction] {
        var rpc = Pubsub_Pb_RPC()
        rpc.subscriptions = [Self.subOpts(topic, subscribe: subscribe)]
        return peers.keys.map { .send($0, rpc) }
    }

    /// Publishes `data` on `topic` (signed per the policy).
    mutating func publish(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws -> [RouterAction] {
        guard data.count <= configuration.maxMessageSize else {
            throw PubSubError.messageTooLarge(size: data.count, limit: configuration.maxMessageSize)
        }
        var message = Pubsub_Pb_Message()
        message.data = Data(data)
        message.topic = topic
        if configuration.signaturePolicy == .strictSign {
            seqno &+= 1
            message.from = Data(localPeer.bytes)
            message.seqno = withUnsafeBytes(of: seqno.bigEndian) { Data($0) }
            try MessageSigning.sign(&message, with: localKey)
        }
        let id = messageID(message)
        seen.insert(id, now: now)
        cache.put(id, message)
        var targets: Set<PeerID> = []
        let topicPeers = Set(peers(in: topic)).filter { !isGraylisted($0) }
        if configuration.router == .floodsub || configuration.floodPublish {
            targets = topicPeers
        } else {
            targets = topicPeers.filter { peers[$0]?.protocolID == PubSubProtocol.floodsub }
            if let members = mesh[topic] {
                targets.formUnion(members)
            } else {
                var members = fanout[topic] ?? []
                if members.count < configuration.d {
                    members.formUnion(
                        gossipPeers(in: topic).subtracting(members).shuffled(using: &random)
                            .prefix(configuration.d - members.count))
                }
                fanout[topic] = members
                lastPublished[topic] = now
                targets.formUnion(members)
            }
        }
        // Our own subscribers do not hear our messages (the chat never echoes its own lines).
        var rpc = Pubsub_Pb_RPC()
        rpc.publish = [message]
        return targets.map { RouterAction.send($0, rpc) }
    }

    // MARK: - Remote input

    /// Handles one RPC from `peer`.
    mutating func handle(_ rpc: Pubsub_Pb_RPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard peers[peer] != nil else { return [] }
        if isGraylisted(peer) { return [] }
        var actions: [RouterAction] = []
        for subscription in rpc.subscriptions where subscription.hasTopicid {
            let topic = subscription.topicid
            if subscription.subscribe {
                guard (peers[peer]?.topics.count ?? 0) < configuration.maxTopicsPerPeer else { continue }
                peers[peer]?.topics.insert(topic)
            } else {
                peers[peer]?.topics.remove(topic)
                mesh[topic]?.remove(peer)
                fanout[topic]?.remove(peer)
            }
        }
        for message in rpc.publish {
            actions += receive(message, from: peer, now: now)
        }
        if rpc.hasControl, configuration.router == .gossipsub, PubSubProtocol.isGossip(peers[peer]?.protocolID ?? "") {
            actions += handleControl(rpc.control, from: peer, now: now)
        }
        return actions
    }

    /// Counts an RPC dropped because the peer's send queue was full.
    mutating func countDroppedOutbound() {
        counters.droppedOutbound += 1
    }

    mutating func countSent(_ bytes: Int) {
        counters.bytesSent += bytes
    }

    /// Counts a malformed RPC against the sender.
    mutating func malformedRPC(from peer: PeerID) {
        counters.malformedRPCs += 1
        peers[peer]?.penalty -= 10
    }

    private mutating func receive(_ message: Pubsub_Pb_Message, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard message.hasTopic, !message.topic.isEmpty else {
            reject(.missingTopic, peer)
            return []
        }
        guard message.data.count <= configuration.maxMessageSize else {
            reject(.tooLarge, peer)
            return []
        }
        let id = messageID(message)
        if seen.contains(id, now: now) {
            counters.duplicates += 1
            return []
        }
        let author: PeerID?
        switch MessageSigning.verify(message, policy: configuration.signaturePolicy) {
        case .success(let from): author = from
        case .failure(let reason):
            reject(reason, peer)
            return []
        }
        seen.insert(id, now: now)
        let delivered = PubSubMessage(
            topic: message.topic, data: Array(message.data), from: author,
            seqno: message.hasSeqno ? Array(message.seqno) : nil, id: id, receivedFrom: peer)
        if let validator = validators[message.topic] {
            switch validator(delivered) {
            case .accept: break
            case .reject:
                reject(.validatorRejected, peer)
                return []
            case .ignore:
                return []
            }
        }
        // Our own messages coming back are not delivered again.
        if author == localPeer { return [] }
        cache.put(id, message)
        var actions: [RouterAction] = []
        if subscriptions.contains(message.topic) { actions.append(.deliver(delivered)) }
        actions += forward(message, topic: message.topic, from: peer, author: author)
        return actions
    }

    private mutating func reject(_ reason: RejectReason, _ peer: PeerID) {
        counters.rejected[reason, default: 0] += 1
        peers[peer]?.penalty -= 10
    }

    private func forward(_ message: Pubsub_Pb_Message, topic: String, from source: PeerID, author: PeerID?) -> [RouterAction] {
        var targets: Set<PeerID> = []
        for (peer, state) in peers where state.topics.contains(topic) {
            if configuration.router == .floodsub || state.protocolID == PubSubProtocol.floodsub {
                targets.insert(peer)
            }
        }
        if configuration.router == .gossipsub {
            targets.formUnion(mesh[topic] ?? fanout[topic] ?? [])
        }
        targets.remove(source)
        if let author { targets.remove(author) }
        targets = targets.filter { !isGraylisted($0) }
        var rpc = Pubsub_Pb_RPC()
        rpc.publish = [message]
        return targets.map { .send($0, rpc) }
    }

    // MARK: - Gossipsub control

    private mutating func handleControl(_ control: Pubsub_Pb_ControlMessage, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        var reply = Pubsub_Pb_ControlMessage()
        var messages: [Pubsub_Pb_Message] = []
        // IHAVE: ask for what we have not seen, within limits.
        var wanted: [Data] = []
        for ihave in control.ihave {
            peers[peer]?.ihaveThisHeartbeat += 1
            guard (peers[peer]?.ihaveThisHeartbeat ?? 0) <= configuration.maxIHaveMessages,
                subscriptions.contains(ihave.topicID)
            else {
                counters.ignoredIHave += 1
                continue
            }
            for raw in ihave.messageIds.prefix(configuration.maxIHaveLength - wanted.count) {
                let id = MessageID(Array(raw))
                if !seen.contains(id, now: now) { wanted.append(raw) }
            }
        }
        if !wanted.isEmpty {
            var iwant = Pubsub_Pb_ControlIWant()
            iwant.messageIds = wanted
            reply.iwant = [iwant]
        }
        // IWANT: answer from the cache, a bounded number of times per message and peer.
        for iwant in control.iwant {
            for raw in iwant.messageIds.prefix(configuration.maxIHaveLength) {
                let id = MessageID(Array(raw))
                guard let message = cache.get(id) else { continue }
                let count = peers[peer]?.iwantCounts[id, default: 0] ?? 0
                guard count < configuration.gossipRetransmission else { continue }
                peers[peer]?.iwantCounts[id] = count + 1
                messages.append(message)
            }
        }
        // GRAFT: accept into the mesh unless backing off or not subscribed.
        for graft in control.graft {
            let topic = graft.topicID
            guard subscriptions.contains(topic) else {
                reply.prune.append(prune(topic, for: peer).control.prune[0])
                continue
            }
            if inBackoff(topic, peer, now: now) {
                // Grafting during backoff is misbehaviour (P7-like penalty).
                peers[peer]?.penalty -= 5
                reply.prune.append(prune(topic, for: peer).control.prune[0])
                continue
            }
            if (mesh[topic]?.count ?? 0) >= configuration.dHigh && !(peers[peer]?.outbound ?? false) {
                reply.prune.append(prune(topic, for: peer).control.prune[0])
                setBackoff(topic, peer, now: now)
                continue
            }
            mesh[topic, default: []].insert(peer)
        }
        // PRUNE: leave the mesh and back off.
        for prune in control.prune {
            mesh[prune.topicID]?.remove(peer)
            let seconds = prune.hasBackoff ? min(prune.backoff, 3600) : 0
            let duration = seconds > 0 ? Duration.seconds(Int64(seconds)) : configuration.pruneBackoff
            backoff[prune.topicID, default: [:]][peer] = now + duration
        }
        var actions: [RouterAction] = []
        if !reply.iwant.isEmpty || !reply.prune.isEmpty || !messages.isEmpty {
            var rpc = Pubsub_Pb_RPC()
            if !reply.iwant.isEmpty || !reply.prune.isEmpty { rpc.control = reply }
            rpc.publish = messages
            actions.append(.send(peer, rpc))
        }
        return actions
    }

    // MARK: - Heartbeat

    /// Mesh maintenance, fanout expiry, gossip emission, cache shifting.
    mutating func heartbeat(now: ContinuousClock.Instant) -> [RouterAction] {
        var grafts: [PeerID: [String]] = [:]
        var prunes: [PeerID: [String]] = [:]
        var actions: [RouterAction] = []
        for peer in Array(peers.keys) {
            peers[peer]?.ihaveThisHeartbeat = 0
            if peers[peer]?.reannounce == true {
                peers[peer]?.reannounce = false
                if !subscriptions.isEmpty {
                    var rpc = Pubsub_Pb_RPC()
                    rpc.subscriptions = subscriptions.sorted().map { Self.subOpts($0, subscribe: true) }
                    actions.append(.send(peer, rpc))
                }
            }
            // Penalties decay so that a peer can recover over time.
            if let penalty = peers[peer]?.penalty, penalty < 0 { peers[peer]?.penalty = min(0, penalty * 0.9 + 0.5) }
        }
        seen.expire(now: now, ttl: configuration.seenTTL)
        for topic in Array(backoff.keys) {
            backoff[topic] = backoff[topic]?.filter { $0.value > now }
            if backoff[topic]?.isEmpty ?? false { backoff[topic] = nil }
        }
        guard configuration.router == .gossipsub else {
            cache.shift()
            return actions
        }
        for topic in subscriptions {
            var members = (mesh[topic] ?? []).filter { peers[$0]?.topics.contains(topic) ?? false && !isGraylisted($0) }
            if members.count < configuration.dLow {
                let candidates = graftCandidates(topic, excluding: members, now: now)
                for peer in candidates.shuffled(using: &random).prefix(configuration.d - members.count) {
                    members.insert(peer)
                    grafts[peer, default: []].append(topic)
                }
            }
            if members.count > configuration.dHigh {
                // Keep at least D_out outbound peers; drop random others down to D.
                var shuffled = members.shuffled(using: &random)
                let outbound = shuffled.filter { peers[$0]?.outbound ?? false }.prefix(configuration.dOut)
                shuffled.removeAll { outbound.contains($0) }
                let keep = Set(outbound).union(shuffled.prefix(configuration.d - outbound.count))
                for peer in members.subtracting(keep) {
                    prunes[peer, default: []].append(topic)
                    setBackoff(topic, peer, now: now)
                }
                members = keep
            }
            mesh[topic] = members
        }
        // Fanout: expire unused topics, refill the rest.
        for topic in Array(fanout.keys) {
            if let last = lastPublished[topic], now - last > configuration.fanoutTTL {
                fanout[topic] = nil
                lastPublished[topic] = nil
                continue
            }
            var members = fanout[topic]!.filter { peers[$0]?.topics.contains(topic) ?? false }
            if members.count < configuration.d {
                members.formUnion(
                    gossipPeers(in: topic).subtracting(members).shuffled(using: &random)
                        .prefix(configuration.d - members.count))
            }
            fanout[topic] = members
        }
        for (peer, topics) in grafts {
            var rpc = Pubsub_Pb_RPC()
            rpc.control.graft = topics.map { topic in
                var graft = Pubsub_Pb_ControlGraft()
                graft.topicID = topic
                return graft
            }
            if let pruned = prunes.removeValue(forKey: peer) {
                rpc.control.prune = pruned.map { prune($0, for: peer).control.prune[0] }
            }
            actions.append(.send(peer, rpc))
        }
        for (peer, topics) in prunes {
            var rpc = Pubsub_Pb_RPC()
            rpc.control.prune = topics.map { prune($0, for: peer).control.prune[0] }
            actions.append(.send(peer, rpc))
        }
        actions += emitGossip()
        cache.shift()
        return actions
    }

    /// IHAVE for recent messages to D_lazy random peers of each topic outside the mesh.
    private mutating func emitGossip() -> [RouterAction] {
        var actions: [RouterAction] = []
        let topics = Set(mesh.keys).union(fanout.keys)
        for topic in topics {
            let ids = cache.gossipIDs(topic: topic)
            guard !ids.isEmpty else { continue }
            let exclude = (mesh[topic] ?? []).union(fanout[topic] ?? [])
            let candidates = gossipPeers(in: topic).subtracting(exclude).filter { !isGraylisted($0) }
            for peer in candidates.shuffled(using: &random).prefix(configuration.dLazy) {
                var ihave = Pubsub_Pb_ControlIHave()
                ihave.topicID = topic
                ihave.messageIds = ids.prefix(configuration.maxIHaveLength).map { Data($0.bytes) }
                var rpc = Pubsub_Pb_RPC()
                rpc.control.ihave = [ihave]
                actions.append(.send(peer, rpc))
            }
        }
        return actions
    }

    // MARK: - Helpers

    private func gossipPeers(in topic: String) -> Set<PeerID> {
        Set(peers.filter { $0.value.topics.contains(topic) && PubSubProtocol.isGossip($0.value.protocolID) }.map(\.key))
    }

    /// Peers the heartbeat may graft into the topic's mesh: gossipsub peers on
    /// the topic, not yet members, not in backoff, not graylisted.
    func graftCandidates(_ topic: String, excluding members: Set<PeerID>, now: ContinuousClock.Instant) -> Set<PeerID> {
        gossipPeers(in: topic).subtracting(members).filter { !inBackoff(topic, $0, now: now) && !isGraylisted($0) }
    }

    private func inBackoff(_ topic: String, _ peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        guard let until = backoff[topic]?[peer] else { return false }
        return until > now
    }

    private mutating func setBackoff(_ topic: String, _ peer: PeerID, now: ContinuousClock.Instant) {
        backoff[topic, default: [:]][peer] = now + configuration.pruneBackoff
    }

    func messageID(_ message: Pubsub_Pb_Message) -> MessageID {
        if let custom = configuration.messageID {
            return custom(
                MessageFields(
                    topic: message.topic, data: Array(message.data),
                    from: message.hasFrom ? try? PeerID(bytes: message.from) : nil,
                    seqno: message.hasSeqno ? Array(message.seqno) : nil))
        }
        if message.hasFrom || message.hasSeqno { return MessageSigning.defaultID(message) }
        // Unsigned messages: the content decides.
        return MessageID(Array(SHA256.hash(data: Array(message.topic.utf8) + Array(message.data))))
    }

    private func prune(_ topic: String, for peer: PeerID) -> Pubsub_Pb_RPC {
        var prune = Pubsub_Pb_ControlPrune()
        prune.topicID = topic
        if peers[peer]?.protocolID == PubSubProtocol.meshsub11 {
            prune.backoff = UInt64(configuration.pruneBackoff.components.seconds)
        }
        var rpc = Pubsub_Pb_RPC()
        rpc.control.prune = [prune]
        return rpc
    }

    static func graft(_ topic: String) -> Pubsub_Pb_RPC {
        var graft = Pubsub_Pb_ControlGraft()
        graft.topicID = topic
        var rpc = Pubsub_Pb_RPC()
        rpc.control.graft = [graft]
        return rpc
    }

    static func subOpts(_ topic: String, subscribe: Bool) -> Pubsub_Pb_RPC.SubOpts {
        var options = Pubsub_Pb_RPC.SubOpts()
        options.topicid = topic
        options.subscribe = subscribe
        return options
    }
}

/// Errors of the pubsub API.
public enum PubSubError: Error, CustomStringConvertible, Sendable {
    case messageTooLarge(size: Int, limit: Int)
    case stopped

    public var description: String {
        switch self {
        case .messageTooLarge(let size, let limit): return "message of \(size) bytes exceeds the limit of \(limit)"
        case .stopped: return "pubsub is stopped"
        }
    }
}

/// Message ids seen recently, with their time, expired after the TTL.
struct SeenCache {
    private var entries: [MessageID: ContinuousClock.Instant] = [:]

    func contains(_ id: MessageID, now: ContinuousClock.Instant) -> Bool { entries[id] != nil }

    mutating func insert(_ id: MessageID, now: ContinuousClock.Instant) { entries[id] = now }

    mutating func expire(now: ContinuousClock.Instant, ttl: Duration) {
        entries = entries.filter { now - $0.value < ttl }
    }

    var count: Int { entries.count }
}

/// The gossipsub message cache: windows of recent messages, one per heartbeat.
struct MessageCache {
    private var messages: [MessageID: Pubsub_Pb_Message] = [:]
    private var windows: [[(MessageID, String)]]
    private let gossip: Int

    init(history: Int, gossip: Int) {
        windows = Array(repeating: [], count: max(1, history))
        self.gossip = gossip
    }

    mutating func put(_ id: MessageID, _ message: Pubsub_Pb_Message) {
        guard messages[id] == nil else { return }
        messages[id] = message
        windows[0].append((id, message.topic))
    }

    func get(_ id: MessageID) -> Pubsub_Pb_Message? { messages[id] }

    func gossipIDs(topic: String) -> [MessageID] {
        windows.prefix(gossip).flatMap { $0.filter { $0.1 == topic }.map(\.0) }
    }

    mutating func shift() {
        for (id, _) in windows.removeLast() { messages[id] = nil }
        windows.insert([], at: 0)
    }
}
