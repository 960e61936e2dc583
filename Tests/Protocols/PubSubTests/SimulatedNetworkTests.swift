import Crypto
import Foundation
import Identity
import Multiformats
import TestSupport
import XCTest

@testable import PubSub

/// Many routers wired together in memory, with a virtual clock.
struct SimulatedNetwork {
    var routers: [PeerID: any PubSubRouter] = [:]
    var order: [PeerID] = []
    var delivered: [PeerID: [MessageID: Int]] = [:]
    var now = ContinuousClock.now
    var rng: SplitMix
    /// RPC bytes put on the wire (each with its length prefix), by `deliver`.
    var bytesOnWire = 0

    init(nodes: Int, seed: UInt64, configuration: PubSubConfiguration = .init()) {
        rng = SplitMix(seed: seed)
        for _ in 0..<nodes { addNode(configuration: configuration) }
    }

    /// A new router with its own key and `configuration`.
    @discardableResult
    mutating func addNode(configuration: PubSubConfiguration) -> PeerID {
        let router = makeRouter(localKey: .generateEd25519(), configuration: configuration)
        routers[router.localPeer] = router
        order.append(router.localPeer)
        return router.localPeer
    }

    /// The one way an RPC reaches a router: serialized and decoded like the wire
    /// does (its bytes counted), then handled by `target` at `now`. A target
    /// `discardingMessages` (an attacker that forwards nothing) reads only the rest.
    mutating func deliver(
        _ rpc: Pubsub_Pb_RPC, from sender: PeerID, to target: PeerID, discardingMessages: Bool = false
    ) -> [RouterAction] {
        guard routers[target] != nil else { return [] }
        let bytes: [UInt8] = try! rpc.serializedBytes()
        bytesOnWire += bytes.count + Varint.encodedSize(UInt64(bytes.count))
        // Decoded by the codec, as the service does.
        var decoded = try! PubSubCodec.decode(bytes, limits: .init(routers[target]!.configuration))
        if discardingMessages { decoded.messages = [] }
        return routers[target]!.handle(decoded, from: sender, now: now)
    }

    /// Connects a and b (a dialed b); both get a pubsub stream.
    mutating func connect(_ a: PeerID, _ b: PeerID) {
        let first = routers[a]!.addPeer(b, protocolID: PubSubProtocol.meshsub11, outbound: true)
        let second = routers[b]!.addPeer(a, protocolID: PubSubProtocol.meshsub11, outbound: false)
        run(first, at: a)
        run(second, at: b)
    }

    /// Delivers actions (and everything they cause) until the network is quiet.
    mutating func run(_ actions: [RouterAction], at origin: PeerID) {
        var queue: [(PeerID, RouterAction)] = actions.map { (origin, $0) }
        var steps = 0
        while !queue.isEmpty {
            steps += 1
            precondition(steps < 10_000_000, "network never settles")
            let (node, action) = queue.removeFirst()
            switch action {
            case .deliver(let message):
                delivered[node, default: [:]][message.id, default: 0] += 1
            case .send(let target, let rpc):
                // Over the wire: serialized and decoded by the codec.
                queue += deliver(rpc.wire, from: node, to: target).map { (target, $0) }
            case .connect, .event:
                continue
            }
        }
    }

    /// One heartbeat of every node in turn; `inspect` sees each router right after its
    /// own heartbeat settled, at the heartbeat's time (a later node's heartbeat may prune
    /// it below D_lo again, or graft it above D_hi, until its next one).
    mutating func heartbeat(inspect: (PeerID, any PubSubRouter, ContinuousClock.Instant) -> Void = { _, _, _ in }) {
        now += .seconds(1)
        for peer in order where routers[peer] != nil {
            let actions = routers[peer]!.heartbeat(now: now)
            run(actions, at: peer)
            inspect(peer, routers[peer]!, now)
        }
    }

    mutating func remove(_ peer: PeerID) {
        routers[peer] = nil
        order.removeAll { $0 == peer }
        for other in order { routers[other]!.removePeer(peer, now: now) }
    }
}

final class SimulatedNetworkTests: XCTestCase {
    /// 50 nodes, random connected topology: every message reaches every subscriber once,
    /// meshes settle within [D_lo, D_hi], a vanished node leaves every mesh.
    func testFiftyNodeGossipsub() throws {
        var network = SimulatedNetwork(nodes: 50, seed: 1)
        let nodes = network.order
        // A ring keeps the graph connected; random chords make it dense enough for D_lo.
        var edges = Set<[Int]>()
        for index in 0..<nodes.count { edges.insert([index, (index + 1) % nodes.count].sorted()) }
        while edges.count < 50 * 8 {
            let a = Int(network.rng.next() % 50)
            let b = Int(network.rng.next() % 50)
            if a != b { edges.insert([a, b].sorted()) }
        }
        for edge in edges.sorted(by: { $0.lexicographicallyPrecedes($1) }) {
            network.connect(nodes[edge[0]], nodes[edge[1]])
        }
        for node in nodes {
            let actions = network.routers[node]!.subscribe("t", now: network.now)
            network.run(actions, at: node)
        }
        for _ in 0..<4 { network.heartbeat() }
        let configuration = PubSubConfiguration()
        var degrees: [PeerID: Int] = [:]
        network.heartbeat { node, router, _ in degrees[node] = router.meshPeers("t").count }
        XCTAssertEqual(degrees.count, nodes.count)
        for (node, degree) in degrees {
            XCTAssertTrue((configuration.dLow...configuration.dHigh).contains(degree), "mesh degree \(degree) of \(node)")
        }
        // Each node publishes once; everyone else gets each message exactly once.
        for (index, node) in nodes.enumerated() {
            let actions = try network.routers[node]!.publish(topic: "t", data: Array("m\(index)".utf8), now: network.now)
            network.run(actions, at: node)
        }
        for _ in 0..<3 { network.heartbeat() }  // gossip rounds must not duplicate deliveries
        for node in nodes {
            let counts = network.delivered[node] ?? [:]
            XCTAssertEqual(counts.count, 49, "a node missed messages")
            XCTAssertTrue(counts.values.allSatisfy { $0 == 1 }, "a message was delivered twice")
        }
        // A vanished node is pruned from every mesh.
        let gone = nodes[7]
        network.remove(gone)
        var inspected = 0
        network.heartbeat { node, router, now in
            inspected += 1
            guard let router = router as? GossipsubRouter else { return XCTFail("\(node) is not a gossipsub router") }
            let mesh = router.meshPeers("t")
            XCTAssertFalse(mesh.contains(gone))
            // Below D_lo only when nothing is left to graft (every other
            // neighbour is in the mesh, or in backoff after an earlier prune).
            if mesh.count < configuration.dLow {
                let candidates = router.graftCandidates("t", excluding: Set(mesh), now: now)
                XCTAssertTrue(candidates.isEmpty, "mesh degree \(mesh.count) with \(candidates.count) graftable peers")
            }
        }
        XCTAssertEqual(inspected, nodes.count - 1)
        for node in network.order {
            XCTAssertFalse(network.routers[node]!.meshPeers("t").contains(gone), "\(node) still meshes the vanished node")
        }
    }

    func testCustomMessageIDMakesEqualContentOneMessage() throws {
        var configuration = PubSubConfiguration()
        configuration.messageID = { MessageID(Array(SHA256.hash(data: $0.data))) }
        var network = SimulatedNetwork(nodes: 8, seed: 5, configuration: configuration)
        let nodes = network.order
        for index in 0..<nodes.count {
            network.connect(nodes[index], nodes[(index + 1) % nodes.count])
        }
        for node in nodes {
            network.run(network.routers[node]!.subscribe("t", now: network.now), at: node)
        }
        for _ in 0..<3 { network.heartbeat() }
        // Two publishers, the same text: one message id, seen once everywhere.
        for publisher in [nodes[0], nodes[4]] {
            let actions = try network.routers[publisher]!.publish(topic: "t", data: Array("same".utf8), now: network.now)
            network.run(actions, at: publisher)
        }
        let expected = MessageID(Array(SHA256.hash(data: Array("same".utf8))))
        for node in nodes where node != nodes[0] && node != nodes[4] {
            XCTAssertEqual(network.delivered[node], [expected: 1])
        }
    }

    func testFloodsubReachesEveryoneOnce() throws {
        var configuration = PubSubConfiguration()
        configuration.router = .floodsub
        var network = SimulatedNetwork(nodes: 20, seed: 2, configuration: configuration)
        let nodes = network.order
        for index in 0..<nodes.count {
            network.connect(nodes[index], nodes[(index + 1) % nodes.count])
            network.connect(nodes[index], nodes[(index + 5) % nodes.count])
        }
        for node in nodes { network.run(network.routers[node]!.subscribe("t", now: network.now), at: node) }
        let actions = try network.routers[nodes[0]]!.publish(topic: "t", data: [1, 2, 3], now: network.now)
        network.run(actions, at: nodes[0])
        for node in nodes.dropFirst() {
            XCTAssertEqual(network.delivered[node]?.values.first, 1)
        }
        XCTAssertNil(network.delivered[nodes[0]], "the publisher hears no echo")
    }

    /// A peer sending invalid signatures sinks below the graylist threshold and is ignored.
    func testInvalidSignaturesGraylistTheSender() throws {
        var network = SimulatedNetwork(nodes: 2, seed: 3)
        let (victim, attacker) = (network.order[0], network.order[1])
        network.connect(attacker, victim)
        network.run(network.routers[victim]!.subscribe("t", now: network.now), at: victim)
        network.run(network.routers[attacker]!.subscribe("t", now: network.now), at: attacker)
        var forged = Pubsub_Pb_Message()
        forged.topic = "t"
        forged.from = Data(attacker.bytes)
        forged.data = Data([9])
        forged.signature = Data(repeating: 1, count: 64)
        for index in 0..<20 {
            forged.seqno = Data([UInt8(index)])
            var rpc = Pubsub_Pb_RPC()
            rpc.publish = [forged]
            _ = network.routers[victim]!.handle(rpc, from: attacker, now: network.now)
        }
        let configuration = PubSubConfiguration()
        let graylist = configuration.scoreThresholds.graylistThreshold
        XCTAssertLessThan(network.routers[victim]!.score(of: attacker, now: network.now), graylist)
        // P4 is the squared count of invalid messages times its weight: the first n
        // with that below the graylist threshold are checked, the rest are not even read.
        let weight = try XCTUnwrap(configuration.scoreParameters.defaultTopic).invalidMessageDeliveriesWeight
        let checked = (1...20).first { Double($0 * $0) * weight < graylist }!
        XCTAssertEqual(network.routers[victim]!.counters.rejected[.invalidSignature], checked)
        XCTAssertEqual(network.routers[victim]!.counters.graylistedRPCs, 20 - checked)
        // A valid message from the graylisted peer is ignored now.
        let actions = try network.routers[attacker]!.publish(topic: "t", data: [7], now: network.now)
        network.run(actions, at: attacker)
        XCTAssertNil(network.delivered[victim])
    }

    func testOversizedMessagesAreRejected() throws {
        var configuration = PubSubConfiguration()
        configuration.maxMessageSize = 100
        var network = SimulatedNetwork(nodes: 2, seed: 4, configuration: configuration)
        let (a, b) = (network.order[0], network.order[1])
        network.connect(a, b)
        XCTAssertThrowsError(try network.routers[a]!.publish(topic: "t", data: [UInt8](repeating: 0, count: 101), now: network.now))
        var big = Pubsub_Pb_Message()
        big.topic = "t"
        big.data = Data(repeating: 0, count: 101)
        var rpc = Pubsub_Pb_RPC()
        rpc.publish = [big]
        _ = network.routers[b]!.handle(rpc, from: a, now: network.now)
        XCTAssertEqual(network.routers[b]!.counters.rejected[.tooLarge], 1)
    }

    /// A flood of IHAVE and GRAFT from one peer stays bounded and the node keeps delivering.
    func testIHaveAndGraftFloodIsBounded() throws {
        var network = SimulatedNetwork(nodes: 3, seed: 5)
        let (victim, attacker, honest) = (network.order[0], network.order[1], network.order[2])
        network.connect(attacker, victim)
        network.connect(honest, victim)
        for node in network.order { network.run(network.routers[node]!.subscribe("t", now: network.now), at: node) }
        var iwantRequested = 0
        for round in 0..<1000 {
            var ihave = Pubsub_Pb_ControlIHave()
            ihave.topicID = "t"
            ihave.messageIds = (0..<100).map { Data([UInt8(round % 256), UInt8(round / 256), UInt8($0)]) }
            var graft = Pubsub_Pb_ControlGraft()
            graft.topicID = "t"
            var rpc = Pubsub_Pb_RPC()
            rpc.control.ihave = [ihave]
            rpc.control.graft = [graft]
            for action in network.routers[victim]!.handle(rpc, from: attacker, now: network.now) {
                if case .send(_, let reply) = action { iwantRequested += reply.wire.control.iwant.reduce(0) { $0 + $1.messageIds.count } }
            }
        }
        // At most maxIHaveMessages IHAVEs are answered per heartbeat.
        XCTAssertLessThanOrEqual(iwantRequested, PubSubConfiguration().maxIHaveMessages * 100)
        XCTAssertGreaterThan(network.routers[victim]!.counters.ignoredIHave, 900)
        let actions = try network.routers[honest]!.publish(topic: "t", data: [1], now: network.now)
        network.run(actions, at: honest)
        XCTAssertEqual(network.delivered[victim]?.count, 1)
    }

    /// However many ids a peer announces, we ask it for at most maxIHaveLength per heartbeat.
    func testIWantPerHeartbeatIsBounded() {
        var network = SimulatedNetwork(nodes: 2, seed: 7)
        let (victim, announcer) = (network.order[0], network.order[1])
        network.connect(announcer, victim)
        for node in network.order { network.run(network.routers[node]!.subscribe("t", now: network.now), at: node) }
        let limit = PubSubConfiguration().maxIHaveLength
        func asked(round: Int) -> Int {
            var rpc = Pubsub_Pb_RPC()
            rpc.control.ihave = (0..<PubSubConfiguration().maxIHaveMessages).map { entry in
                var ihave = Pubsub_Pb_ControlIHave()
                ihave.topicID = "t"
                ihave.messageIds = (0..<limit).map { Data([UInt8(round), UInt8(entry), UInt8($0 >> 8), UInt8($0 & 0xff)]) }
                return ihave
            }
            return network.routers[victim]!.handle(rpc, from: announcer, now: network.now).reduce(0) { total, action in
                guard case .send(_, let reply) = action else { return total }
                return total + reply.wire.control.iwant.reduce(0) { $0 + $1.messageIds.count }
            }
        }
        XCTAssertEqual(asked(round: 1), limit)
        XCTAssertEqual(asked(round: 2), 0, "the budget of this heartbeat is spent")
        _ = network.routers[victim]!.heartbeat(now: network.now + .seconds(1))
        XCTAssertEqual(asked(round: 3), limit, "a new heartbeat, a new budget")
    }

    func testGarbageRPCsNeverCrash() {
        var router = GossipsubRouter(localKey: .generateEd25519())
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        _ = router.addPeer(peer, protocolID: PubSubProtocol.meshsub11, outbound: false)
        var rng = SplitMix(seed: 6)
        var malformed = 0
        for _ in 0..<5000 {
            let bytes = (0..<Int(rng.next() % 200)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if let rpc = try? PubSubCodec.decode(bytes, limits: .init(router.configuration)) {
                _ = router.handle(rpc, from: peer, now: .now)
            } else {
                malformed += 1
                router.malformedRPC(from: peer)
            }
        }
        XCTAssertGreaterThan(malformed, 0)
        XCTAssertEqual(router.counters.malformedRPCs, malformed)
    }
}
