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

    typealias Codec = ProtobufCodec<HistoryRequest, HistoryResponse>
    private let service: RequestResponse<Codec>
    private let store: Mutex<HistoryStore>
    private let file: HistoryAppender?
    private let logger = Logger(label: "p2pchat.history")
    public let maxMessageSize: Int

    /// `path`: keep the history in this file too (loaded now; lines that do
    /// not verify are dropped).
    public init(
        host: Libp2pHost, maxCount: Int = 10_000, maxAge: TimeInterval = 24 * 3600, path: String? = nil,
        maxMessageSize: Int = 1024 * 1024
    ) throws(HistoryError) {
        var configuration = RequestResponseConfiguration()
        configuration.maxResponseSize = 16 * 1024 * 1024
        configuration.timeout = 30
        service = RequestResponse(host: host, protocols: [Self.protocolID], codec: Codec(), configuration: configuration)
        self.maxMessageSize = maxMessageSize
        var initial = HistoryStore(maxCount: maxCount, maxAge: maxAge)
        if let path {
            let file = HistoryFile(path: path)
            for (message, time) in try file.load(maxMessageSize: maxMessageSize) { initial.record(message, at: time) }
            initial.prune(now: Date())
            try file.rewrite(initial)
            // Opened after the rewrite, which replaces the file.
            self.file = try file.openForAppending()
        } else {
            file = nil
        }
        store = Mutex(initial)
    }

    /// Answers other peers' history requests.
    public func start() {
        service.serve { [self] request, _ in
            var response = HistoryResponse()
            if request.want.isEmpty {
                let after = request.after.isEmpty ? nil : MessageID(Array(request.after))
                let limit = request.limit == 0 ? Self.listLimit : min(Int(request.limit), Self.listLimit)
                response.ids = self.store.withLock { $0.ids(in: request.topic, after: after, limit: limit) }.map { Data($0.bytes) }
            } else {
                let wanted = Set(request.want.prefix(Self.fetchBatch).map { MessageID(Array($0)) })
                response.messages = self.store.withLock { $0.messages(in: request.topic, ids: wanted) }.map { Data($0.wireBytes) }
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
            do { try file.append(message, at: now) } catch {
                logger.warning("cannot write the history file", metadata: ["error": "\(error)"])
            }
        }
        return added
    }

    /// Closes the history file; messages recorded afterwards are kept in memory only.
    public func close() { file?.close() }

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
        listing.limit = UInt32(clamping: store.withLock { $0.lastID(in: topic) } == nil ? backlog : Self.listLimit)
        if let last = store.withLock({ $0.lastID(in: topic) }) { listing.after = Data(last.bytes) }
        let listed: [MessageID]
        do {
            listed = try await service.send(listing, to: peer).ids.prefix(Self.listLimit).map { MessageID(Array($0)) }
        } catch {
            throw .request(underlying: error)
        }
        let missing = listed.filter { !contains($0) }
        var fresh: [PubSubMessage] = []
        var rejected = 0
        var start = 0
        while start < missing.count {
            let batch = missing[start..<min(missing.count, start + Self.fetchBatch)]
            start += batch.count
            var fetch = HistoryRequest()
            fetch.topic = topic
            fetch.want = batch.map { Data($0.bytes) }
            let response: HistoryResponse
            do { response = try await service.send(fetch, to: peer) } catch { throw .request(underlying: error) }
            let asked = Set(batch)
            for wire in response.messages.prefix(batch.count) {
                guard let message = try? PubSubMessage.verified(wire: Array(wire), maxSize: maxMessageSize, receivedFrom: peer),
                    message.topic == topic, asked.contains(message.id)
                else {
                    rejected += 1
                    continue
                }
                if record(message) { fresh.append(message) }
            }
        }
        return (fresh, rejected)
    }
}

/// Why the history could not be loaded, kept or synced.
public enum HistoryError: Error, CustomStringConvertible, Sendable {
    /// The history file could not be read or written.
    case file(path: String, underlying: any Error)
    /// The peer could not be asked.
    case request(underlying: RequestResponseError)

    public var description: String {
        switch self {
        case .file(let path, let error): return "history file \(path): \(error)"
        case .request(let error): return "history sync: \(error)"
        }
    }
}
