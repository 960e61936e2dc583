import Crypto
import Foundation
import Identity

/// The interface the service drives, one router per node: `FloodsubRouter`
/// or `GossipsubRouter` (gossipsub v1.0, v1.1 and v1.2, which also talks
/// floodsub to floodsub-only peers). Sans-IO: fed peers, RPCs (our own types;
/// `PubSubCodec` converts the wire's protobuf), local publishes and heartbeats
/// with the current time, a router returns RPCs to send, messages to deliver,
/// peers to dial and events. What both share is `RouterCore`.
protocol PubSubRouter: Sendable {
    var core: RouterCore { get set }

    mutating func subscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction]
    mutating func unsubscribe(_ topic: String, now: ContinuousClock.Instant) -> [RouterAction]
    /// Forgets `peer`; returns an unsubscription event for each topic it was on.
    @discardableResult
    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction]
    /// Publishes, returning the message as sent (signed) beside the actions.
    mutating func publishMessage(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws
        -> (actions: [RouterAction], message: PubSubMessage)
    /// Handles one RPC from `peer`.
    mutating func handle(_ rpc: PubSubRPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction]
    mutating func heartbeat(now: ContinuousClock.Instant) -> [RouterAction]
    /// Our mesh of `topic` (floodsub has none).
    func meshPeers(_ topic: String) -> [PeerID]
    /// The peers of all our meshes.
    var meshMembers: Set<PeerID> { get }
}

/// The router `configuration.router` names.
func makeRouter(localKey: PrivateKey, configuration: PubSubConfiguration = .init()) -> any PubSubRouter {
    switch configuration.router {
    case .floodsub: return FloodsubRouter(localKey: localKey, configuration: configuration)
    case .gossipsub: return GossipsubRouter(localKey: localKey, configuration: configuration)
    }
}

extension PubSubRouter {
    var configuration: PubSubConfiguration { core.configuration }
    var localPeer: PeerID { core.localPeer }
    var counters: PubSubCounters { core.counters }
    var subscriptions: Set<String> { core.subscriptions }
    var knownPeers: [PeerID] { Array(core.peers.keys) }

    /// The signed peer record we hold for a peer (from identify), passed on in peer exchange.
    var signedRecord: @Sendable (PeerID) -> [UInt8]? {
        get { core.signedRecord }
        set { core.signedRecord = newValue }
    }

    func peers(in topic: String) -> [PeerID] { core.peers(in: topic) }

    func score(of peer: PeerID, now: ContinuousClock.Instant) -> Double { core.scores.score(of: peer, now: now) }

    func protocolOf(_ peer: PeerID) -> String? { core.peers[peer]?.protocolID }

    /// How many known peers score below the graylist threshold.
    func graylistedPeerCount(now: ContinuousClock.Instant) -> Int {
        core.peers.keys.filter { core.isGraylisted($0, now: now) }.count
    }

    func messageID(_ message: RawMessage) -> MessageID { core.messageID(message) }

    mutating func setValidator(topic: String, _ validator: @escaping @Sendable (PubSubMessage) -> ValidationResult) {
        core.validators[topic] = validator
    }

    /// A peer with our outbound pubsub stream negotiated for `protocolID`: we tell
    /// it our subscriptions (the protocol of our stream is the one that counts).
    mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool, ip: String? = nil) -> [RouterAction] {
        core.addPeer(peer, protocolID: protocolID, outbound: outbound, ip: ip)
    }

    /// A peer whose inbound pubsub stream arrived before we attached: remember it
    /// so its subscriptions are not lost.
    mutating func notePeer(_ peer: PeerID, protocolID: String, ip: String? = nil) {
        core.notePeer(peer, protocolID: protocolID, ip: ip)
    }

    /// Publishes `data` on `topic` (signed per the policy).
    mutating func publish(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws -> [RouterAction] {
        try publishMessage(topic: topic, data: data, now: now).actions
    }

    /// Counts an RPC dropped because the peer's send queue was full.
    mutating func countDroppedOutbound() { core.counters.droppedOutbound += 1 }


    /// Counts a malformed RPC against the sender (a behaviour penalty).
    mutating func malformedRPC(from peer: PeerID) {
        core.counters.malformedRPCs += 1
        core.scores.addPenalty(peer)
    }
}

/// What floodsub and gossipsub share: the peers and the topics they announced,
/// our subscriptions, seen messages, signing and validation, peer scores
/// (floodsub too graylists and keeps publishing from low scorers) and counters.
struct RouterCore: Sendable {
    struct PeerState: Sendable {
        var protocolID: String
        var topics: Set<String> = []
        var outbound: Bool
        /// Our subscriptions go out again on the next heartbeat: some peers
        /// (py-libp2p 0.8.1) drop what arrives before they have registered us.
        var reannounce = true
    }

    /// What became of a received message at admission.
    enum Admission {
        /// Dropped (no topic, too large, bad signature): counted and penalised.
        case dropped
        case duplicate(MessageID)
        /// Seen for the first time, its signature good.
        case fresh(MessageID, author: PeerID?)
    }

    let configuration: PubSubConfiguration
    let localPeer: PeerID
    private let localKey: PrivateKey
    var peers: [PeerID: PeerState] = [:]
    var subscriptions: Set<String> = []
    var scores: PeerScore
    var signedRecord: @Sendable (PeerID) -> [UInt8]? = { _ in nil }
    var seen = SeenCache()
    var validators: [String: @Sendable (PubSubMessage) -> ValidationResult] = [:]
    var counters = PubSubCounters()
    private var seqno: UInt64

    init(localKey: PrivateKey, configuration: PubSubConfiguration) {
        self.localKey = localKey
        self.localPeer = PeerID(publicKey: localKey.publicKey)
        self.configuration = configuration
        self.scores = PeerScore(parameters: configuration.scoreParameters)
        // Start the sequence from the clock so restarts do not reuse numbers.
        self.seqno = Self.unixNanoseconds(Date())
    }

    // MARK: - Peers

    func peers(in topic: String) -> [PeerID] {
        peers.filter { $0.value.topics.contains(topic) }.map(\.key)
    }

    func isGraylisted(_ peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        scores.score(of: peer, now: now) < configuration.scoreThresholds.graylistThreshold
    }

    func score(_ peer: PeerID, atLeast threshold: Double, now: ContinuousClock.Instant) -> Bool {
        scores.score(of: peer, now: now) >= threshold
    }

    mutating func addPeer(_ peer: PeerID, protocolID: String, outbound: Bool, ip: String?) -> [RouterAction] {
        scores.addPeer(peer, ip: ip)
        if peers[peer] == nil {
            peers[peer] = PeerState(protocolID: protocolID, outbound: outbound)
        } else {
            peers[peer]?.protocolID = protocolID
            peers[peer]?.outbound = outbound
        }
        guard !subscriptions.isEmpty else { return [] }
        return [.send(peer, ourSubscriptions)]
    }

    mutating func notePeer(_ peer: PeerID, protocolID: String, ip: String?) {
        guard peers[peer] == nil else { return }
        scores.addPeer(peer, ip: ip)
        peers[peer] = PeerState(protocolID: protocolID, outbound: false)
    }

    mutating func removePeer(_ peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        let topics = peers.removeValue(forKey: peer)?.topics ?? []
        scores.removePeer(peer, now: now)
        return topics.sorted().map { .event(.unsubscribed(peer: peer, topic: $0)) }
    }

    // MARK: - Subscriptions

    /// All our subscriptions, for a peer that has not heard them.
    var ourSubscriptions: PubSubRPC {
        PubSubRPC(subscriptions: subscriptions.sorted().map { Subscription(topic: $0, subscribe: true) })
    }

    /// Our (un)subscription told to every peer.
    func announce(_ topic: String, subscribe: Bool) -> [RouterAction] {
        let rpc = PubSubRPC(subscriptions: [Subscription(topic: topic, subscribe: subscribe)])
        return peers.keys.map { .send($0, rpc) }
    }

    /// Whether an RPC from `peer` is read at all: the peer is known and not graylisted.
    mutating func accepts(from peer: PeerID, now: ContinuousClock.Instant) -> Bool {
        guard peers[peer] != nil else { return false }
        if isGraylisted(peer, now: now) {
            counters.graylistedRPCs += 1
            return false
        }
        return true
    }

    /// The peer's subscription changes (bounded by `maxTopicsPerPeer`), as events.
    mutating func applySubscriptions(_ subscriptions: [Subscription], from peer: PeerID) -> [RouterAction] {
        var actions: [RouterAction] = []
        for subscription in subscriptions {
            let topic = subscription.topic
            if subscription.subscribe {
                guard (peers[peer]?.topics.count ?? 0) < configuration.maxTopicsPerPeer else { continue }
                if peers[peer]?.topics.insert(topic).inserted == true {
                    actions.append(.event(.subscribed(peer: peer, topic: topic)))
                }
            } else if peers[peer]?.topics.remove(topic) != nil {
                actions.append(.event(.unsubscribed(peer: peer, topic: topic)))
            }
        }
        return actions
    }

    // MARK: - Messages

    static func unixNanoseconds(_ date: Date) -> UInt64 {
        UInt64(max(0, date.timeIntervalSince1970) * 1_000_000_000)
    }

    /// Builds, signs (per the policy) and remembers a message we publish.
    mutating func makeMessage(topic: String, data: [UInt8], now: ContinuousClock.Instant) throws
        -> (message: RawMessage, id: MessageID)
    {
        guard data.count <= configuration.maxMessageSize else {
            throw PubSubError.messageTooLarge(size: data.count, limit: configuration.maxMessageSize)
        }
        var message = RawMessage(data: data, topic: topic)
        if configuration.signaturePolicy == .strictSign {
            // The send time in Unix nanoseconds, one more than the last at least: signed
            // with the message, it tells a receiver when the line was sent (history shows it,
            // so a line replayed later is not taken for a recent one: issue 25). go-libp2p
            // seeds it with its start time and counts up; both are unique and increasing per
            // author, as go's seqno validator wants, and opaque to every other implementation.
            seqno = max(seqno &+ 1, Self.unixNanoseconds(Date()))
            message.from = localPeer.bytes
            message.seqno = withUnsafeBytes(of: seqno.bigEndian) { Array($0) }
            try MessageSigning.sign(&message, with: localKey)
        }
        let id = messageID(message)
        seen.insert(id, now: now)
        return (message, id)
    }

    /// Sends of our message to `targets`, and the message as delivered locally.
    func published(_ message: RawMessage, id: MessageID, to targets: Set<PeerID>) -> (actions: [RouterAction], message: PubSubMessage) {
        // Our own subscribers do not hear our messages (the chat never echoes its own lines).
        let rpc = PubSubRPC(messages: [message])
        let sent = PubSubMessage(
            message, author: configuration.signaturePolicy == .strictSign ? localPeer : nil, id: id, receivedFrom: nil)
        return (targets.map { RouterAction.send($0, rpc) }, sent)
    }

    /// The first checks of a received message: topic, size, duplicates, signature.
    mutating func admit(_ message: RawMessage, from peer: PeerID, now: ContinuousClock.Instant) -> Admission {
        guard !message.topic.isEmpty else {
            counters.rejected[.missingTopic, default: 0] += 1
            scores.addPenalty(peer)
            return .dropped
        }
        let topic = message.topic
        guard message.data.count <= configuration.maxMessageSize else {
            reject(.tooLarge, peer, topic: topic, id: nil, now: now)
            return .dropped
        }
        let id = messageID(message)
        if seen.contains(id) {
            counters.duplicates += 1
            scores.duplicate(id, topic: topic, from: peer, now: now)
            return .duplicate(id)
        }
        switch MessageSigning.verify(message, policy: configuration.signaturePolicy) {
        case .success(let author):
            seen.insert(id, now: now)
            return .fresh(id, author: author)
        case .failure(let reason):
            // Not remembered: anyone can forge a bad copy of a genuine message's id.
            reject(reason, peer, topic: topic, id: nil, now: now)
            return .dropped
        }
    }

    /// The topic's validator on an admitted message; the message to deliver and
    /// forward, or nil (rejected, ignored, or our own coming back).
    mutating func validate(
        _ message: RawMessage, id: MessageID, author: PeerID?, from peer: PeerID, now: ContinuousClock.Instant
    ) -> PubSubMessage? {
        let delivered = PubSubMessage(message, author: author, id: id, receivedFrom: peer)
        if let validator = validators[message.topic] {
            switch validator(delivered) {
            case .accept: break
            case .reject:
                reject(.validatorRejected, peer, topic: message.topic, id: id, now: now)
                return nil
            case .ignore:
                scores.ignore(id, from: peer, now: now)
                return nil
            }
        }
        // Our own messages coming back are not delivered again.
        if author == localPeer { return nil }
        scores.deliverFirst(id, topic: message.topic, from: peer, now: now)
        return delivered
    }

    /// An invalid message: counted, and P4 for the sender on its topic.
    mutating func reject(_ reason: RejectReason, _ peer: PeerID, topic: String, id: MessageID?, now: ContinuousClock.Instant) {
        counters.rejected[reason, default: 0] += 1
        scores.reject(id, topic: topic, from: peer, remember: id != nil, now: now)
    }

    /// Peers on `topic` we flood to (only those speaking floodsub, if
    /// `floodsubOnly`), scoring at least the publish threshold.
    func floodTargets(_ topic: String, floodsubOnly: Bool, now: ContinuousClock.Instant) -> Set<PeerID> {
        let publishThreshold = configuration.scoreThresholds.publishThreshold
        var targets: Set<PeerID> = []
        for (peer, state) in peers where state.topics.contains(topic) {
            if !floodsubOnly || state.protocolID == PubSubProtocol.floodsub, score(peer, atLeast: publishThreshold, now: now) {
                targets.insert(peer)
            }
        }
        return targets
    }

    /// Who a received message is forwarded to: `targets` but its source, its
    /// author and graylisted peers.
    func forwardable(_ targets: Set<PeerID>, source: PeerID, author: PeerID?, now: ContinuousClock.Instant) -> Set<PeerID> {
        var targets = targets
        targets.remove(source)
        if let author { targets.remove(author) }
        return targets.filter { !isGraylisted($0, now: now) }
    }

    func messageID(_ message: RawMessage) -> MessageID {
        if let custom = configuration.messageID {
            return custom(
                MessageFields(
                    topic: message.topic, data: message.data, from: message.from.flatMap { try? PeerID(bytes: $0) },
                    seqno: message.seqno))
        }
        if message.from != nil || message.seqno != nil { return MessageSigning.defaultID(message) }
        // Unsigned messages: the content decides.
        return MessageID(Array(SHA256.hash(data: Array(message.topic.utf8) + message.data)))
    }

    // MARK: - Heartbeat

    /// Our subscriptions to the peers due to hear them again.
    mutating func reannounce() -> [RouterAction] {
        var actions: [RouterAction] = []
        for peer in Array(peers.keys) where peers[peer]?.reannounce == true {
            peers[peer]?.reannounce = false
            if !subscriptions.isEmpty { actions.append(.send(peer, ourSubscriptions)) }
        }
        return actions
    }
}
