import ChatHistory
import Foundation
import Host
import Identity
import NIOPosix
@testable import PubSub
import TestSupport
import Transport
import XCTest

/// Issue 25: history lines carry their send time, signed (the pubsub seqno,
/// which our publisher sets to the send time in Unix nanoseconds), and old
/// lines are not shown as recent.
final class HistoryTimeTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    static func nanoseconds(_ date: Date) -> [UInt8] {
        let value = UInt64(date.timeIntervalSince1970 * 1_000_000_000)
        return withUnsafeBytes(of: value.bigEndian) { Array($0) }
    }

    /// A line signed by `key` with the given seqno, as pubsub would carry it.
    static func signed(_ text: String, by key: PrivateKey, seqno: [UInt8], topic: String = "lobby") throws -> PubSubMessage {
        var raw = RawMessage(from: PeerID(publicKey: key.publicKey).bytes, data: Array(text.utf8), seqno: seqno, topic: topic)
        try MessageSigning.sign(&raw, with: key)
        return try PubSubMessage.verified(wire: PubSubCodec.encode(raw), receivedFrom: nil)
    }

    /// A line fetched from a holder: one published now shows its send time; a
    /// captured line three days old, served again, shows as old; the same line
    /// with its time changed to now fails the signature; a seqno that is no
    /// time (rust-libp2p's random ones) shows as "time unknown".
    func testAReplayedOldLineIsShownAsOldAndAForgedTimeFails() async throws {
        let (holderHost, askerHost) = try await makeConnectedMemoryHosts(group: group)
        let holder = try HistoryService(host: holderHost)
        holder.start()
        let asker = try HistoryService(host: askerHost)
        let before = Date()
        let (_, published) = try await makeSignedMessages(2, group: group)
        let after = Date()
        let key = PrivateKey.generateEd25519()
        let threeDaysAgo = before.addingTimeInterval(-3 * 24 * 3600)
        let captured = try Self.signed("captured long ago", by: key, seqno: Self.nanoseconds(threeDaysAgo))
        let randomSeqno = try Self.signed("random seqno", by: key, seqno: [0xF3, 0x11, 0x42, 0x99, 0x00, 0x12, 0x34, 0x56])
        // The captured line, its time moved to now, its signature kept.
        let retimed = PubSubMessage(
            topic: "lobby", data: captured.data, from: captured.from, seqno: Self.nanoseconds(Date()),
            id: MessageID((captured.from?.bytes ?? []) + Self.nanoseconds(Date())), receivedFrom: nil,
            signature: captured.signature, key: captured.key)
        for message in [captured, retimed, randomSeqno] + published { holder.record(message) }

        let result = try await withDeadline(30) { try await asker.sync(topic: "lobby", with: holderHost.localPeer) }
        XCTAssertEqual(result.rejected, 1, "the re-timed line was not refused")
        XCTAssertEqual(result.new.map(\.id), [captured.id, randomSeqno.id] + published.map(\.id))
        let times = result.new.map { asker.lineTime(of: $0) }
        guard case .old(let capturedTime) = times[0] else { return XCTFail("the captured line shows as \(times[0])") }
        XCTAssertEqual(capturedTime.timeIntervalSince1970, threeDaysAgo.timeIntervalSince1970, accuracy: 0.001)
        XCTAssertEqual(times[1], .unknown)
        for time in times[2...] {
            guard case .sent(let sent) = time else { return XCTFail("a line published now shows as \(time)") }
            XCTAssertGreaterThanOrEqual(sent, before.addingTimeInterval(-0.001))
            XCTAssertLessThanOrEqual(sent, after.addingTimeInterval(0.001))
        }
        // The seqnos still increase per author (go-libp2p's seqno validator wants them so).
        XCTAssertLessThan(Self.value(published[0].seqno), Self.value(published[1].seqno))
        await holderHost.close()
        await askerHost.close()
    }

    static func value(_ seqno: [UInt8]?) -> UInt64 { (seqno ?? []).reduce(0) { $0 << 8 | UInt64($1) } }

    /// The seqno read as a time (untrusted input): only 8 bytes, signed, and a
    /// plausible time are a send time; truncated, oversized, random and
    /// unsigned seqnos are "time unknown", never a crash.
    func testOnlyAPlausibleSignedSeqnoIsASendTime() throws {
        let now = Date()
        let author = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        func message(_ seqno: [UInt8]?, signed: Bool = true) -> PubSubMessage {
            PubSubMessage(
                topic: "lobby", data: [], from: author, seqno: seqno, id: MessageID([1]), receivedFrom: nil,
                signature: signed ? [1] : nil)
        }
        let fiveMinutesAhead = Self.nanoseconds(now.addingTimeInterval(300))
        XCTAssertNotNil(message(fiveMinutesAhead).signedSendTime(now: now), "a clock a little ahead")
        XCTAssertNil(message(Self.nanoseconds(now.addingTimeInterval(660))).signedSendTime(now: now), "11 minutes ahead")
        XCTAssertNil(message(Self.nanoseconds(Date(timeIntervalSince1970: 1_500_000_000))).signedSendTime(now: now), "2017")
        XCTAssertNil(message(Array(fiveMinutesAhead.prefix(7))).signedSendTime(now: now), "truncated")
        XCTAssertNil(message(fiveMinutesAhead + [0]).signedSendTime(now: now), "oversized")
        XCTAssertNil(message(fiveMinutesAhead, signed: false).signedSendTime(now: now), "unsigned")
        XCTAssertNil(message(nil).signedSendTime(now: now))
        XCTAssertEqual(HistoryLineTime(message(nil), window: 60, now: now), .unknown)
        let earliest = Date(timeIntervalSince1970: 1_577_836_800)
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let count = Int.random(in: 0...16, using: &generator)
            let seqno = (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            let time = message(seqno).signedSendTime(now: now)
            if count != 8 { XCTAssertNil(time) }
            if let time { XCTAssertTrue(time >= earliest && time <= now.addingTimeInterval(600)) }
            switch HistoryLineTime(message(seqno), window: 3600, now: now) {
            case .sent(let sent): XCTAssertGreaterThanOrEqual(sent, now.addingTimeInterval(-3600))
            case .old(let sent): XCTAssertLessThan(sent, now.addingTimeInterval(-3600))
            case .unknown: XCTAssertNil(time)
            }
        }
    }
}
