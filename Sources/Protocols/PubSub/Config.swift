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
    /// A peer's inbound stream that a newer one replaced (the peer moved to
    /// another connection, say a direct one after a hole punch) is still read
    /// for this long, so that what the peer sent on it before moving arrives;
    /// then it is reset. Zero: reset at once.
    public var replacedStreamDrainTime: Duration = .seconds(5)
    /// Bytes all peers together may hold in RPCs still arriving (each reserves
    /// the length its prefix announces). Each peer has one inbound stream, so
    /// one RPC (`maxRPCSize`) is its own budget; this bounds many peers at once.
    public var maxPendingRPCBytes = 64 * 1024 * 1024

    public init() {}
}


extension PubSubConfiguration {
    /// Checks the constraints of the gossipsub spec (v1.0 parameters, v1.1
    /// "Score Thresholds" and D_out) and our own bounds; throws the first broken.
    public func validate() throws(PubSubConfigurationError) {
        typealias Constraint = PubSubConfigurationError.Constraint
        let thresholds = scoreThresholds
        let checks: [(Constraint, Bool, String)] = [
            (.dLowAtMostD, dLow <= d, "D_lo = \(dLow), D = \(d)"),
            (.dAtMostDHigh, d <= dHigh, "D = \(d), D_hi = \(dHigh)"),
            (.dOutBelowDLow, dOut < dLow, "D_out = \(dOut), D_lo = \(dLow)"),
            (.dOutAtMostHalfD, dOut <= d / 2, "D_out = \(dOut), D = \(d)"),
            (.dScoreAtMostD, dScore <= d, "D_score = \(dScore), D = \(d)"),
            (.degreesNotNegative, min(dOut, dScore, dLazy) >= 0, "D_out = \(dOut), D_score = \(dScore), D_lazy = \(dLazy)"),
            (.historyLengthPositive, historyLength >= 1, "history_length = \(historyLength)"),
            (.historyGossipWithinHistory, (0...max(0, historyLength)).contains(historyGossip),
             "history_gossip = \(historyGossip), history_length = \(historyLength)"),
            (.heartbeatPositive, heartbeatInterval > .zero, "heartbeat_interval = \(heartbeatInterval)"),
            (.fanoutTTLPositive, fanoutTTL > .zero, "fanout_ttl = \(fanoutTTL)"),
            (.seenTTLPositive, seenTTL > .zero, "seen_ttl = \(seenTTL)"),
            (.pruneBackoffWholeSeconds, pruneBackoff >= .seconds(1), "prune_backoff = \(pruneBackoff)"),
            (.iwantFollowupTimePositive, iwantFollowupTime > .zero, "iwant_followup_time = \(iwantFollowupTime)"),
            (.gossipThresholdNotPositive, thresholds.gossipThreshold <= 0, "gossip_threshold = \(thresholds.gossipThreshold)"),
            (.publishThresholdAtMostGossip, thresholds.publishThreshold <= thresholds.gossipThreshold,
             "publish_threshold = \(thresholds.publishThreshold), gossip_threshold = \(thresholds.gossipThreshold)"),
            (.graylistThresholdAtMostPublish, thresholds.graylistThreshold <= thresholds.publishThreshold,
             "graylist_threshold = \(thresholds.graylistThreshold), publish_threshold = \(thresholds.publishThreshold)"),
            (.acceptPXThresholdNotNegative, thresholds.acceptPXThreshold >= 0, "accept_px_threshold = \(thresholds.acceptPXThreshold)"),
            (.opportunisticGraftThresholdNotNegative, thresholds.opportunisticGraftThreshold >= 0,
             "opportunistic_graft_threshold = \(thresholds.opportunisticGraftThreshold)"),
            (.opportunisticGraftTicksPositive, opportunisticGraftTicks >= 1, "opportunistic_graft_ticks = \(opportunisticGraftTicks)"),
            (.messageSizePositive, maxMessageSize >= 1, "max_message_size = \(maxMessageSize)"),
            (.limitsNotNegative,
             min(prunePeers, opportunisticGraftPeers, maxIHaveMessages, maxIHaveLength, maxIDontWantMessages, maxIDontWantIDs,
                 gossipRetransmission, maxTopicsPerPeer, idontwantMessageThreshold, maxPendingRPCBytes) >= 0,
             "prune_peers = \(prunePeers), opportunistic_graft_peers = \(opportunisticGraftPeers), "
                + "max_ihave_messages = \(maxIHaveMessages), max_ihave_length = \(maxIHaveLength), "
                + "max_idontwant_messages = \(maxIDontWantMessages), max_idontwant_ids = \(maxIDontWantIDs), "
                + "gossip_retransmission = \(gossipRetransmission), max_topics_per_peer = \(maxTopicsPerPeer), "
                + "idontwant_message_threshold = \(idontwantMessageThreshold), max_pending_rpc_bytes = \(maxPendingRPCBytes)"),
            (.outboundQueuePositive, maxQueuedRPCsPerPeer >= 1, "max_queued_rpcs_per_peer = \(maxQueuedRPCsPerPeer)"),
            (.rpcCompletionTimeoutPositive, rpcCompletionTimeout > .zero, "rpc_completion_timeout = \(rpcCompletionTimeout)"),
            (.replacedStreamDrainTimeNotNegative, replacedStreamDrainTime >= .zero,
             "replaced_stream_drain_time = \(replacedStreamDrainTime)"),
        ]
        for (constraint, holds, detail) in checks where !holds {
            throw PubSubConfigurationError(constraint: constraint, detail: detail)
        }
    }
}

/// A pubsub configuration that breaks one of its constraints.
public struct PubSubConfigurationError: Error, CustomStringConvertible, Sendable, Equatable {
    /// What must hold (names as in the gossipsub spec).
    public enum Constraint: String, CaseIterable, Sendable {
        case dLowAtMostD = "D_lo <= D"
        case dAtMostDHigh = "D <= D_hi"
        case dOutBelowDLow = "D_out < D_lo"
        case dOutAtMostHalfD = "D_out <= D/2"
        case dScoreAtMostD = "D_score <= D"
        case degreesNotNegative = "D_out, D_score, D_lazy >= 0"
        case historyLengthPositive = "history_length >= 1"
        case historyGossipWithinHistory = "0 <= history_gossip <= history_length"
        case heartbeatPositive = "heartbeat_interval > 0"
        case fanoutTTLPositive = "fanout_ttl > 0"
        case seenTTLPositive = "seen_ttl > 0"
        /// PRUNE carries the backoff in whole seconds.
        case pruneBackoffWholeSeconds = "prune_backoff >= 1 s"
        case iwantFollowupTimePositive = "iwant_followup_time > 0"
        case gossipThresholdNotPositive = "gossip_threshold <= 0"
        case publishThresholdAtMostGossip = "publish_threshold <= gossip_threshold"
        case graylistThresholdAtMostPublish = "graylist_threshold <= publish_threshold"
        case acceptPXThresholdNotNegative = "accept_px_threshold >= 0"
        case opportunisticGraftThresholdNotNegative = "opportunistic_graft_threshold >= 0"
        case opportunisticGraftTicksPositive = "opportunistic_graft_ticks >= 1"
        case messageSizePositive = "max_message_size >= 1"
        case limitsNotNegative = "per-peer and per-message limits >= 0"
        case outboundQueuePositive = "max_queued_rpcs_per_peer >= 1"
        case rpcCompletionTimeoutPositive = "rpc_completion_timeout > 0"
        case replacedStreamDrainTimeNotNegative = "replaced_stream_drain_time >= 0"
    }

    public let constraint: Constraint
    /// The values that break it.
    public let detail: String

    public var description: String { "invalid pubsub configuration: \(constraint.rawValue) does not hold (\(detail))" }
}
