import Crypto
import Foundation
import Identity

/// The pubsub protocol ids.
public enum PubSubProtocol {
    public static let floodsub = "/floodsub/1.0.0"
    public static let meshsub10 = "/meshsub/1.0.0"
    public static let meshsub11 = "/meshsub/1.1.0"
    /// Gossipsub v1.2: v1.1 and IDONTWANT.
    public static let meshsub12 = "/meshsub/1.2.0"
    /// What we propose when opening a stream, best first.
    public static let gossipsubPreference = [meshsub12, meshsub11, meshsub10, floodsub]
    public static let floodsubPreference = [floodsub]

    static func isGossip(_ id: String) -> Bool { id == meshsub10 || id == meshsub11 || id == meshsub12 }
    /// Speaks v1.1 or later (PRUNE backoff and peer exchange).
    static func hasV11(_ id: String) -> Bool { id == meshsub11 || id == meshsub12 }
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
    /// Mesh peers kept by score when pruning an oversubscribed mesh.
    public var dScore = 4
    public var heartbeatInterval: Duration = .seconds(1)
    public var fanoutTTL: Duration = .seconds(60)
    public var historyLength = 5
    public var historyGossip = 3
    public var seenTTL: Duration = .seconds(120)
    public var pruneBackoff: Duration = .seconds(60)
    public var floodPublish = true
    /// Peer exchange: a PRUNE carries up to `prunePeers` other peers of the topic
    /// (not when the pruned peer scores negative), and we dial the peers in a
    /// PRUNE from a peer scoring at least the accept-PX threshold.
    public var peerExchange = true
    public var prunePeers = 16
    /// Peer scoring v1.1: the score function and what each threshold allows.
    public var scoreParameters = PeerScoreParameters()
    public var scoreThresholds = PeerScoreThresholds()
    /// Every this many heartbeats, a mesh whose median score is below the
    /// opportunistic-graft threshold takes up to `opportunisticGraftPeers`
    /// peers scoring above the median.
    public var opportunisticGraftTicks = 60
    public var opportunisticGraftPeers = 2
    /// A peer that announced a message in IHAVE and got our IWANT must send it
    /// within this time, or it broke its promise (a behaviour penalty).
    public var iwantFollowupTime: Duration = .seconds(3)
    /// A GRAFT this soon after we pruned the peer costs an extra penalty.
    public var graftFloodThreshold: Duration = .seconds(10)
    /// Gossipsub v1.2: on first receipt of a message of at least this many
    /// bytes, tell our other v1.2 mesh peers IDONTWANT so they skip sending it.
    public var idontwantMessageThreshold = 1024
    /// IDONTWANT messages taken from one peer per heartbeat, and ids remembered per peer.
    public var maxIDontWantMessages = 10
    public var maxIDontWantIDs = 5000
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
    /// A peer whose score stays below the graylist threshold this long is
    /// disconnected (graylisting alone only ignores its RPCs). Nil: never.
    public var graylistDisconnectAfter: Duration? = .seconds(30)
    /// An RPC must arrive whole within this time of its first byte; a peer
    /// that starts one and stalls has its stream reset (the buffer is freed).
    public var rpcCompletionTimeout: Duration = .seconds(30)
    /// Bytes all peers together may hold in RPCs still arriving (each reserves
    /// the length its prefix announces). Each peer has one inbound stream, so
    /// one RPC (`maxRPCSize`) is its own budget; this bounds many peers at once.
    public var maxPendingRPCBytes = 64 * 1024 * 1024

    public init() {}
}

/// What the router asks its owner to do.
enum RouterAction: Sendable {
    case send(PeerID, Pubsub_Pb_RPC)
    case deliver(PubSubMessage)
    /// Peer exchange: dial this peer, with the addresses of its signed record
    /// (verified) if the pruner sent one, else those we know.
    case connect(PeerID, record: PeerRecord?, envelope: [UInt8]?)
    /// A peer joined or left a topic (its subscription messages, or its departure).
    case event(PubSubEvent)
}

/// Counters of what was dropped and why.
public struct PubSubCounters: Sendable {
    public var rejected: [RejectReason: Int] = [:]
    public var duplicates = 0
    public var malformedRPCs = 0
    public var droppedOutbound = 0
    public var ignoredIHave = 0
    /// Message ids peers told us IDONTWANT, and messages not forwarded because of them.
    public var receivedIDontWant = 0
    public var skippedForIDontWant = 0
    /// RPCs ignored because their sender was graylisted.
    public var graylistedRPCs = 0
    /// IWANT promises not kept.
    public var brokenPromises = 0
    /// RPC bytes written to peers (frames with their length prefixes).
    public var bytesSent = 0
    /// Inbound streams reset because the peer opened a newer one (one per peer).
    public var replacedInboundStreams = 0
    /// Streams reset because an RPC did not arrive whole in `rpcCompletionTimeout`.
    public var incompleteRPCTimeouts = 0
    /// Streams reset because an announced RPC did not fit `maxPendingRPCBytes`.
    public var refusedOverRPCBudget = 0
    /// Peers disconnected for staying graylisted (`graylistDisconnectAfter`).
    public var graylistDisconnects = 0
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
        /// Message ids we asked this peer for (IWANT) this heartbeat: at most maxIHaveLength.
        var askedThisHeartbeat = 0
        /// Our subscriptions go out again on the next heartbeat: some peers
        /// (py-libp2p 0.8.1) drop what arrives before they have registered us.
        var reannounce = true
        var iwantCounts: [MessageID: Int] = [:]
        /// Messages the peer said IDONTWANT for, with the heartbeat they arrived in.
        var dontWant: [MessageID: Int] = [:]
        var idontwantThisHeartbeat = 0
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
    private(set) var scores: PeerScore
    /// Messages we asked for with IWANT: who promised them, and by when.
    private var promises: [MessageID: [PeerID: ContinuousClock.Instant]] = [:]
    private var heartbeatTicks = 0
    /// The signed peer record we hold for a peer (from identify), passed on in peer exchange.
    var signedRecord: @Sendable (PeerID) -> [UInt8]? = { _ in nil }
    private var seen = SeenCache()
    private var cache: MessageCache
    private var seqno: UInt64
    private var validators: [String: @Sendable (PubSubMessage) -> ValidationResult] = [:]
    private(set) var counters = PubSubCounters()
    private var random: SystemRandomNumberGenerator = .init()

    init(localKey: PrivateKey, configuration: PubSubConfiguration = .init()) {
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.configuration = configuration
        self.cache = MessageCache(history: configuration.historyLength, gossip: configuration.historyGossip)
        self.scores = PeerScore(parameters: configuration.scoreParameters)
        // Start the sequence from the clock so restarts do not reuse numbers.
        self.seqno = UInt64(Date().timeIntervalSince1970 * 1_000_000_000)
    }

    // MARK: - Views

    var knownPeers: [PeerID] { Array(peers.keys) }

    func peers(in topic: String) -> [PeerID] {
        peers.filter { $0.value.topics.contains(topic) }.map(\.key)
    }

    func meshPeers(_ topic: String) -> [PeerID] { Array(mesh[topic] ?? []) }

    func score(of peer: PeerID, now: ContinuousClock.Instant) -> Double { scores.score(of: peer, now: now) }

    func protocolOf(_ peer: PeerID) -> String? { peers[peer]?.protocolID }

    /// How many IDONTWANT ids we keep for `peer`.
    func dontWantCount(of peer: PeerID) -> Int { peers[peer]?.dontWant.count ?? 0 }

    mutating func setValidator(topic: String, _ validator: @escaping @Sendable (PubSubMessage) -> ValidationResult) {
        validators[topic] = validator
    }

    /// How many known peers score below the graylist threshold.
    func graylistedPeerCount(now: ContinuousClock.Instant) -> Int {
        peers.keys.filter { isGraylisted($0, now: now) }.count
    }

    private func isGraylisted(_ peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        score(of: peer, now: now) < configuration.scoreThresholds.graylistThreshold
    }

    private func score(_ peer: PeerID, atLeast threshold: Double, now: ContinuousClock.Instant) -> Bool {
        score(of: peer, now: now) >= threshold
    }

    // MARK: - Peers

    /// A peer with our outbound pubsub stream negotiated for `protocolID`: we tell
    /// it our subscriptions (the protocol of our stream is the one that counts).
    mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool, ip: String? = nil) -> [RouterAction] {
        scores.addPeer(peer, ip: ip)
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
    mutating func notePeer(_ peer: PeerID, protocolID: String, ip: String? = nil) {
        guard peers[peer] == nil else { return }
        scores.addPeer(peer, ip: ip)
        peers[peer] = PeerState(protocolID: protocolID, outbound: false)
    }

    /// Forgets `peer`; returns an unsubscription event for each topic it was on.
    @discardableResult
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        let topics = peers.removeValue(forKey: peer)?.topics ?? []
        scores.removePeer(peer, now: now)
        for topic in Array(mesh.keys) { mesh[topic]?.remove(peer) }
        for topic in Array(fanout.keys) { fanout[topic]?.remove(peer) }
        return topics.sorted().map { .event(.unsubscribed(peer: peer, topic: $0)) }
    }

    // MARK: - Local operations

    mutating func subscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard subscriptions.insert(topic).inserted else { return [] }
        scores.subscribedTopics.insert(topic)
        var actions = announce(topic, subscribe: true)
        guard configuration.router == .gossipsub else { return actions }
        // Join: take fanout peers first (those still scoring at least 0), then others, up to D.
        var members = (fanout.removeValue(forKey: topic) ?? []).filter { score($0, atLeast: 0, now: now) }
        lastPublished[topic] = nil
        let candidates = graftCandidates(topic, excluding: members, now: now)
        members.formUnion(candidates.shuffled(using: &random).prefix(max(0, configuration.d - members.count)))
        mesh[topic] = members
        for peer in members {
            scores.graft(peer, topic: topic, now: now)
            actions.append(.send(peer, Self.graft(topic)))
        }
        return actions
    }

    mutating func unsubscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction] {
        guard subscriptions.remove(topic) != nil else { return [] }
        var actions = announce(topic, subscribe: false)
        for peer in mesh[topic] ?? [] {
            var rpc = Pubsub_Pb_RPC()
            rpc.control.prune = [prune(topic, for: peer, exchange: true, now: now)]
            actions.append(.send(peer, rpc))
            scores.prune(peer, topic: topic, now: now)
            setBackoff(topic, peer, now: now)
        }
        mesh[topic] = nil
        scores.subscribedTopics.remove(topic)
        return actions
    }

    private func announce(_ topic: String, subscribe: Bool) -> [RouterAction] {
        var rpc = Pubsub_Pb_RPC()
        rpc.subscriptions = [Self.subOpts(topic, subscribe: subscribe)]
        return peers.keys.map { .send($0, rpc) }
    }

    /// Publishes `data` on `topic` (signed per the policy).
    mutating func publish(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws -> [RouterAction] {
        try publishMessage(topic: topic, data: data, now: now).actions
    }

    /// Publishes, returning the message as sent (signed) beside the actions.
    mutating func publishMessage(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws
        -> (actions: [RouterAction], message: PubSubMessage)
    {
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
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        let topicPeers = Set(peers(in: topic)).filter { score($0, atLeast: publishThreshold, now: now) }
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
                        gossipPeers(in: topic).subtracting(members).filter { score($0, atLeast: publishThreshold, now: now) }
                            .shuffled(using: &random).prefix(configuration.d - members.count))
                }
                fanout[topic] = members
                lastPublished[topic] = now
                targets.formUnion(members)
            }
        }
        // Our own subscribers do not hear our messages (the chat never echoes its own lines).
        var rpc = Pubsub_Pb_RPC()
        rpc.publish = [message]
        let sent = PubSubMessage(
            message, author: configuration.signaturePolicy == .strictSign ? localPeer : nil, id: id, receivedFrom: nil)
        return (targets.map { RouterAction.send($0, rpc) }, sent)
    }

    // MARK: - Remote input

    /// Handles one RPC from `peer`.
    mutating func handle(_ rpc: Pubsub_Pb_RPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard peers[peer] != nil else { return [] }
        if isGraylisted(peer, now: now) {
            counters.graylistedRPCs += 1
            return []
        }
        var actions: [RouterAction] = []
        for subscription in rpc.subscriptions where subscription.hasTopicid {
            let topic = subscription.topicid
            if subscription.subscribe {
                guard (peers[peer]?.topics.count ?? 0) < configuration.maxTopicsPerPeer else { continue }
                if peers[peer]?.topics.insert(topic).inserted == true {
                    actions.append(.event(.subscribed(peer: peer, topic: topic)))
                }
            } else {
                if peers[peer]?.topics.remove(topic) != nil {
                    actions.append(.event(.unsubscribed(peer: peer, topic: topic)))
                }
                if mesh[topic]?.remove(peer) != nil { scores.prune(peer, topic: topic, now: now) }
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

    /// Counts a malformed RPC against the sender (a behaviour penalty).
    mutating func malformedRPC(from peer: PeerID) {
        counters.malformedRPCs += 1
        scores.addPenalty(peer)
    }

    private mutating func receive(_ message: Pubsub_Pb_Message, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        guard message.hasTopic, !message.topic.isEmpty else {
            counters.rejected[.missingTopic, default: 0] += 1
            scores.addPenalty(peer)
            return []
        }
        let topic = message.topic
        guard message.data.count <= configuration.maxMessageSize else {
            reject(.tooLarge, peer, topic: topic, id: nil, now: now)
            return []
        }
        let id = messageID(message)
        if seen.contains(id) {
            counters.duplicates += 1
            scores.duplicate(id, topic: topic, from: peer, now: now)
            promises[id] = nil
            return []
        }
        let author: PeerID?
        switch MessageSigning.verify(message, policy: configuration.signaturePolicy) {
        case .success(let from): author = from
        case .failure(let reason):
            // Not remembered: anyone can forge a bad copy of a genuine message's id.
            reject(reason, peer, topic: topic, id: nil, now: now)
            return []
        }
        seen.insert(id, now: now)
        promises[id] = nil
        var actions = idontwant(id, size: message.data.count, topic: topic, from: peer, author: author)
        let delivered = PubSubMessage(message, author: author, id: id, receivedFrom: peer)
        if let validator = validators[message.topic] {
            switch validator(delivered) {
            case .accept: break
            case .reject:
                reject(.validatorRejected, peer, topic: topic, id: id, now: now)
                return []
            case .ignore:
                scores.ignore(id, from: peer, now: now)
                return []
            }
        }
        // Our own messages coming back are not delivered again.
        if author == localPeer { return [] }
        scores.deliverFirst(id, topic: topic, from: peer, now: now)
        cache.put(id, message)
        if subscriptions.contains(message.topic) { actions.append(.deliver(delivered)) }
        actions += forward(message, id: id, from: peer, author: author, now: now)
        return actions
    }

    /// Gossipsub v1.2: a large message seen for the first time; our other v1.2
    /// mesh peers need not send it to us (sent before validation, as the spec asks).
    private func idontwant(_ id: MessageID, size: Int, topic: String, from source: PeerID, author: PeerID?) -> [RouterAction] {
        guard configuration.router == .gossipsub, size >= configuration.idontwantMessageThreshold,
            let members = mesh[topic]
        else { return [] }
        var rpc = Pubsub_Pb_RPC()
        var control = Pubsub_Pb_ControlIDontWant()
        control.messageIds = [Data(id.bytes)]
        rpc.control.idontwant = [control]
        return members.filter { $0 != source && $0 != author && peers[$0]?.protocolID == PubSubProtocol.meshsub12 }
            .map { .send($0, rpc) }
    }

    /// An invalid message: counted, and P4 for the sender on its topic.
    private mutating func reject(_ reason: RejectReason, _ peer: PeerID, topic: String, id: MessageID?, now: ContinuousClock.Instant) {
        counters.rejected[reason, default: 0] += 1
        scores.reject(id, topic: topic, from: peer, remember: id != nil, now: now)
    }

    private mutating func forward(
        _ message: Pubsub_Pb_Message, id: MessageID, from source: PeerID, author: PeerID?, now: ContinuousClock.Instant
    ) -> [RouterAction] {
        let topic = message.topic
        var targets: Set<PeerID> = []
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        for (peer, state) in peers where state.topics.contains(topic) {
            if configuration.router == .floodsub || state.protocolID == PubSubProtocol.floodsub,
                score(peer, atLeast: publishThreshold, now: now)
            {
                targets.insert(peer)
            }
        }
        if configuration.router == .gossipsub {
            targets.formUnion(mesh[topic] ?? fanout[topic] ?? [])
        }
        targets.remove(source)
        if let author { targets.remove(author) }
        targets = targets.filter { !isGraylisted($0, now: now) }
        for peer in targets where peers[peer]?.dontWant[id] != nil {
            targets.remove(peer)
            counters.skippedForIDontWant += 1
        }
        var rpc = Pubsub_Pb_RPC()
        rpc.publish = [message]
        return targets.map { .send($0, rpc) }
    }

    // MARK: - Gossipsub control

    private mutating func handleControl(_ control: Pubsub_Pb_ControlMessage, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        var reply = Pubsub_Pb_ControlMessage()
        var messages: [Pubsub_Pb_Message] = []
        var actions: [RouterAction] = []
        let gossipAllowed = score(peer, atLeast: configuration.scoreThresholds.gossipThreshold, now: now)
        // IHAVE: ask for what we have not seen, within limits; the peer promises to send it.
        var wanted: [Data] = []
        for ihave in control.ihave {
            peers[peer]?.ihaveThisHeartbeat += 1
            guard gossipAllowed, (peers[peer]?.ihaveThisHeartbeat ?? 0) <= configuration.maxIHaveMessages,
                subscriptions.contains(ihave.topicID)
            else {
                counters.ignoredIHave += 1
                continue
            }
            for raw in ihave.messageIds.prefix(configuration.maxIHaveLength) {
                guard (peers[peer]?.askedThisHeartbeat ?? 0) < configuration.maxIHaveLength else { break }
                let id = MessageID(Array(raw))
                guard !seen.contains(id), promises[id]?[peer] == nil else { continue }
                wanted.append(raw)
                peers[peer]?.askedThisHeartbeat += 1
                promises[id, default: [:]][peer] = now + configuration.iwantFollowupTime
            }
        }
        if !wanted.isEmpty {
            var iwant = Pubsub_Pb_ControlIWant()
            iwant.messageIds = wanted
            reply.iwant = [iwant]
        }
        // IDONTWANT: remember (bounded, for the gossip window) what not to send this peer.
        for idontwant in control.idontwant {
            peers[peer]?.idontwantThisHeartbeat += 1
            guard (peers[peer]?.idontwantThisHeartbeat ?? 0) <= configuration.maxIDontWantMessages else { break }
            for raw in idontwant.messageIds.prefix(configuration.maxIHaveLength) {
                counters.receivedIDontWant += 1
                guard (peers[peer]?.dontWant.count ?? 0) < configuration.maxIDontWantIDs else { break }
                peers[peer]?.dontWant[MessageID(Array(raw))] = heartbeatTicks
            }
        }
        // IWANT: answer from the cache, a bounded number of times per message and peer.
        for iwant in control.iwant where gossipAllowed {
            for raw in iwant.messageIds.prefix(configuration.maxIHaveLength) {
                let id = MessageID(Array(raw))
                guard let message = cache.get(id), peers[peer]?.dontWant[id] == nil else { continue }
                let count = peers[peer]?.iwantCounts[id, default: 0] ?? 0
                guard count < configuration.gossipRetransmission else { continue }
                peers[peer]?.iwantCounts[id] = count + 1
                messages.append(message)
            }
        }
        // GRAFT: accept into the mesh unless the peer scores negative, is backing
        // off, or the mesh is full (outbound peers are always welcome).
        for graft in control.graft {
            let topic = graft.topicID
            // Not our topic: ignored (answering would let anyone make us send).
            guard subscriptions.contains(topic), mesh[topic]?.contains(peer) != true else { continue }
            if let until = backoff[topic]?[peer], until > now {
                // Grafting during backoff is misbehaviour (P7), doubly so right after the prune.
                scores.addPenalty(peer)
                if until - configuration.pruneBackoff + configuration.graftFloodThreshold > now {
                    scores.addPenalty(peer)
                }
                reply.prune.append(prune(topic, for: peer, exchange: false, now: now))
                setBackoff(topic, peer, now: now)
                continue
            }
            if score(of: peer, now: now) < 0 {
                reply.prune.append(prune(topic, for: peer, exchange: false, now: now))
                setBackoff(topic, peer, now: now)
                continue
            }
            if (mesh[topic]?.count ?? 0) >= configuration.dHigh && !(peers[peer]?.outbound ?? false) {
                reply.prune.append(prune(topic, for: peer, exchange: true, now: now))
                setBackoff(topic, peer, now: now)
                continue
            }
            mesh[topic, default: []].insert(peer)
            scores.graft(peer, topic: topic, now: now)
        }
        // PRUNE: leave the mesh, back off, and dial the exchanged peers if the pruner is trusted.
        for prune in control.prune {
            if mesh[prune.topicID]?.remove(peer) != nil { scores.prune(peer, topic: prune.topicID, now: now) }
            let seconds = prune.hasBackoff ? min(prune.backoff, 3600) : 0
            let duration = seconds > 0 ? Duration.seconds(Int64(seconds)) : configuration.pruneBackoff
            backoff[prune.topicID, default: [:]][peer] = now + duration
            guard configuration.peerExchange, !prune.peers.isEmpty,
                score(peer, atLeast: configuration.scoreThresholds.acceptPXThreshold, now: now)
            else { continue }
            for info in prune.peers.prefix(configuration.prunePeers) {
                guard let exchanged = try? PeerID(bytes: Array(info.peerID)), exchanged != localPeer,
                    peers[exchanged] == nil
                else { continue }
                // A record that does not verify, or names another peer, is dropped (the peer id still counts).
                var record: PeerRecord?
                if info.hasSignedPeerRecord, let opened = try? PeerRecord.open(Array(info.signedPeerRecord)),
                    opened.peerID == exchanged
                {
                    record = opened
                }
                actions.append(.connect(exchanged, record: record, envelope: record.map { _ in Array(info.signedPeerRecord) }))
            }
        }
        if !reply.iwant.isEmpty || !reply.prune.isEmpty || !messages.isEmpty {
            var rpc = Pubsub_Pb_RPC()
            if !reply.iwant.isEmpty || !reply.prune.isEmpty { rpc.control = reply }
            rpc.publish = messages
            actions.append(.send(peer, rpc))
        }
        return actions
    }

    // MARK: - Heartbeat

    /// Mesh maintenance by score, fanout expiry, gossip emission, cache shifting,
    /// score decay and broken IWANT promises.
    mutating func heartbeat(now: ContinuousClock.Instant) -> [RouterAction] {
        heartbeatTicks += 1
        var grafts: [PeerID: [String]] = [:]
        var prunes: [PeerID: [Pubsub_Pb_ControlPrune]] = [:]
        var actions: [RouterAction] = []
        scores.refresh(now: now, recordTTL: configuration.seenTTL)
        for (id, promised) in promises {
            let broken = promised.filter { $0.value <= now }
            guard !broken.isEmpty else { continue }
            for peer in broken.keys {
                scores.addPenalty(peer)
                counters.brokenPromises += 1
            }
            promises[id] = promised.count == broken.count ? nil : promised.filter { $0.value > now }
        }
        for peer in Array(peers.keys) {
            peers[peer]?.ihaveThisHeartbeat = 0
            peers[peer]?.askedThisHeartbeat = 0
            peers[peer]?.idontwantThisHeartbeat = 0
            if let dontWant = peers[peer]?.dontWant, !dontWant.isEmpty {
                let oldest = heartbeatTicks - configuration.historyGossip
                peers[peer]?.dontWant = dontWant.filter { $0.value > oldest }
            }
            if peers[peer]?.reannounce == true {
                peers[peer]?.reannounce = false
                if !subscriptions.isEmpty {
                    var rpc = Pubsub_Pb_RPC()
                    rpc.subscriptions = subscriptions.sorted().map { Self.subOpts($0, subscribe: true) }
                    actions.append(.send(peer, rpc))
                }
            }
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
        // Scores do not change within one heartbeat: compute them once.
        var scoreCache: [PeerID: Double] = [:]
        func scoreOf(_ peer: PeerID) -> Double {
            if let known = scoreCache[peer] { return known }
            let value = scores.score(of: peer, now: now)
            scoreCache[peer] = value
            return value
        }
        func isOutbound(_ peer: PeerID) -> Bool { peers[peer]?.outbound ?? false }
        for topic in subscriptions {
            let before = mesh[topic] ?? []
            var members = before.filter { peers[$0]?.topics.contains(topic) ?? false }
            var pruned: [PeerID: Bool] = [:]  // peer -> with peer exchange
            // Peers scoring negative leave the mesh (without peer exchange).
            for peer in members where scoreOf(peer) < 0 {
                members.remove(peer)
                pruned[peer] = false
            }
            if members.count < configuration.dLow {
                let candidates = graftCandidates(topic, excluding: members, now: now)
                members.formUnion(candidates.shuffled(using: &random).prefix(configuration.d - members.count))
            }
            if members.count > configuration.dHigh {
                // Keep the D_score best, fill to D at random, and keep at least D_out outbound peers.
                let byScore = members.shuffled(using: &random).sorted { scoreOf($0) > scoreOf($1) }
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
                let sorted = members.map(scoreOf).sorted()
                let median = sorted[sorted.count / 2]
                if median < configuration.scoreThresholds.opportunisticGraftThreshold {
                    let better = graftCandidates(topic, excluding: members, now: now).filter { scoreOf($0) > median }
                    members.formUnion(better.shuffled(using: &random).prefix(configuration.opportunisticGraftPeers))
                }
            }
            for peer in members.subtracting(before) {
                scores.graft(peer, topic: topic, now: now)
                grafts[peer, default: []].append(topic)
            }
            mesh[topic] = members
            for (peer, exchange) in pruned {
                prunes[peer, default: []].append(prune(topic, for: peer, exchange: exchange, now: now))
                scores.prune(peer, topic: topic, now: now)
                setBackoff(topic, peer, now: now)
            }
            // Peers that left the topic or the connection are simply gone from the mesh.
            for peer in before.subtracting(members) where pruned[peer] == nil {
                scores.prune(peer, topic: topic, now: now)
            }
        }
        // Fanout: expire unused topics, drop peers below the publish threshold, refill the rest.
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        for topic in Array(fanout.keys) {
            if let last = lastPublished[topic], now - last > configuration.fanoutTTL {
                fanout[topic] = nil
                lastPublished[topic] = nil
                continue
            }
            var members = fanout[topic]!.filter {
                peers[$0]?.topics.contains(topic) ?? false && scoreOf($0) >= publishThreshold
            }
            if members.count < configuration.d {
                members.formUnion(
                    gossipPeers(in: topic).subtracting(members).filter { scoreOf($0) >= publishThreshold }
                        .shuffled(using: &random).prefix(configuration.d - members.count))
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
            if let pruned = prunes.removeValue(forKey: peer) { rpc.control.prune = pruned }
            actions.append(.send(peer, rpc))
        }
        for (peer, pruned) in prunes {
            var rpc = Pubsub_Pb_RPC()
            rpc.control.prune = pruned
            actions.append(.send(peer, rpc))
        }
        actions += emitGossip(now: now)
        cache.shift()
        return actions
    }

    /// IHAVE for recent messages to D_lazy random peers of each topic outside the mesh.
    private mutating func emitGossip(now: ContinuousClock.Instant) -> [RouterAction] {
        var actions: [RouterAction] = []
        let topics = Set(mesh.keys).union(fanout.keys)
        for topic in topics {
            let ids = cache.gossipIDs(topic: topic)
            guard !ids.isEmpty else { continue }
            let exclude = (mesh[topic] ?? []).union(fanout[topic] ?? [])
            let candidates = gossipPeers(in: topic).subtracting(exclude).filter {
                score($0, atLeast: configuration.scoreThresholds.gossipThreshold, now: now)
            }
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
    /// the topic, not yet members, not in backoff, scoring at least 0.
    func graftCandidates(_ topic: String, excluding members: Set<PeerID>, now: ContinuousClock.Instant) -> Set<PeerID> {
        gossipPeers(in: topic).subtracting(members).filter { !inBackoff(topic, $0, now: now) && score($0, atLeast: 0, now: now) }
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

    /// A PRUNE for `peer`. Gossipsub v1.1 peers get the backoff and, with
    /// `exchange`, other mesh peers of the topic that score at least 0.
    private mutating func prune(_ topic: String, for peer: PeerID, exchange: Bool, now: ContinuousClock.Instant)
        -> Pubsub_Pb_ControlPrune
    {
        var prune = Pubsub_Pb_ControlPrune()
        prune.topicID = topic
        guard PubSubProtocol.hasV11(peers[peer]?.protocolID ?? "") else { return prune }
        prune.backoff = UInt64(configuration.pruneBackoff.components.seconds)
        if exchange && configuration.peerExchange {
            let others = (mesh[topic] ?? []).subtracting([peer]).filter { score($0, atLeast: 0, now: now) }
            prune.peers = others.shuffled(using: &random).prefix(configuration.prunePeers).map { other in
                var info = Pubsub_Pb_PeerInfo()
                info.peerID = Data(other.bytes)
                if let record = signedRecord(other) { info.signedPeerRecord = Data(record) }
                return info
            }
        }
        return prune
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
    /// An inbound RPC announced more bytes than the budget for RPCs in transit has left.
    case rpcBudgetExceeded(announced: Int, available: Int)

    public var description: String {
        switch self {
        case .messageTooLarge(let size, let limit): return "message of \(size) bytes exceeds the limit of \(limit)"
        case .stopped: return "pubsub is stopped"
        case .rpcBudgetExceeded(let announced, let available):
            return "an RPC of \(announced) bytes does not fit the \(available) bytes left for RPCs in transit"
        }
    }
}

/// Message ids seen recently, with their time, expired after the TTL.
struct SeenCache {
    private var entries: [MessageID: ContinuousClock.Instant] = [:]

    func contains(_ id: MessageID) -> Bool { entries[id] != nil }

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
