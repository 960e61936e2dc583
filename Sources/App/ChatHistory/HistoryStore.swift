import Foundation
import Identity
import PubSub

/// The recent messages of each topic, in the order they were received,
/// bounded by count and age per topic and by the bytes they hold, in all and
/// per author (sans-IO: time is an input).
///
/// Memory is charged when a message is kept, in bytes, for what it holds
/// (`charge(of:)`). Past an author's share its own oldest messages go, so one
/// author (a flood of whole 1 MiB messages) pushes out only its own lines;
/// past the whole the oldest of all go.
public struct HistoryStore: Sendable {
    /// A kept message and when it arrived.
    public struct Entry: Sendable {
        public let message: PubSubMessage
        public let receivedAt: Date
        /// The bytes it is charged.
        let charge: Int
    }

    /// What a kept message costs besides its fields (the entry, its slot, its id in the set).
    public static let entryOverhead = 256

    public let maxCount: Int
    public let maxAge: TimeInterval
    /// Bytes kept in all, and per author (unsigned messages share one author).
    public let maxBytes: Int
    public let maxBytesPerAuthor: Int
    private var entries: [String: [Entry]] = [:]
    private var ids: Set<MessageID> = []
    private var byAuthor: [PeerID?: Int] = [:]
    public private(set) var totalBytes = 0

    public init(
        maxCount: Int = 10_000, maxAge: TimeInterval = 24 * 3600, maxBytes: Int = 64 << 20, maxBytesPerAuthor: Int = 8 << 20
    ) {
        self.maxCount = max(1, maxCount)
        self.maxAge = maxAge
        self.maxBytes = max(1, maxBytes)
        self.maxBytesPerAuthor = max(1, min(maxBytesPerAuthor, maxBytes))
    }

    /// The bytes a kept message holds: its fields as kept, and the entry.
    public static func charge(of message: PubSubMessage) -> Int {
        entryOverhead + message.topic.utf8.count + message.data.count + (message.from?.bytes.count ?? 0)
            + (message.seqno?.count ?? 0) + 2 * message.id.bytes.count + (message.signature?.count ?? 0) + (message.key?.count ?? 0)
    }

    /// Bytes kept of `author`'s messages.
    public func bytes(of author: PeerID?) -> Int { byAuthor[author] ?? 0 }

    /// Keeps a message; false if it is already kept (a duplicate) or larger
    /// than an author's share.
    @discardableResult
    public mutating func record(_ message: PubSubMessage, at now: Date) -> Bool {
        guard !ids.contains(message.id) else { return false }
        let charge = Self.charge(of: message)
        guard charge <= maxBytesPerAuthor else { return false }
        ids.insert(message.id)
        entries[message.topic, default: []].append(Entry(message: message, receivedAt: now, charge: charge))
        byAuthor[message.from, default: 0] += charge
        totalBytes += charge
        prune(topic: message.topic, now: now)
        while bytes(of: message.from) > maxBytesPerAuthor, let found = oldest(of: message.from) {
            remove(topic: found.topic, at: found.index)
        }
        while totalBytes > maxBytes, let found = oldest(of: nil, anyAuthor: true) {
            remove(topic: found.topic, at: found.index)
        }
        return true
    }

    /// Where the oldest kept message is: of `author`, or of anyone.
    private func oldest(of author: PeerID?, anyAuthor: Bool = false) -> (topic: String, index: Int)? {
        var found: (topic: String, index: Int, at: Date)?
        for (topic, list) in entries {
            guard let index = anyAuthor ? list.indices.first : list.firstIndex(where: { $0.message.from == author }) else {
                continue
            }
            if found == nil || list[index].receivedAt < found!.at { found = (topic, index, list[index].receivedAt) }
        }
        return found.map { ($0.topic, $0.index) }
    }

    private mutating func remove(topic: String, at index: Int) {
        guard let entry = entries[topic]?.remove(at: index) else { return }
        release(entry)
        if entries[topic]?.isEmpty == true { entries[topic] = nil }
    }

    private mutating func release(_ entry: Entry) {
        ids.remove(entry.message.id)
        totalBytes -= entry.charge
        byAuthor[entry.message.from, default: 0] -= entry.charge
        if byAuthor[entry.message.from] == 0 { byAuthor[entry.message.from] = nil }
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

    /// The wire bytes (`PubSubMessage.wireBytes`) of the messages of `topic`
    /// among `wanted`, in the order they were received, as many as fit in
    /// `budget` bytes: encoding stops at the budget (the rest can be asked again).
    public func wireMessages(in topic: String, ids wanted: Set<MessageID>, budget: Int) -> [[UInt8]] {
        var out: [[UInt8]] = []
        var used = 0
        for entry in entries[topic, default: []] where wanted.contains(entry.message.id) {
            // The charge bounds the encoding from above: no message is encoded past the budget.
            guard used + entry.charge <= budget else { break }
            let wire = entry.message.wireBytes
            used += wire.count
            out.append(wire)
        }
        return out
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
        for entry in list[..<drop] { release(entry) }
        list.removeFirst(drop)
        entries[topic] = list.isEmpty ? nil : list
    }

    public var count: Int { ids.count }

    /// Every entry, topic by topic, each topic oldest first.
    var allEntries: [Entry] { entries.keys.sorted().flatMap { entries[$0] ?? [] } }
}
