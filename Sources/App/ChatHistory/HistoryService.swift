import Foundation
import Host
import Identity
import Logging
import NIOCore
import NIOPosix
import PubSub
import RequestResponse
import Synchronization

/// History after a partition: each node keeps the recent messages of its
/// topics (`HistoryStore`, optionally on disk) and, when it meets a peer of a
/// topic again, asks it over `/p2pchat/history/1.0.0` for the ids it holds
/// after the last message we saw, fetches the ones we lack, verifies each
/// signature and keeps them, oldest first.
public final class HistoryService: Sendable {
    public static let protocolID = "/p2pchat/history/1.0.0"
    /// Ids listed per request, and messages fetched per request.
    static let listLimit = 10_000
    static let fetchBatch = 200
    /// The largest answer read, and the bytes of messages an answer carries
    /// (the rest of a batch is asked again): the server stops encoding there.
    static let maxResponseSize = 16 * 1024 * 1024
    static let responseBudget = maxResponseSize - 64 * 1024

    typealias Codec = ProtobufCodec<HistoryRequest, HistoryResponse>
    let service: RequestResponse<Codec>
    private let store: Mutex<HistoryStore>
    private let file: HistoryAppender?
    /// The file's bytes: past twice the store's bytes it is rewritten with
    /// what is kept (so it stays loadable, under `HistoryFile.maxFileSize`).
    private let appended: Mutex<Int>
    private let maxStoreBytes: Int
    private let logger = Logger(label: "p2pchat.history")
    public let maxMessageSize: Int
    /// How long lines are kept: a line signed as sent before that is shown as old.
    public let maxAge: TimeInterval

    /// `path`: keep the history in this file too (loaded now; lines that do
    /// not verify are dropped). `maxCount` lines per topic, `maxBytes` in all
    /// and `maxBytesPerAuthor` of one author's (see `HistoryStore`).
    public init(
        host: Libp2pHost, maxCount: Int = 10_000, maxAge: TimeInterval = 24 * 3600, path: String? = nil,
        maxMessageSize: Int = 1024 * 1024, maxBytes: Int = 64 << 20, maxBytesPerAuthor: Int = 8 << 20
    ) throws(HistoryError) {
        var configuration = RequestResponseConfiguration()
        configuration.maxResponseSize = Self.maxResponseSize
        configuration.timeout = .seconds(30)
        service = RequestResponse(host: host, protocols: [Self.protocolID], codec: Codec(), configuration: configuration)
        self.maxMessageSize = maxMessageSize
        self.maxAge = maxAge
        maxStoreBytes = maxBytes
        var initial = HistoryStore(maxCount: maxCount, maxAge: maxAge, maxBytes: maxBytes, maxBytesPerAuthor: maxBytesPerAuthor)
        if let path {
            let file = HistoryFile(path: path)
            for (message, time) in try file.load(maxMessageSize: maxMessageSize) { initial.record(message, at: time) }
            initial.prune(now: Date())
            appended = Mutex(try file.rewrite(initial))
            // Opened after the rewrite, which replaces the file.
            self.file = try file.openForAppending()
        } else {
            file = nil
            appended = Mutex(0)
        }
        store = Mutex(initial)
    }

    /// Answers other peers' history requests until `stop`.
    public func start() {
        service.serve { [self] request, _ in
            var response = HistoryResponse()
            if request.want.isEmpty {
                let after = request.after.isEmpty ? nil : MessageID(Array(request.after))
                let limit = request.limit == 0 ? Self.listLimit : min(Int(request.limit), Self.listLimit)
                response.ids = self.store.withLock { $0.ids(in: request.topic, after: after, limit: limit) }.map { Data($0.bytes) }
            } else {
                let wanted = Set(request.want.prefix(Self.fetchBatch).map { MessageID(Array($0)) })
                // Encoded up to the answer's budget, not beyond (the asker asks for the rest again).
                response.messages = self.store.withLock {
                    $0.wireMessages(in: request.topic, ids: wanted, budget: Self.responseBudget)
                }.map { Data($0) }
            }
            return response
        }
    }

    /// Keeps a message (received, or our own as published); false if it was kept already.
    @discardableResult
    public func record(_ message: PubSubMessage) -> Bool {
        let now = Date()
        let added = store.withLock { $0.record(message, at: now) }
        if added, let file {
            do {
                let written = try file.append(message, at: now)
                let due = appended.withLock { size in
                    size += written
                    return size > 2 * maxStoreBytes
                }
                if due, let size = try file.rewrite(with: { store.withLock { $0 } }) { appended.withLock { $0 = size } }
            } catch {
                logger.warning("cannot write the history file", metadata: ["error": "\(error)"])
            }
        }
        return added
    }

    /// When a line from the history was sent, as its author signed it (see
    /// `PubSubMessage.signedSendTime`), measured against the history's window.
    public func lineTime(of message: PubSubMessage, now: Date = Date()) -> HistoryLineTime {
        HistoryLineTime(message, window: maxAge, now: now)
    }

    /// Stops answering (returns once the requests being answered have ended)
    /// and closes the history file; messages recorded afterwards are kept in
    /// memory only.
    public func stop() async {
        await service.stop()
        file?.close()
    }

    public func contains(_ id: MessageID) -> Bool { store.withLock { $0.contains(id) } }

    /// The kept messages of `topic`, oldest first.
    public func messages(in topic: String) -> [PubSubMessage] { store.withLock { $0.messages(in: topic) } }

    /// Asks `peer` for the messages of `topic` we lack since our newest one,
    /// and keeps them. Returns the new ones, verified, in the order the peer
    /// received them. A message whose signature fails is dropped (counted in
    /// `rejected`).
    ///
    /// With no message of the topic yet, asks for the newest `backlog` only.
    public func sync(topic: String, with peer: PeerID, backlog: Int = 100) async throws(HistoryError)
        -> (new: [PubSubMessage], rejected: Int)
    {
        var listing = HistoryRequest()
        listing.topic = topic
        let last = store.withLock { $0.lastID(in: topic) }
        let limit = last == nil ? min(max(0, backlog), Self.listLimit) : Self.listLimit
        listing.limit = UInt32(clamping: limit)
        if let last { listing.after = Data(last.bytes) }
        let answer: HistoryResponse
        do { answer = try await service.send(listing, to: peer) } catch { throw .request(underlying: error) }
        // More than asked for is a peer not following the protocol: nothing of it is taken.
        guard answer.ids.count <= limit else { throw .tooMany(peer: peer, got: answer.ids.count, asked: limit) }
        let missing = answer.ids.map { MessageID(Array($0)) }.filter { !contains($0) }
        var fresh: [PubSubMessage] = []
        var rejected = 0
        var start = 0
        while start < missing.count {
            var batch = Array(missing[start..<min(missing.count, start + Self.fetchBatch)])
            start += batch.count
            // A server stops at its answer's budget (giving fewer than asked, in its order, which is the
            // listing's): what comes after the last one taken is asked again, while some are taken.
            while !batch.isEmpty {
                var fetch = HistoryRequest()
                fetch.topic = topic
                fetch.want = batch.map { Data($0.bytes) }
                let response: HistoryResponse
                do { response = try await service.send(fetch, to: peer) } catch { throw .request(underlying: error) }
                guard response.messages.count <= batch.count else {
                    throw .tooMany(peer: peer, got: response.messages.count, asked: batch.count)
                }
                var positions = Dictionary(batch.enumerated().map { ($1, $0) }, uniquingKeysWith: { first, _ in first })
                var lastTaken = -1
                for wire in response.messages {
                    guard let message = try? PubSubMessage.verified(wire: Array(wire), maxSize: maxMessageSize, receivedFrom: peer),
                        message.topic == topic, let position = positions.removeValue(forKey: message.id)
                    else {
                        rejected += 1
                        continue
                    }
                    lastTaken = max(lastTaken, position)
                    if record(message) { fresh.append(message) }
                }
                guard response.messages.count < batch.count, lastTaken >= 0 else { break }
                batch = Array(batch[(lastTaken + 1)...])
            }
        }
        return (fresh, rejected)
    }
}

/// When a history line was sent, so that an old line (a captured one served
/// again) is not shown as recent: the history protocol carries each line as
/// its author signed it, and the signed seqno is the send time.
public enum HistoryLineTime: Sendable, Equatable {
    /// Sent at this time, within the history's window.
    case sent(Date)
    /// Sent at this time, before the history's window (or, from go-libp2p and
    /// older p2pchat, by a publisher started then).
    case old(Date)
    /// Unsigned, or its seqno is no time (rust-libp2p's are random).
    case unknown

    public init(_ message: PubSubMessage, window: TimeInterval, now: Date) {
        guard let time = message.signedSendTime(now: now) else {
            self = .unknown
            return
        }
        self = time < now.addingTimeInterval(-window) ? .old(time) : .sent(time)
    }
}

/// Why the history could not be loaded, kept or synced.
public enum HistoryError: Error, CustomStringConvertible, Sendable {
    /// The history file could not be read or written.
    case file(path: String, underlying: any Error)
    /// The peer could not be asked.
    case request(underlying: RequestResponseError)
    /// The peer answered with more ids or messages than asked for.
    case tooMany(peer: PeerID, got: Int, asked: Int)

    public var description: String {
        switch self {
        case .file(let path, let error): return "history file \(path): \(error)"
        case .request(let error): return "history sync: \(error)"
        case .tooMany(let peer, let got, let asked): return "history sync: \(peer) answered \(got) where \(asked) were asked for"
        }
    }
}
