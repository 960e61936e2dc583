import TestSupport
import XCTest

@testable import PubSub

/// The per-peer send queue: bounded, drained in batches, finished cleanly.
final class RPCOutboxTests: XCTestCase {
    static func rpc(_ topic: String) -> OutboundRPC {
        OutboundRPC(PubSubRPC(subscriptions: [Subscription(topic: topic, subscribe: true)]))
    }

    func testQueuedRPCsComeOutTogetherInOrder() async {
        let outbox = RPCOutbox(limit: 10)
        for index in 0..<3 { XCTAssertTrue(outbox.enqueue(Self.rpc("t\(index)"))) }
        let batch = await outbox.next()
        XCTAssertEqual(batch?.map { $0.rpc.subscriptions[0].topic }, ["t0", "t1", "t2"])
    }

    func testFullQueueDropsNewRPCs() async {
        let outbox = RPCOutbox(limit: 2)
        XCTAssertTrue(outbox.enqueue(Self.rpc("a")))
        XCTAssertTrue(outbox.enqueue(Self.rpc("b")))
        XCTAssertFalse(outbox.enqueue(Self.rpc("c")), "over the limit: dropped")
        let batch = await outbox.next()
        XCTAssertEqual(batch?.count, 2)
        XCTAssertTrue(outbox.enqueue(Self.rpc("d")), "room again once drained")
    }

    /// A sender parked in `next()` gets an RPC handed straight to it (not
    /// queued), and `finish` wakes it with the end.
    func testWaitingSenderIsWokenAndFinishEndsIt() async throws {
        let outbox = RPCOutbox(limit: 10)
        let sender = Task { () -> [[String]] in
            var seen: [[String]] = []
            while let batch = await outbox.next() { seen.append(batch.map { $0.rpc.subscriptions[0].topic }) }
            return seen
        }
        try await waitUntil("the sender waits for RPCs") { outbox.snapshot.senderWaiting }
        XCTAssertTrue(outbox.enqueue(Self.rpc("late")))
        // (The woken sender may already be parked again: only the queue tells the path taken.)
        XCTAssertEqual(outbox.snapshot.queued, 0, "handed to the waiting sender, not queued")
        try await waitUntil("the sender waits again") { outbox.snapshot.senderWaiting }
        outbox.finish()
        XCTAssertFalse(outbox.snapshot.senderWaiting, "finish woke the sender")
        XCTAssertFalse(outbox.enqueue(Self.rpc("after")), "finished: nothing more is taken")
        let seen = try await withDeadline(5) { await sender.value }
        XCTAssertEqual(seen, [["late"]])
    }
}
