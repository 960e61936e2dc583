import Foundation
import PubSub

/// The recent messages of each topic, in the order they were received,
/// bounded by count and age (sans-IO: time is an input).
public struct HistoryStore: Sendable {
    /// A kept message and when it arrived.
    public struct Entry: Sendable {
        public let message: PubSubMessage
        public let receivedAt: Date
    }

    public let maxCount: Int
    public let maxAge: TimeInterval
    private var entries: [String: [Entry]] = [:]
    private var ids: Set<MessageID> = []

    public init(maxCount: Int = 10_000, maxAge: TimeInterval = 24 * 3600) {
        self.maxCount = max(1, maxCount)
        self.maxAge = maxAge
    }

    /// Keeps a message; false if it is already kept (a duplicate).
    @discardableResult
    public mutating func record(_ message: PubSubMessage, at now: Date) -> Bool {
        guard !ids.contains(message.id) else { return false }
        ids.insert(message.id)
        entries[message.topic, default: []].append(Entry(message: message, receivedAt: now))
        prune(topic: message.topic, now: now)
        return true
    }

    public func contains(_ id: MessageID) -> Bool { ids.contains(id) }

    /// The messages of `topic`, oldest first.
    public func messages(in topic: String) -> [PubSubMessage] { entries[topic, default: []].map(\.message) }

    /// The newest message id of `topic`, if any.
    public func lastID(in topic: String) -> MessageID? { entries[topic]?.last?.message.id }

    /// Ids of `topic` after `after`, oldest first, at most `limit` (the oldest
    /// after it); when `after` is nil or unknown here, the newest `limit`.
    public func ids(in topic: String, after: MessageID?, limit: Int) -> [MessageID] {
        let list = entries[topic, default: []]
        guard let start = after.flatMap({ id in list.lastIndex { $0.message.id == id } }) else {
            return list.suffix(max(0, limit)).map(\.message.id)
        }
        return list[(start + 1)...].prefix(max(0, limit)).map(\.message.id)
    }

    /// The messages of `topic` among `wanted`, in the order they were received.
    public func messages(in topic: String, ids wanted: Set<MessageID>) -> [PubSubMessage] {
        entries[topic, default: []].lazy.map(\.message).filter { wanted.contains($0.id) }
    }

    /// Drops what is over the count or older than the age limit.
    public mutating func prune(now: Date) {
        for topic in entries.keys { prune(topic: topic, now: now) }
    }

    private mutating func prune(topic: String, now: Date) {
        guard var list = entries[topic] else { return }
        let oldest = now.addingTimeInterval(-maxAge)
        var drop = max(0, list.count - maxCount)
        while drop < list.count, list[drop].receivedAt < oldest { drop += 1 }
        guard drop > 0 else { return }
        for entry in list[..<drop] { ids.remove(entry.message.id) }
        list.removeFirst(drop)
        entries[topic] = list.isEmpty ? nil : list
    }

    public var count: Int { ids.count }

    /// Every entry, topic by topic, each topic oldest first.
    var allEntries: [Entry] { entries.keys.sorted().flatMap { entries[$0] ?? [] } }
}
