@testable import ChatHistory
import Foundation
import Host
import Identity
import Multiformats
import NIOPosix
import PubSub
@testable import RequestResponse
import TestSupport
import Transport
import XCTest

final class ChatHistoryTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// `stop` ends a history request still arriving, and later requests are refused.
    func testStopEndsTheRequestsItAnswersAndRefusesNewOnes() async throws {
        let (holderHost, address) = try await makeTestHost(group: group)
        let (askerHost, _) = try await makeTestHost(group: group)
        let history = try HistoryService(host: holderHost)
        history.start()
        let connection = try await askerHost.connect(address)
        try await assertStopEndsService(
            HistoryService.protocolID, over: connection, running: { history.service.tasks.running },
            stop: { await history.stop() })
        let asker = try HistoryService(host: askerHost)
        do {
            _ = try await asker.sync(topic: "lobby", with: holderHost.localPeer)
            XCTFail("a history request was answered after stop")
        } catch {
            if case .request(.unsupportedProtocols) = error {} else { XCTFail("\(error)") }
        }
        await askerHost.close()
        await holderHost.close()
    }

    /// `count` messages signed by a fresh author, as pubsub would deliver them.
    func signedMessages(_ count: Int, topic: String = "lobby") async throws -> (PubSubService, [PubSubMessage]) {
        try await makeSignedMessages(count, topic: topic, group: group)
    }
}

/// `count` messages signed by a fresh author, as pubsub would deliver them.
func makeSignedMessages(_ count: Int, topic: String = "lobby", group: MultiThreadedEventLoopGroup) async throws
    -> (PubSubService, [PubSubMessage])
{
    do {
        let host = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        let pubsub = try PubSubService(host: host)
        pubsub.start()
        var messages: [PubSubMessage] = []
        for index in 0..<count {
            messages.append(try await pubsub.publishMessage(topic, data: Array("line \(index)".utf8)).message)
        }
        return (pubsub, messages)
    }
}

extension ChatHistoryTests {

    func testStoreKeepsOrderDropsDuplicatesAndPrunes() async throws {
        let (_, messages) = try await signedMessages(30)
        var store = HistoryStore(maxCount: 20, maxAge: 60)
        let start = Date(timeIntervalSince1970: 1_000_000)
        for (index, message) in messages.prefix(10).enumerated() {
            XCTAssertTrue(store.record(message, at: start.addingTimeInterval(Double(index))))
        }
        XCTAssertFalse(store.record(messages[3], at: start), "a duplicate was kept")
        XCTAssertEqual(store.messages(in: "lobby").map(\.id), messages.prefix(10).map(\.id))
        XCTAssertEqual(store.ids(in: "lobby", after: messages[6].id, limit: 100), messages[7..<10].map(\.id))
        // Without a known id: the newest.
        XCTAssertEqual(store.ids(in: "lobby", after: nil, limit: 2), messages[8..<10].map(\.id))
        // An id we do not know: everything.
        XCTAssertEqual(store.ids(in: "lobby", after: MessageID([1, 2, 3]), limit: 100).count, 10)
        XCTAssertEqual(store.ids(in: "other", after: nil, limit: 100), [])
        XCTAssertEqual(store.messages(in: "lobby", ids: [messages[8].id, messages[2].id]).map(\.id), [messages[2].id, messages[8].id])
        // Over the count: the oldest go.
        for (index, message) in messages[10...].enumerated() { store.record(message, at: start.addingTimeInterval(10 + Double(index))) }
        XCTAssertEqual(store.count, 20)
        XCTAssertEqual(store.messages(in: "lobby").first?.id, messages[10].id)
        XCTAssertFalse(store.contains(messages[0].id))
        // Over the age: the old go.
        store.prune(now: start.addingTimeInterval(10 + 9 + 60.5))
        XCTAssertEqual(store.messages(in: "lobby").map(\.id), messages[20...].map(\.id))
        XCTAssertEqual(store.lastID(in: "lobby"), messages.last?.id)
    }

    func testWireBytesVerifyAndTamperingIsRefused() async throws {
        let (_, messages) = try await signedMessages(1)
        let message = messages[0]
        let back = try PubSubMessage.verified(wire: message.wireBytes, receivedFrom: nil)
        XCTAssertEqual(back.id, message.id)
        XCTAssertEqual(back.data, message.data)
        XCTAssertEqual(back.from, message.from)
        let forged = PubSubMessage(
            topic: message.topic, data: Array("forged".utf8), from: message.from, seqno: message.seqno, id: message.id,
            receivedFrom: nil, signature: message.signature, key: message.key)
        XCTAssertThrowsError(try PubSubMessage.verified(wire: forged.wireBytes, receivedFrom: nil)) { error in
            XCTAssertEqual(error as? RejectReason, .invalidSignature)
        }
        XCTAssertThrowsError(try PubSubMessage.verified(wire: [0xFF, 0xFF, 0x01], receivedFrom: nil))
        XCTAssertThrowsError(try PubSubMessage.verified(wire: message.wireBytes, maxSize: 3, receivedFrom: nil))
        var random = SplitMix(seed: 21)
        for _ in 0..<3000 {
            let bytes = (0..<Int(random.next() % 120)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = try? PubSubMessage.verified(wire: bytes, receivedFrom: nil)
        }
    }

    func testSyncFetchesWhatIsMissingOnceInOrderAndDropsForgeries() async throws {
        let (holderHost, askerHost) = try await makeConnectedMemoryHosts(group: group)
        let holder = try HistoryService(host: holderHost)
        holder.start()
        let asker = try HistoryService(host: askerHost)
        let (_, messages) = try await signedMessages(450)
        for message in messages { holder.record(message) }
        // The asker saw the first 50 before it was cut off.
        for message in messages.prefix(50) { asker.record(message) }
        try await withDeadline(60) {
            // A newcomer (nothing of the topic yet) gets the newest lines only.
            let newcomer = try HistoryService(host: askerHost)
            let backlog = try await newcomer.sync(topic: "lobby", with: holderHost.localPeer, backlog: 20)
            XCTAssertEqual(backlog.new.map(\.id), messages.suffix(20).map(\.id))
            let first = try await asker.sync(topic: "lobby", with: holderHost.localPeer)
            XCTAssertEqual(first.new.map(\.id), messages[50...].map(\.id))
            XCTAssertEqual(first.new.map(\.data), messages[50...].map(\.data))
            XCTAssertEqual(first.rejected, 0)
            XCTAssertTrue(first.new.allSatisfy { $0.receivedFrom == holderHost.localPeer })
            // Nothing twice.
            let again = try await asker.sync(topic: "lobby", with: holderHost.localPeer)
            XCTAssertEqual(again.new.count, 0)
            XCTAssertEqual(asker.messages(in: "lobby").map(\.id), messages.map(\.id))
            // A forgery in the holder's store (a valid id and signature over other data) is refused.
            let original = messages[0]
            let (_, more) = try await makeSignedMessages(2, group: MultiThreadedEventLoopGroup.singleton)
            holder.record(more[0])
            let forged = PubSubMessage(
                topic: "lobby", data: Array("forged".utf8), from: more[1].from, seqno: more[1].seqno, id: more[1].id,
                receivedFrom: nil, signature: original.signature, key: original.key)
            holder.record(forged)
            let third = try await asker.sync(topic: "lobby", with: holderHost.localPeer)
            XCTAssertEqual(third.new.map(\.id), [more[0].id])
            XCTAssertEqual(third.rejected, 1)
            XCTAssertFalse(asker.contains(more[1].id))
        }
        await holderHost.close()
        await askerHost.close()
    }

    func testHistoryFileSurvivesRestartsAndCorruption() async throws {
        let path = NSTemporaryDirectory() + "p2pchat-history-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let host = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        let (_, messages) = try await signedMessages(40)
        do {
            let history = try HistoryService(host: host, path: path)
            for message in messages { history.record(message) }
        }
        let reloaded = try HistoryService(host: host, maxCount: 30, path: path)
        XCTAssertEqual(reloaded.messages(in: "lobby").map { $0.id }, messages[10...].map { $0.id })
        // A torn last record and garbage after it are skipped.
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data([0x90, 0x4E, 1, 2, 3]))
        try handle.close()
        let afterTear = try HistoryService(host: host, path: path)
        XCTAssertEqual(afterTear.messages(in: "lobby").count, 30)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        // Random files never crash the loader.
        var random = SplitMix(seed: 5)
        for _ in 0..<200 {
            let bytes = (0..<Int(random.next() % 300)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            _ = try? HistoryService(host: host, path: path)
        }
        // A directory at the path is a clear error.
        try? FileManager.default.removeItem(atPath: path)
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
        XCTAssertThrowsError(try HistoryService(host: host, path: path)) { error in
            XCTAssertTrue("\(error)".hasPrefix("history file \(path)"), "\(error)")
        }
        await host.close()
    }
}

extension ChatHistoryTests {
    /// The file stays open for the session: many appends, then a close, then a
    /// new session reads every record back; recording after the close keeps the
    /// message in memory and leaves the file alone.
    func testManyAppendsThroughOneHandleSurviveAReopen() async throws {
        let path = NSTemporaryDirectory() + "p2pchat-history-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: path) }
        let host = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        let (_, messages) = try await signedMessages(300)
        let history = try HistoryService(host: host, path: path)
        // Concurrent writers: records must not interleave.
        await withTaskGroup(of: Void.self) { group in
            for part in 0..<3 {
                group.addTask {
                    for message in messages[(part * 100)..<(part * 100 + 100)] { history.record(message) }
                }
            }
        }
        await history.stop()
        let sizeAtClose = try XCTUnwrap(
            (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue)
        let (_, late) = try await signedMessages(1)
        XCTAssertTrue(history.record(late[0]))
        XCTAssertTrue(history.contains(late[0].id))
        XCTAssertEqual(
            (try FileManager.default.attributesOfItem(atPath: path)[.size] as? NSNumber)?.intValue, sizeAtClose)

        let reopened = try HistoryService(host: host, path: path)
        XCTAssertEqual(Set(reopened.messages(in: "lobby").map(\.id)), Set(messages.map(\.id)))
        XCTAssertEqual(reopened.messages(in: "lobby").count, 300)
        // The reopened session appends after what the file holds.
        let (_, more) = try await signedMessages(5)
        for message in more { reopened.record(message) }
        await reopened.stop()
        let again = try HistoryService(host: host, path: path)
        XCTAssertEqual(again.messages(in: "lobby").count, 305)
        await again.stop()
        await host.close()
    }
}
