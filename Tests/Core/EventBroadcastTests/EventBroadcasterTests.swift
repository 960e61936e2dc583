import EventBroadcast
import Foundation
import Synchronization
import TestSupport
import XCTest

final class EventBroadcasterTests: XCTestCase {
    /// Reads `count` events, failing on a stream that ends first.
    private func take(_ count: Int, from stream: AsyncStream<Int>) async -> [Int]? {
        var iterator = stream.makeAsyncIterator()
        var events: [Int] = []
        while events.count < count {
            guard let event = await iterator.next() else { return nil }
            events.append(event)
        }
        return events
    }

    func testEverySubscriberGetsTheEventsAfterItSubscribedInOrder() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 16)
        let early = broadcaster.subscribe()
        broadcaster.yield(1)
        let late = broadcaster.subscribe()
        broadcaster.yield(2)
        broadcaster.yield(3)
        XCTAssertEqual(broadcaster.subscriberCount, 2)
        let earlyEvents = await take(3, from: early)
        let lateEvents = await take(2, from: late)
        XCTAssertEqual(earlyEvents, [1, 2, 3])
        XCTAssertEqual(lateEvents, [2, 3])
    }

    func testATerminatedSubscriberIsRemoved() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 16)
        let stream = broadcaster.subscribe()
        let other = broadcaster.subscribe()
        let consumer = Task {
            for await _ in stream {}
        }
        XCTAssertEqual(broadcaster.subscriberCount, 2)
        consumer.cancel()
        try await waitUntil("the cancelled subscriber is removed") { broadcaster.subscriberCount == 1 }
        // The remaining one still gets events.
        broadcaster.yield(7)
        let events = await take(1, from: other)
        XCTAssertEqual(events, [7])
        _ = await consumer.value
    }

    func testFinishEndsEveryStreamAndLaterSubscriptions() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 16)
        let stream = broadcaster.subscribe()
        broadcaster.yield(1)
        broadcaster.finish()
        broadcaster.yield(2)
        XCTAssertTrue(broadcaster.isFinished)
        XCTAssertEqual(broadcaster.subscriberCount, 0)
        // What was buffered before the finish is still read, then the stream ends.
        var received: [Int] = []
        for await event in stream { received.append(event) }
        XCTAssertEqual(received, [1])
        // A subscription after the finish ends at once instead of waiting forever.
        let late = try await withDeadline(5) {
            var count = 0
            for await _ in broadcaster.subscribe() { count += 1 }
            return count
        }
        XCTAssertEqual(late, 0)
        XCTAssertEqual(broadcaster.subscriberCount, 0)
    }

    func testASlowSubscriberKeepsTheNewestEventsAndTheOthersAreNotHeldUp() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 4)
        let slow = broadcaster.subscribe()
        let roomy = broadcaster.subscribe(bufferingNewest: 100)
        for event in 1...10 { broadcaster.yield(event) }
        broadcaster.finish()
        var slowEvents: [Int] = []
        for await event in slow { slowEvents.append(event) }
        var roomyEvents: [Int] = []
        for await event in roomy { roomyEvents.append(event) }
        XCTAssertEqual(slowEvents, [7, 8, 9, 10], "the oldest events are dropped from a full buffer")
        XCTAssertEqual(roomyEvents, Array(1...10))
        XCTAssertEqual(broadcaster.droppedEvents, 6)
    }

    func testConcurrentEmittersReachEverySubscriberInOneOrder() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 10_000)
        let first = broadcaster.subscribe()
        let second = broadcaster.subscribe()
        await withTaskGroup(of: Void.self) { group in
            for emitter in 0..<4 {
                group.addTask {
                    for index in 0..<500 { broadcaster.yield(emitter * 1000 + index) }
                }
            }
        }
        broadcaster.finish()
        var firstEvents: [Int] = []
        for await event in first { firstEvents.append(event) }
        var secondEvents: [Int] = []
        for await event in second { secondEvents.append(event) }
        XCTAssertEqual(firstEvents.count, 2000)
        XCTAssertEqual(firstEvents, secondEvents)
        // Each emitter's own events stay in its order.
        for emitter in 0..<4 {
            let own = firstEvents.filter { $0 / 1000 == emitter }
            XCTAssertEqual(own, own.sorted())
        }
    }

    /// Cancelling a consumer while events are being yielded to it. Cancelling
    /// holds the consumer task's status lock while the stream's termination
    /// handler takes the broadcaster's lock; yielding takes the broadcaster's
    /// lock and then (to resume the consumer) the task's. When yield held its
    /// lock while handing over, the two orders deadlocked (a chat hung on
    /// exit). The emitter runs on a thread of its own, so that a deadlock
    /// cannot also stall the deadline's timer.
    func testCancellingAConsumerWhileEventsArriveDoesNotDeadlock() async throws {
        let broadcaster = EventBroadcaster<Int>(bufferingNewest: 4)
        let stop = Atomic(false)
        let emitter = Thread {
            var event = 0
            while !stop.load(ordering: .relaxed) {
                broadcaster.yield(event)
                event += 1
            }
        }
        emitter.start()
        defer { stop.store(true, ordering: .relaxed) }
        let rounds = try await withDeadline(60) {
            for _ in 0..<3000 {
                let stream = broadcaster.subscribe()
                let consumer = Task { for await _ in stream {} }
                await Task.yield()
                consumer.cancel()
                await consumer.value
            }
            return 3000
        }
        XCTAssertEqual(rounds, 3000)
        try await waitUntil("every cancelled subscriber is removed") { broadcaster.subscriberCount == 0 }
    }
}
