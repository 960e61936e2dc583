import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import TestSupport
import Transport
import XCTest

@testable import PubSub

/// Waits (bounded) until `condition` holds.
func eventually(_ seconds: Double = 10, _ what: String, _ condition: @escaping @Sendable () async -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(seconds)
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    XCTFail("timed out waiting for \(what)")
    throw CancellationError()
}

/// Reads the next message of a subscription within a deadline.
func nextMessage(_ iterator: inout AsyncStream<PubSubMessage>.AsyncIterator, within seconds: Double = 10)
    async throws -> PubSubMessage
{
    let box = IteratorBox(iterator)
    let message = try await withDeadline(seconds) { await box.next() }
    iterator = box.iterator
    return try XCTUnwrap(message)
}

final class IteratorBox: @unchecked Sendable {
    // Safe: used by one task at a time (the test awaits it before touching it again).
    var iterator: AsyncStream<PubSubMessage>.AsyncIterator
    init(_ iterator: AsyncStream<PubSubMessage>.AsyncIterator) { self.iterator = iterator }
    func next() async -> PubSubMessage? { await iterator.next() }
}

final class PubSubServiceTests: XCTestCase {
    func makeNode(_ router: RouterKind) async throws -> (Libp2pHost, PubSubService, Multiaddr) {
        let (host, address) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        var configuration = PubSubConfiguration()
        configuration.router = router
        let pubsub = PubSubService(host: host, configuration: configuration)
        pubsub.start()
        return (host, pubsub, address)
    }

    func exchange(_ router: RouterKind) async throws {
        let (hostA, pubsubA, addressA) = try await makeNode(router)
        let (hostB, pubsubB, _) = try await makeNode(router)
        var inboxA = await pubsubA.subscribe("lobby").makeAsyncIterator()
        var inboxB = await pubsubB.subscribe("lobby").makeAsyncIterator()
        _ = try await hostB.connect(addressA)
        let peerA = hostA.localPeer
        let peerB = hostB.localPeer
        try await eventually(10, "subscriptions exchanged") {
            let aKnowsB = await pubsubA.peers(in: "lobby").contains(peerB)
            let bKnowsA = await pubsubB.peers(in: "lobby").contains(peerA)
            return aKnowsB && bKnowsA
        }
        try await pubsubA.publish("lobby", data: Array("hello from A".utf8))
        try await pubsubB.publish("lobby", data: Array("hello from B".utf8))
        let atB = try await nextMessage(&inboxB)
        XCTAssertEqual(String(decoding: atB.data, as: UTF8.self), "hello from A")
        XCTAssertEqual(atB.from, peerA)
        let atA = try await nextMessage(&inboxA)
        XCTAssertEqual(String(decoding: atA.data, as: UTF8.self), "hello from B")
        XCTAssertEqual(atA.from, peerB)
        await pubsubA.stop()
        await pubsubB.stop()
        await hostA.close()
        await hostB.close()
    }

    func testGossipsubBetweenTwoNodes() async throws { try await exchange(.gossipsub) }
    func testFloodsubBetweenTwoNodes() async throws { try await exchange(.floodsub) }
}
