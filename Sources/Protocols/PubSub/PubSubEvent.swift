import Identity

/// A change in who is on a topic, from the peers' subscription messages.
public enum PubSubEvent: Sendable, Hashable {
    /// `peer` announced a subscription to `topic`.
    case subscribed(peer: PeerID, topic: String)
    /// `peer` left `topic`: it unsubscribed, or its last pubsub stream closed.
    case unsubscribed(peer: PeerID, topic: String)

    /// The peer the event is about.
    public var peer: PeerID {
        switch self {
        case .subscribed(let peer, _), .unsubscribed(let peer, _): return peer
        }
    }

    /// The topic the event is about.
    public var topic: String {
        switch self {
        case .subscribed(_, let topic), .unsubscribed(_, let topic): return topic
        }
    }
}
