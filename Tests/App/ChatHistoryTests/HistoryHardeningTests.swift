@testable import ChatHistory
import Foundation
import Host
import Identity
import NIOPosix
import PubSub
import RequestResponse
import Synchronization
import TestSupport
import Transport
import XCTest

/// Issue 25, row 4: what the history makes a node hold, build and take.
final class HistoryHardeningTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// A message as the store keeps it (the store does not verify: the service does before).
    static func message(_ index: Int, from author: PeerID?, size: Int, topic: String = "lobby") -> PubSubMessage {
        let seqno = withUnsafeBytes(of: UInt64(index).bigEndian, Array.init)
        return PubSubMessage(
            topic: topic, data: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: size), from: author, seqno: seqno,
            id: MessageID((author?.bytes ?? []) + seqno), receivedFrom: nil, signature: [UInt8](repeating: 1, count: 64))
    }

    static func author() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }

    /// Row 4: one author sends 300 whole 1 MiB messages: it keeps its 8 MiB
    /// share (its newest), and an honest line from before stays. 40 authors
    /// doing the same: 64 MiB in all, the newest kept. Before, the history
    /// was bounded by count only (10 000 lines per topic): 3000 such
    /// messages were +2943 MiB, all kept (here 300 would be 300 MiB).
    func testWholeMegabyteMessagesAreBoundedByBytesInAllAndPerAuthor() {
        var store = HistoryStore()
        let start = Date(timeIntervalSince1970: 1_000_000)
        let honest = Self.message(0, from: Self.author(), size: 40)
        XCTAssertTrue(store.record(honest, at: start))
        let flooder = Self.author()
        for index in 1...300 {
            store.record(Self.message(index, from: flooder, size: 1 << 20), at: start.addingTimeInterval(Double(index)))
        }
        let kept = store.messages(in: "lobby")
        let held = kept.reduce(0) { $0 + HistoryStore.charge(of: $1) }
        XCTAssertLessThanOrEqual(store.bytes(of: flooder), store.maxBytesPerAuthor)
        XCTAssertLessThanOrEqual(held, store.maxBytesPerAuthor + HistoryStore.charge(of: honest))
        XCTAssertEqual(kept.count, 1 + 7, "the flooder's newest 7 of 1 MiB")
        XCTAssertEqual(kept.first?.id, honest.id, "the honest line stays")
        XCTAssertEqual(kept.last?.id, Self.message(300, from: flooder, size: 0).id)
        XCTAssertEqual(store.totalBytes, held)
        // Many authors: bounded in all, the oldest of all go first.
        for author in 0..<40 {
            let sender = Self.author()
            for index in 0..<8 {
                store.record(Self.message(index, from: sender, size: 1 << 20), at: start.addingTimeInterval(Double(1000 + author * 8 + index)))
            }
        }
        XCTAssertLessThanOrEqual(store.totalBytes, store.maxBytes)
        XCTAssertGreaterThan(store.totalBytes, store.maxBytes - 2 * (1 << 20))
        XCTAssertFalse(store.contains(honest.id), "the oldest of all went")
        XCTAssertEqual(store.count, store.messages(in: "lobby").count)
        // A message larger than an author's share is not kept.
        var small = HistoryStore(maxBytes: 1 << 20, maxBytesPerAuthor: 4096)
        XCTAssertFalse(small.record(Self.message(1, from: flooder, size: 5000), at: start))
        XCTAssertEqual(small.totalBytes, 0)
        // Age still prunes, and gives the bytes back.
        store.prune(now: start.addingTimeInterval(10 * 24 * 3600))
        XCTAssertEqual(store.totalBytes, 0)
        XCTAssertEqual(store.count, 0)
    }

    /// Row 4: a server's answer is encoded up to its budget and not beyond.
    func testAnAnswerIsEncodedUpToItsBudget() {
        var store = HistoryStore(maxBytes: 1 << 30, maxBytesPerAuthor: 1 << 30)
        let author = Self.author()
        let now = Date()
        let messages = (0..<200).map { Self.message($0, from: author, size: 1 << 20) }
        for message in messages { store.record(message, at: now) }
        let budget = HistoryService.responseBudget
        let answer = store.wireMessages(in: "lobby", ids: Set(messages.map(\.id)), budget: budget)
        XCTAssertEqual(answer.count, 15)
        XCTAssertLessThanOrEqual(answer.reduce(0) { $0 + $1.count }, budget)
        XCTAssertEqual(answer.first, messages[0].wireBytes)
    }

    /// Row 4: 18 messages of about 1 MB (18 MB, over the 16 MiB an answer
    /// may be) are all fetched: the holder stops at its budget and the asker
    /// asks again for the rest. Before, the holder built the whole 18 MB
    /// answer (200 messages of 1 MiB: 200 MB) before its size check refused
    /// it, and the asker got nothing.
    func testAHolderStopsAtItsBudgetAndTheAskerGetsTheRest() async throws {
        let (holderHost, askerHost) = try await makeConnectedMemoryHosts(group: group)
        let holder = try HistoryService(host: holderHost)
        holder.start()
        let asker = try HistoryService(host: askerHost)
        var messages: [PubSubMessage] = []
        for _ in 0..<3 {
            let pubsub = try PubSubService(host: Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity))
            pubsub.start()
            for index in 0..<6 {
                messages.append(try await pubsub.publishMessage("lobby", data: [UInt8](repeating: UInt8(index), count: 1_000_000)).message)
            }
        }
        for message in messages { XCTAssertTrue(holder.record(message)) }
        let sent = messages.map(\.id)
        try await withDeadline(120) {
            let result = try await asker.sync(topic: "lobby", with: holderHost.localPeer, backlog: 100)
            XCTAssertEqual(result.new.map(\.id), sent)
            XCTAssertEqual(result.rejected, 0)
        }
        await holderHost.close()
        await askerHost.close()
    }

    /// Row 4: a peer answering a listing of 100 with 10 000 ids, or a fetch
    /// of a few with more messages, is refused (nothing of it taken). Before,
    /// the 10 000 were taken and fetched.
    func testAnAskerRefusesMoreThanItAskedFor() async throws {
        let (liarHost, askerHost) = try await makeConnectedMemoryHosts(group: group)
        let liar = RequestResponse(
            host: liarHost, protocols: [HistoryService.protocolID], codec: ProtobufCodec<HistoryRequest, HistoryResponse>())
        let fetches = Mutex(0)
        liar.serve { request, _ in
            var response = HistoryResponse()
            if request.want.isEmpty {
                response.ids = (0..<10_000).map { index in Data(withUnsafeBytes(of: UInt64(index), Array.init)) }
            } else {
                fetches.withLock { $0 += 1 }
            }
            return response
        }
        let asker = try HistoryService(host: askerHost)
        try await withDeadline(30) {
            do throws(HistoryError) {
                _ = try await asker.sync(topic: "lobby", with: liarHost.localPeer, backlog: 100)
                XCTFail("10 000 ids were taken where 100 were asked for")
            } catch {
                guard case .tooMany(_, 10_000, 100) = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(fetches.withLock { $0 }, 0, "nothing of it fetched")
        }
        await liarHost.close()
        await askerHost.close()
    }

    /// The history file is rewritten with what is kept once twice the store's
    /// bytes were appended: a flood does not grow it past what a restart loads.
    func testTheHistoryFileStaysWithinTwiceTheStore() async throws {
        let path = NSTemporaryDirectory() + "p2pchat-history-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let host = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        let pubsub = try PubSubService(host: Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity))
        pubsub.start()
        let history = try HistoryService(host: host, path: path, maxBytes: 1 << 20, maxBytesPerAuthor: 1 << 20)
        var largest = 0
        for index in 0..<200 {
            let message = try await pubsub.publishMessage("lobby", data: [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 50_000)).message
            XCTAssertTrue(history.record(message))
            let size = (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue ?? 0
            largest = max(largest, size)
        }
        XCTAssertLessThanOrEqual(largest, 2 * (1 << 20) + 60_000, "200 of 50 kB appended: 10 MB before")
        let kept = history.messages(in: "lobby").map(\.id)
        await history.stop()
        let reloaded = try HistoryService(host: host, path: path, maxBytes: 1 << 20, maxBytesPerAuthor: 1 << 20)
        XCTAssertEqual(reloaded.messages(in: "lobby").map(\.id), kept)
        await host.close()
    }
}
