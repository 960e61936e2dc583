import Identity

/// A pubsub RPC as the routers see it: our own types, decoded from and encoded
/// to the wire's protobuf by `PubSubCodec` (the routers never touch generated code).
struct PubSubRPC: Sendable, Equatable {
    var subscriptions: [Subscription] = []
    /// The `publish` field: messages published or forwarded.
    var messages: [RawMessage] = []
    var control: [ControlAction] = []

    init(subscriptions: [Subscription] = [], messages: [RawMessage] = [], control: [ControlAction] = []) {
        self.subscriptions = subscriptions
        self.messages = messages
        self.control = control
    }
}

/// A peer joining (`subscribe`) or leaving a topic.
struct Subscription: Sendable, Hashable {
    var topic: String
    var subscribe: Bool
}

/// A message as it travels, before its signature is checked. Absent optional
/// fields stay nil: they are signed (and so re-encoded) as they came.
struct RawMessage: Sendable, Hashable {
    var from: [UInt8]?
    var data: [UInt8]
    var seqno: [UInt8]?
    /// Empty when the message named no topic (refused on receipt).
    var topic: String
    var signature: [UInt8]?
    var key: [UInt8]?

    init(
        from: [UInt8]? = nil, data: [UInt8], seqno: [UInt8]? = nil, topic: String, signature: [UInt8]? = nil,
        key: [UInt8]? = nil
    ) {
        self.from = from
        self.data = data
        self.seqno = seqno
        self.topic = topic
        self.signature = signature
        self.key = key
    }
}

/// A gossipsub control message (as rust-libp2p's `ControlAction`).
enum ControlAction: Sendable, Equatable {
    /// We have these messages of `topic`.
    case ihave(topic: String, messageIDs: [MessageID])
    /// Send us these messages.
    case iwant(messageIDs: [MessageID])
    /// Add us to your mesh of `topic`.
    case graft(topic: String)
    /// You are out of our mesh of `topic`: back off this long (nil: the
    /// receiver's default; v1.0 peers get none), and maybe try these peers.
    case prune(topic: String, peers: [PeerExchange], backoff: Duration?)
    /// Gossipsub v1.2: do not send us these messages.
    case idontwant(messageIDs: [MessageID])
}

/// A peer offered in a PRUNE (peer exchange), with its signed peer record as
/// it came (an envelope, verified by the router before use).
struct PeerExchange: Sendable, Equatable {
    var peer: PeerID
    var signedRecord: [UInt8]?
}

/// What the router asks its owner to do.
enum RouterAction: Sendable {
    case send(PeerID, PubSubRPC)
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
