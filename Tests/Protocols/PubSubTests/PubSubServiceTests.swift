import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import TestSupport
import Transport
import XCTest

@testable import PubSub

/// Reads the next message of a subscription within a deadline.
func nextMessage(_ iterator: inout AsyncStream<PubSubMessage>.AsyncIterator, within seconds: Double = 10)
    async throws -> PubSubMessage
{
    let box = IteratorBox(iterator)
    let message = try await withDeadline(seconds) { await box.next() }
    iterator = box.iterator
    return try XCTUnwrap(message)
}

final class EventIteratorBox: @unchecked Sendable {
    // Safe: used by one task at a time (the test awaits it before touching it again).
    var iterator: AsyncStream<PubSubEvent>.AsyncIterator
    init(_ iterator: AsyncStream<PubSubEvent>.AsyncIterator) { self.iterator = iterator }
    func next() async -> PubSubEvent? { await iterator.next() }
}

final class IteratorBox: @unchecked Sendable {
    // Safe: used by one task at a time (the test awaits it before touching it again).
    var iterator: AsyncStream<PubSubMessage>.AsyncIterator
    init(_ iterator: AsyncStream<PubSubMessage>.AsyncIterator) { self.iterator = iterator }
    func next() async -> PubSubMessage? { await iterator.next() }
}

/// Waits (bounded) until each of two nodes lists the other as a peer on `topic`.
func waitForEachOther(
    _ a: PubSubService, _ peerA: PeerID, _ b: PubSubService, _ peerB: PeerID, on topic: String, _ what: String
) async throws {
    let both = try await withDeadline(10) {
        let aKnowsB = await a.waitUntilSubscribed(peerB, to: topic)
        let bKnowsA = await b.waitUntilSubscribed(peerA, to: topic)
        return aKnowsB && bKnowsA
    }
    XCTAssertTrue(both, what)
}

final class PubSubServiceTests: XCTestCase {
    func makeNode(
        _ router: RouterKind, memory: MemoryNetwork? = nil, _ configure: (inout PubSubConfiguration) -> Void = { _ in }
    ) async throws -> (Libp2pHost, PubSubService, Multiaddr) {
        let group = MultiThreadedEventLoopGroup.singleton
        let (host, address) =
            if let memory {
                try await makeTestHost(
                    group: group, transports: [MemoryTransport(group: group, network: memory)],
                    listen: Multiaddr([.memory(0)]))
            } else {
                try await makeTestHost(group: group)
            }
        var configuration = PubSubConfiguration()
        configuration.router = router
        configure(&configuration)
        let pubsub = try PubSubService(host: host, configuration: configuration)
        pubsub.start()
        return (host, pubsub, address)
    }

    func exchange(_ router: RouterKind, memory: MemoryNetwork? = nil) async throws {
        let (hostA, pubsubA, addressA) = try await makeNode(router, memory: memory)
        let (hostB, pubsubB, _) = try await makeNode(router, memory: memory)
        var inboxA = await pubsubA.subscribe("lobby").makeAsyncIterator()
        var inboxB = await pubsubB.subscribe("lobby").makeAsyncIterator()
        _ = try await hostB.connect(addressA)
        let peerA = hostA.localPeer
        let peerB = hostB.localPeer
        try await waitForEachOther(pubsubA, peerA, pubsubB, peerB, on: "lobby", "subscriptions exchanged")
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

    /// Peer exchange end to end: B's mesh is full, so B answers A's GRAFT with a
    /// PRUNE naming C with C's signed peer record (learnt through identify); A
    /// trusts B (application score) and dials C, of which it knew nothing.
    func testPeerExchangeDialsThePeerOfASignedRecord() async throws {
        let (hostB, pubsubB, addressB) = try await makeNode(.gossipsub) { configuration in
            configuration.d = 1
            configuration.dLow = 1
            configuration.dHigh = 1
            configuration.dScore = 0
            configuration.dOut = 0
        }
        let (hostC, pubsubC, _) = try await makeNode(.gossipsub)
        let peerB = hostB.localPeer
        let peerC = hostC.localPeer
        let (hostA, pubsubA, _) = try await makeNode(.gossipsub) { configuration in
            configuration.scoreParameters.appSpecificScore = { $0 == peerB ? 100 : 0 }
        }
        _ = await pubsubB.subscribe("lobby")
        _ = await pubsubC.subscribe("lobby")
        _ = try await hostC.connect(addressB)
        try await waitUntil("C in B's mesh, and B holding C's signed record", seconds: 10) {
            await pubsubB.mesh("lobby") == [peerC] && hostB.peerStore.info(peerC)?.signedPeerRecord != nil
        }
        XCTAssertNil(hostA.peerStore.info(peerC), "A knows nothing of C yet")
        _ = await pubsubA.subscribe("lobby")
        _ = try await hostA.connect(addressB)
        try await waitUntil("A dialed C from B's peer exchange", seconds: 15) { hostA.connection(to: peerC) != nil }
        XCTAssertNotNil(hostA.peerStore.info(peerC)?.signedPeerRecord)
        for pubsub in [pubsubA, pubsubB, pubsubC] { await pubsub.stop() }
        for host in [hostA, hostB, hostC] { await host.close() }
    }

    /// Joins and leaves are events: B subscribing, unsubscribing, subscribing again and
    /// then disconnecting reach A in that order; publishing with nobody on the topic
    /// reaches no peer, and with B there reaches one.
    func testSubscriptionEventsAndPublishReach() async throws {
        let memory = MemoryNetwork()
        let (hostA, pubsubA, addressA) = try await makeNode(.gossipsub, memory: memory)
        let (hostB, pubsubB, _) = try await makeNode(.gossipsub, memory: memory)
        let peerB = hostB.localPeer
        var events = await pubsubA.events().makeAsyncIterator()
        _ = await pubsubA.subscribe("lobby")
        _ = try await hostB.connect(addressA)
        let reachedNobody = try await pubsubA.publish("lobby", data: Array("anyone?".utf8))
        XCTAssertEqual(reachedNobody, 0, "B is connected but not on the topic")
        _ = await pubsubB.subscribe("lobby")
        let box = EventIteratorBox(events)
        let joined = try await withDeadline(10) { await box.next() }
        XCTAssertEqual(joined, .subscribed(peer: peerB, topic: "lobby"))
        let reached = try await pubsubA.publish("lobby", data: Array("hello".utf8))
        XCTAssertEqual(reached, 1)
        await pubsubB.unsubscribe("lobby")
        let left = try await withDeadline(10) { await box.next() }
        XCTAssertEqual(left, .unsubscribed(peer: peerB, topic: "lobby"))
        let remaining = await pubsubA.peers(in: "lobby")
        XCTAssertEqual(remaining, [])
        _ = await pubsubB.subscribe("lobby")
        let rejoined = try await withDeadline(10) { await box.next() }
        XCTAssertEqual(rejoined, .subscribed(peer: peerB, topic: "lobby"))
        await hostB.close()
        let gone = try await withDeadline(10) { await box.next() }
        XCTAssertEqual(gone, .unsubscribed(peer: peerB, topic: "lobby"), "a disconnect is a leave")
        events = box.iterator
        await pubsubA.stop()
        let ended = await events.next()
        XCTAssertNil(ended, "the events end when the service stops")
        await pubsubB.stop()
        await hostA.close()
    }

    func testGossipsubBetweenTwoNodes() async throws { try await exchange(.gossipsub) }
    func testGossipsubInMemory() async throws { try await exchange(.gossipsub, memory: MemoryNetwork()) }

    /// Two connections between the same peers (as when both dial at once): when
    /// the one carrying the pubsub streams closes, pubsub moves to the other.
    func testPubSubMovesToTheRemainingConnection() async throws {
        let (hostA, pubsubA, addressA) = try await makeNode(.gossipsub)
        let (hostB, pubsubB, _) = try await makeNode(.gossipsub)
        var inboxA = await pubsubA.subscribe("lobby").makeAsyncIterator()
        var inboxB = await pubsubB.subscribe("lobby").makeAsyncIterator()
        let first = try await hostB.connect(addressA)
        let peerA = hostA.localPeer
        let peerB = hostB.localPeer
        try await waitForEachOther(pubsubA, peerA, pubsubB, peerB, on: "lobby", "subscriptions exchanged")
        // A second connection (no /p2p: not matched to the live one), then the first closes.
        let second = try await hostB.connect(addressA.withoutP2P)
        XCTAssertNotIdentical(first, second)
        await first.close()
        try await waitUntil("both sides down to the second connection", seconds: 10) {
            hostA.connections.count == 1 && hostB.connections.count == 1
        }
        // Both services have moved their streams there: until a service has seen the
        // close, it still lists the peer (from the first connection) and a line
        // published in that instant leaves on the closed stream.
        try await waitUntil("both services' streams on the second connection", seconds: 10) {
            let onA = await pubsubA.core.outboundConnectionID(peerB)
            let onB = await pubsubB.core.outboundConnectionID(peerA)
            return onA != nil && onA == hostA.connections.first?.id && onB != nil && onB == hostB.connections.first?.id
        }
        // Lines still flow both ways, over the second connection.
        try await waitForEachOther(pubsubA, peerA, pubsubB, peerB, on: "lobby", "pubsub peers again on both sides")
        try await pubsubA.publish("lobby", data: Array("from A".utf8))
        try await pubsubB.publish("lobby", data: Array("from B".utf8))
        let atB = try await nextMessage(&inboxB)
        XCTAssertEqual(atB.from, peerA)
        let atA = try await nextMessage(&inboxA)
        XCTAssertEqual(atA.from, peerB)
        await pubsubA.stop()
        await pubsubB.stop()
        await hostA.close()
        await hostB.close()
    }
    func testFloodsubBetweenTwoNodes() async throws { try await exchange(.floodsub) }

    /// A message published to three peers is encoded once, and the same bytes
    /// go to each (it was encoded once per peer, on the core's actor).
    func encodesOncePerPublishedMessage(_ router: RouterKind) async throws {
        let memory = MemoryNetwork()
        // The hub is on no topic: it sends nothing but what it publishes.
        let (hub, hubPubSub, hubAddress) = try await makeNode(router, memory: memory)
        var leaves: [(host: Libp2pHost, pubsub: PubSubService, inbox: AsyncStream<PubSubMessage>.AsyncIterator)] = []
        for _ in 0..<3 {
            let (host, pubsub, _) = try await makeNode(router, memory: memory)
            let inbox = await pubsub.subscribe("lobby").makeAsyncIterator()
            _ = try await host.connect(hubAddress)
            leaves.append((host, pubsub, inbox))
        }
        for leaf in leaves {
            let peer = leaf.host.localPeer
            let subscribed = try await withDeadline(10) { await hubPubSub.waitUntilSubscribed(peer, to: "lobby") }
            XCTAssertTrue(subscribed)
            try await waitUntil("the hub's stream to the leaf", seconds: 10) {
                await hubPubSub.core.outboundConnectionID(peer) != nil
            }
        }
        let before = hubPubSub.encodedRPCCount
        let sentTo = try await hubPubSub.publish("lobby", data: Array("one for all".utf8))
        XCTAssertEqual(sentTo, 3)
        for index in leaves.indices {
            let message = try await nextMessage(&leaves[index].inbox)
            XCTAssertEqual(String(decoding: message.data, as: UTF8.self), "one for all")
            XCTAssertEqual(message.from, hub.localPeer)
        }
        XCTAssertEqual(hubPubSub.encodedRPCCount - before, 1, "one encoding for the three peers")
        for leaf in leaves { await leaf.pubsub.stop() }
        await hubPubSub.stop()
        for leaf in leaves { await leaf.host.close() }
        await hub.close()
    }

    func testGossipsubEncodesAPublishedMessageOnce() async throws { try await encodesOncePerPublishedMessage(.gossipsub) }
    func testFloodsubEncodesAPublishedMessageOnce() async throws { try await encodesOncePerPublishedMessage(.floodsub) }
}
