import Foundation
import Identity
import Multiformats
import XCTest

@testable import PubSub

/// Gossipsub v1.1 peer scoring, term by term, and what the thresholds do, on
/// routers without sockets and with a virtual clock.
final class PeerScoreTests: XCTestCase {
    /// A router subscribed to "t" with `count` gossipsub peers subscribed too.
    struct Bench {
        var router: GossipsubRouter
        var peers: [PeerID]
        var now = ContinuousClock.now

        init(
            count: Int, configuration: PubSubConfiguration = .init(), outbound: Bool = false,
            protocolID: (Int) -> String = { _ in PubSubProtocol.meshsub11 }, ip: (Int) -> String? = { _ in nil }
        ) {
            router = GossipsubRouter(localKey: .generateEd25519(), configuration: configuration)
            peers = (0..<count).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
            for (index, peer) in peers.enumerated() {
                _ = router.addPeer(peer, protocolID: protocolID(index), outbound: outbound, ip: ip(index))
                var rpc = Pubsub_Pb_RPC()
                rpc.subscriptions = [Wire.subOpts("t", subscribe: true)]
                _ = router.handle(rpc, from: peer, now: now)
            }
            _ = router.subscribe("t", now: now)
        }

        func score(_ peer: PeerID) -> Double { router.score(of: peer, now: now) }

        mutating func advance(_ seconds: Int) -> [RouterAction] {
            var actions: [RouterAction] = []
            for _ in 0..<seconds {
                now += .seconds(1)
                actions += router.heartbeat(now: now)
            }
            return actions
        }

        /// A message signed by a fresh author, sent by `peer`.
        mutating func deliver(from peer: PeerID, data: [UInt8] = Array(UUID().uuidString.utf8)) -> [RouterAction] {
            send(Self.signed(data), from: peer)
        }

        /// A message signed by a fresh author.
        static func signed(_ data: [UInt8]) -> Pubsub_Pb_Message {
            let key = PrivateKey.generateEd25519()
            var message = RawMessage(
                from: PeerID(publicKey: key.publicKey).bytes, data: data, seqno: (0..<8).map { _ in UInt8.random(in: 0...255) },
                topic: "t")
            try! MessageSigning.sign(&message, with: key)
            return PubSubCodec.protobuf(message)
        }

        mutating func send(_ message: Pubsub_Pb_Message, from peer: PeerID) -> [RouterAction] {
            var rpc = Pubsub_Pb_RPC()
            rpc.publish = [message]
            return router.handle(rpc, from: peer, now: now)
        }

        mutating func control(_ control: Pubsub_Pb_ControlMessage, from peer: PeerID) -> [RouterAction] {
            var rpc = Pubsub_Pb_RPC()
            rpc.control = control
            return router.handle(rpc, from: peer, now: now)
        }
    }

    /// A GRAFT for topic "t" (with the subscription, for peers not yet known on the topic).
    static func graftRPC(subscribing: Bool = false) -> Pubsub_Pb_RPC {
        var rpc = Pubsub_Pb_RPC()
        if subscribing { rpc.subscriptions = [Wire.subOpts("t", subscribe: true)] }
        var graft = Pubsub_Pb_ControlGraft()
        graft.topicID = "t"
        rpc.control.graft = [graft]
        return rpc
    }

    static func sends(_ actions: [RouterAction], to peer: PeerID) -> [Pubsub_Pb_RPC] {
        actions.compactMap { action in
            if case .send(peer, let rpc) = action { return rpc.wire }
            return nil
        }
    }

    /// P1: a mesh peer's score grows with its time in the mesh, up to the cap.
    func testTimeInMeshRaisesTheScoreUpToTheCap() {
        var configuration = PubSubConfiguration()
        configuration.scoreParameters.defaultTopic?.timeInMeshCap = 10
        var bench = Bench(count: 1, configuration: configuration)
        let peer = bench.peers[0]
        XCTAssertEqual(bench.router.meshPeers("t"), [peer])
        XCTAssertEqual(bench.score(peer), 0)
        _ = bench.advance(5)
        XCTAssertEqual(bench.score(peer), 5 * 0.01, accuracy: 1e-9)
        _ = bench.advance(20)
        XCTAssertEqual(bench.score(peer), 10 * 0.01, accuracy: 1e-9, "capped at timeInMeshCap quanta")
    }

    /// P2: first deliveries raise the score, capped, and decay every interval.
    func testFirstDeliveriesRaiseTheScoreAndDecay() {
        var configuration = PubSubConfiguration()
        configuration.scoreParameters.defaultTopic?.timeInMeshWeight = 0
        configuration.scoreParameters.defaultTopic?.firstMessageDeliveriesCap = 3
        var bench = Bench(count: 2, configuration: configuration)
        let (first, second) = (bench.peers[0], bench.peers[1])
        let message = Bench.signed([1])
        _ = bench.send(message, from: first)
        _ = bench.send(message, from: second)
        XCTAssertEqual(bench.score(first), 1)
        XCTAssertEqual(bench.score(second), 0, "a duplicate is no first delivery")
        for index in 0..<5 { _ = bench.deliver(from: first, data: [2, UInt8(index)]) }
        XCTAssertEqual(bench.score(first), 3, "capped")
        _ = bench.advance(1)
        XCTAssertEqual(bench.score(first), 1.5, "decayed by half")
    }

    /// P3 and P3b: a silent mesh peer, once the activation time has passed, scores
    /// negative, is pruned at the next heartbeat and keeps a mesh-failure penalty.
    func testMeshDeliveryDeficitPrunesAndLeavesAFailurePenalty() {
        var configuration = PubSubConfiguration()
        configuration.scoreParameters.defaultTopic?.timeInMeshWeight = 0
        configuration.scoreParameters.defaultTopic?.meshMessageDeliveriesWeight = -1
        configuration.scoreParameters.defaultTopic?.meshMessageDeliveriesThreshold = 4
        configuration.scoreParameters.defaultTopic?.meshMessageDeliveriesActivation = .seconds(5)
        configuration.scoreParameters.defaultTopic?.meshFailurePenaltyWeight = -1
        configuration.scoreParameters.defaultTopic?.meshFailurePenaltyDecay = 1
        configuration.scoreParameters.defaultTopic?.firstMessageDeliveriesWeight = 0
        configuration.scoreParameters.defaultTopic?.meshMessageDeliveriesDecay = 1
        var bench = Bench(count: 2, configuration: configuration)
        let (silent, busy) = (bench.peers[0], bench.peers[1])
        XCTAssertEqual(Set(bench.router.meshPeers("t")), [silent, busy])
        for index in 0..<4 { _ = bench.deliver(from: busy, data: [3, UInt8(index)]) }
        _ = bench.advance(4)
        XCTAssertEqual(bench.score(silent), 0, "not active before the activation time")
        let actions = bench.advance(2)
        // Activated: deficit 4, squared, weight -1; pruned at once, and the deficit stays as P3b.
        XCTAssertFalse(bench.router.meshPeers("t").contains(silent))
        XCTAssertTrue(bench.router.meshPeers("t").contains(busy), "the busy peer met the threshold")
        XCTAssertTrue(Self.sends(actions, to: silent).contains { !$0.control.prune.isEmpty })
        XCTAssertEqual(bench.score(silent), -16)
        XCTAssertEqual(bench.score(busy), 0)
    }

    /// P4: a message the validator rejects counts against its sender, and against
    /// everyone who forwards it later; squared.
    func testInvalidMessagesCountForEverySender() {
        var bench = Bench(count: 2)
        bench.router.setValidator(topic: "t") { $0.data.first == 0 ? .reject : .accept }
        let (first, second) = (bench.peers[0], bench.peers[1])
        let bad = Bench.signed([0])
        _ = bench.send(bad, from: first)
        _ = bench.send(bad, from: second)
        let weight = PubSubConfiguration().scoreParameters.defaultTopic!.invalidMessageDeliveriesWeight
        XCTAssertEqual(bench.score(first), weight)
        XCTAssertEqual(bench.score(second), weight)
        _ = bench.send(Bench.signed([0, 1]), from: first)
        XCTAssertEqual(bench.score(first), 4 * weight)
    }

    /// P5: the application's score counts with its weight.
    func testApplicationSpecificScore() {
        var configuration = PubSubConfiguration()
        var bench = Bench(count: 2, configuration: configuration)
        let favourite = bench.peers[0]
        configuration.scoreParameters.appSpecificScore = { $0 == favourite ? 50 : -1 }
        configuration.scoreParameters.appSpecificWeight = 2
        bench.router = GossipsubRouter(localKey: .generateEd25519(), configuration: configuration)
        for peer in bench.peers { _ = bench.router.addPeer(peer, protocolID: PubSubProtocol.meshsub11, outbound: false) }
        XCTAssertEqual(bench.score(favourite), 100)
        XCTAssertEqual(bench.score(bench.peers[1]), -2)
    }

    /// P6: more peers on one IP than the threshold cost each the squared surplus;
    /// loopback is exempt.
    func testIPColocation() {
        let parameters = PubSubConfiguration().scoreParameters
        let crowd = parameters.ipColocationFactorThreshold + 2
        let bench = Bench(count: crowd + 1, ip: { $0 < crowd ? "192.0.2.7" : "192.0.2.8" })
        for peer in bench.peers.prefix(crowd) {
            XCTAssertEqual(bench.score(peer), 4 * parameters.ipColocationFactorWeight)
        }
        XCTAssertEqual(bench.score(bench.peers[crowd]), 0)
        let local = Bench(count: crowd, ip: { _ in "127.0.0.1" })
        XCTAssertTrue(local.peers.allSatisfy { local.score($0) == 0 })
    }

    /// P7: GRAFT during backoff is answered with PRUNE and penalised, doubly
    /// right after the prune; repeated, it graylists the peer.
    func testGraftDuringBackoffIsPenalised() {
        var bench = Bench(count: 1)
        let peer = bench.peers[0]
        var prune = Pubsub_Pb_ControlMessage()
        prune.prune = [{
            var p = Pubsub_Pb_ControlPrune()
            p.topicID = "t"
            p.backoff = 60
            return p
        }()]
        _ = bench.control(prune, from: peer)
        XCTAssertTrue(bench.router.meshPeers("t").isEmpty)
        let graft = Self.graftRPC().control
        let reply = bench.control(graft, from: peer)
        XCTAssertTrue(Self.sends(reply, to: peer).contains { $0.control.prune.first?.topicID == "t" })
        XCTAssertTrue(bench.router.meshPeers("t").isEmpty)
        // Two penalties (within the flood threshold), at threshold 2: no score yet.
        XCTAssertEqual(bench.score(peer), 0)
        _ = bench.control(graft, from: peer)
        // Four penalties: (4 - 2)^2 * -10.
        XCTAssertEqual(bench.score(peer), -40)
        _ = bench.control(graft, from: peer)
        XCTAssertLessThan(bench.score(peer), PubSubConfiguration().scoreThresholds.graylistThreshold)
        XCTAssertEqual(bench.control(graft, from: peer).count, 0, "graylisted: ignored")
    }

    /// P7: a peer that announces a message in IHAVE and never sends it after our IWANT.
    func testBrokenIWantPromiseIsPenalised() {
        var configuration = PubSubConfiguration()
        configuration.scoreParameters.behaviourPenaltyThreshold = 0
        configuration.scoreParameters.defaultTopic?.timeInMeshWeight = 0
        var bench = Bench(count: 2, configuration: configuration)
        let (liar, honest) = (bench.peers[0], bench.peers[1])
        func ihave(_ message: Pubsub_Pb_Message) -> (Pubsub_Pb_ControlMessage, Data) {
            let id = Data(bench.router.messageID(message).bytes)
            var control = Pubsub_Pb_ControlMessage()
            control.ihave = [{
                var i = Pubsub_Pb_ControlIHave()
                i.topicID = "t"
                i.messageIds = [id]
                return i
            }()]
            return (control, id)
        }
        // The liar announces a message nobody ever sends; the honest peer sends what it announced.
        let (lie, lieID) = ihave(Bench.signed([5]))
        let asked = bench.control(lie, from: liar)
        XCTAssertEqual(Self.sends(asked, to: liar).first?.control.iwant.first?.messageIds, [lieID])
        let real = Bench.signed([6])
        _ = bench.control(ihave(real).0, from: honest)
        _ = bench.send(real, from: honest)
        _ = bench.advance(4)
        XCTAssertEqual(bench.router.counters.brokenPromises, 1)
        XCTAssertLessThan(bench.score(liar), 0)
        XCTAssertGreaterThanOrEqual(bench.score(honest), 0)
    }

    /// Thresholds: below the gossip threshold no IHAVE is sent to or taken from a
    /// peer; below the publish threshold it gets no flood-published messages.
    func testGossipAndPublishThresholds() throws {
        var configuration = PubSubConfiguration()
        configuration.d = 1
        configuration.dLow = 1
        configuration.dHigh = 1
        configuration.dScore = 1
        configuration.dLazy = 10
        configuration.scoreParameters.defaultTopic?.timeInMeshWeight = 0
        var bench = Bench(count: 4, configuration: configuration)
        let members = bench.router.meshPeers("t")
        XCTAssertEqual(members.count, 1)
        let outside = bench.peers.filter { !members.contains($0) }
        let (gossipless, unpublished, fine) = (outside[0], outside[1], outside[2])
        // Two invalid messages: -40, below gossip (-10), above publish (-50).
        for index in 0..<2 { _ = bench.send(Bench.signed([UInt8(index)]).withBadSignature(), from: gossipless) }
        // Three: -90, below publish and graylist.
        for index in 0..<3 { _ = bench.send(Bench.signed([9, UInt8(index)]).withBadSignature(), from: unpublished) }
        XCTAssertEqual(bench.score(gossipless), -40)
        let published = try bench.router.publish(topic: "t", data: [1], now: bench.now)
        XCTAssertFalse(Self.sends(published, to: gossipless).isEmpty, "above the publish threshold")
        XCTAssertTrue(Self.sends(published, to: unpublished).isEmpty, "below the publish threshold")
        XCTAssertFalse(Self.sends(published, to: fine).isEmpty)
        let gossip = bench.advance(1)
        XCTAssertFalse(Self.sends(gossip, to: fine).filter { !$0.control.ihave.isEmpty }.isEmpty)
        XCTAssertTrue(Self.sends(gossip, to: gossipless).filter { !$0.control.ihave.isEmpty }.isEmpty)
        // Its IHAVEs are ignored too.
        var ihave = Pubsub_Pb_ControlMessage()
        ihave.ihave = [{
            var i = Pubsub_Pb_ControlIHave()
            i.topicID = "t"
            i.messageIds = [Data([1, 2, 3])]
            return i
        }()]
        XCTAssertTrue(bench.control(ihave, from: gossipless).isEmpty)
        XCTAssertFalse(bench.control(ihave, from: fine).isEmpty)
    }

    /// An oversubscribed mesh keeps the D_score best peers; the pruned get peer exchange.
    func testOversubscribedMeshKeepsTheBestAndExchangesPeers() {
        var configuration = PubSubConfiguration()
        var favourites: Set<PeerID> = []
        let ids = (0..<14).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        favourites = Set(ids.prefix(configuration.dScore))
        configuration.scoreParameters.appSpecificScore = { [favourites] in favourites.contains($0) ? 1 : 0 }
        var router = GossipsubRouter(localKey: .generateEd25519(), configuration: configuration)
        var now = ContinuousClock.now
        _ = router.subscribe("t", now: now)
        let graft = Self.graftRPC(subscribing: true)
        // Outbound peers are accepted beyond D_hi, so the mesh overfills.
        for peer in ids { _ = router.addPeer(peer, protocolID: PubSubProtocol.meshsub11, outbound: true) }
        for peer in ids { _ = router.handle(graft, from: peer, now: now) }
        XCTAssertEqual(router.meshPeers("t").count, 14)
        now += .seconds(1)
        let actions = router.heartbeat(now: now)
        let mesh = Set(router.meshPeers("t"))
        XCTAssertEqual(mesh.count, configuration.d)
        XCTAssertTrue(favourites.isSubset(of: mesh), "the best-scoring peers stay")
        let pruned = ids.filter { !mesh.contains($0) }
        XCTAssertEqual(pruned.count, 14 - configuration.d)
        for peer in pruned {
            let prune = try? XCTUnwrap(Self.sends(actions, to: peer).first { !$0.control.prune.isEmpty }?.control.prune.first)
            XCTAssertEqual(prune?.backoff, 60)
            let exchanged = Set(prune?.peers.map { Array($0.peerID) } ?? [])
            XCTAssertFalse(exchanged.isEmpty, "peer exchange on prune")
            XCTAssertFalse(exchanged.contains(peer.bytes))
            XCTAssertTrue(exchanged.isSubset(of: Set(mesh.map(\.bytes))))
        }
    }

    /// Peer exchange is followed only for a pruner scoring at least the accept-PX threshold.
    func testPeerExchangeNeedsATrustedPruner() {
        var configuration = PubSubConfiguration()
        let trusted = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        configuration.scoreParameters.appSpecificScore = { $0 == trusted ? 100 : 0 }
        var router = GossipsubRouter(localKey: .generateEd25519(), configuration: configuration)
        let stranger = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        for peer in [trusted, stranger] { _ = router.addPeer(peer, protocolID: PubSubProtocol.meshsub11, outbound: true) }
        let keys = (0..<20).map { _ in PrivateKey.generateEd25519() }
        let offered = keys.map { PeerID(publicKey: $0.publicKey) }
        let address = try! Multiaddr("/ip4/192.0.2.5/tcp/4001")
        // The first offered peer comes with its signed record, the second with a forged one.
        let genuine = try! PeerRecord(key: keys[0], addresses: [address]).sealed(with: keys[0])
        let forged = try! PeerRecord(peerID: offered[1], seq: 1, addresses: [address]).sealed(with: keys[2])
        var rpc = Pubsub_Pb_RPC()
        rpc.control.prune = [{
            var p = Pubsub_Pb_ControlPrune()
            p.topicID = "t"
            p.backoff = 60
            p.peers = offered.enumerated().map { index, peer in
                var info = Pubsub_Pb_PeerInfo()
                info.peerID = Data(peer.bytes)
                if index == 0 { info.signedPeerRecord = Data(genuine) }
                if index == 1 { info.signedPeerRecord = Data(forged) }
                return info
            }
            return p
        }()]
        func dials(_ actions: [RouterAction]) -> [PeerID: PeerRecord?] {
            var out: [PeerID: PeerRecord?] = [:]
            for case .connect(let peer, let record, _) in actions { out[peer] = record }
            return out
        }
        XCTAssertTrue(dials(router.handle(rpc, from: stranger, now: .now)).isEmpty)
        let dialed = dials(router.handle(rpc, from: trusted, now: .now))
        XCTAssertEqual(dialed.count, configuration.prunePeers)
        XCTAssertTrue(Set(dialed.keys).isSubset(of: Set(offered)))
        XCTAssertEqual(dialed[offered[0]]??.addresses, [address], "a verified record's addresses")
        XCTAssertNotNil(dialed[offered[1]], "the peer id still counts")
        XCTAssertNil(dialed[offered[1]]!, "a forged record is dropped")
    }

    /// Our PRUNE carries the signed records we hold of the exchanged peers.
    func testPeerExchangeCarriesSignedRecords() {
        var configuration = PubSubConfiguration()
        configuration.dHigh = 2
        configuration.d = 2
        configuration.dLow = 1
        configuration.dScore = 0
        configuration.dOut = 0
        let keys = (0..<4).map { _ in PrivateKey.generateEd25519() }
        let ids = keys.map { PeerID(publicKey: $0.publicKey) }
        let records = Dictionary(uniqueKeysWithValues: zip(ids, keys.map {
            try! PeerRecord(key: $0, addresses: [try! Multiaddr("/ip4/192.0.2.9/tcp/1")]).sealed(with: $0)
        }))
        var router = GossipsubRouter(localKey: .generateEd25519(), configuration: configuration)
        router.signedRecord = { records[$0] }
        var now = ContinuousClock.now
        _ = router.subscribe("t", now: now)
        let graft = Self.graftRPC(subscribing: true)
        for peer in ids { _ = router.addPeer(peer, protocolID: PubSubProtocol.meshsub12, outbound: true) }
        for peer in ids { _ = router.handle(graft, from: peer, now: now) }
        now += .seconds(1)
        let actions = router.heartbeat(now: now)
        let prunes = ids.flatMap { Self.sends(actions, to: $0).flatMap(\.control.prune) }
        XCTAssertEqual(prunes.count, 2)
        for prune in prunes {
            XCTAssertFalse(prune.peers.isEmpty)
            for info in prune.peers {
                let record = try? PeerRecord.open(Array(info.signedPeerRecord))
                XCTAssertEqual(record?.peerID.bytes, Array(info.peerID))
            }
        }
    }

    /// Opportunistic grafting: when the mesh's median score is low, peers scoring
    /// above it are grafted every opportunisticGraftTicks heartbeats.
    func testOpportunisticGrafting() {
        var configuration = PubSubConfiguration()
        configuration.d = 2
        configuration.dLow = 2
        configuration.dHigh = 4
        configuration.dScore = 1
        configuration.dOut = 0
        configuration.opportunisticGraftTicks = 3
        configuration.scoreParameters.defaultTopic?.timeInMeshWeight = 0
        var bench = Bench(count: 5, configuration: configuration)
        let mesh = Set(bench.router.meshPeers("t"))
        XCTAssertEqual(mesh.count, 2)
        let outside = bench.peers.filter { !mesh.contains($0) }
        // Peers outside the mesh earn first deliveries; the mesh peers stay at 0.
        for peer in outside { _ = bench.deliver(from: peer) }
        _ = bench.advance(2)
        XCTAssertEqual(Set(bench.router.meshPeers("t")), mesh, "not before the tick")
        let actions = bench.advance(1)
        let grafted = Set(bench.router.meshPeers("t")).subtracting(mesh)
        XCTAssertEqual(grafted.count, configuration.opportunisticGraftPeers)
        XCTAssertTrue(grafted.isSubset(of: Set(outside)))
        for peer in grafted {
            XCTAssertTrue(Self.sends(actions, to: peer).contains { $0.control.graft.first?.topicID == "t" })
        }
    }

    /// A disconnected peer's counters are kept: reconnecting does not clean its score.
    func testScoreIsRetainedAcrossReconnects() {
        var bench = Bench(count: 1)
        let peer = bench.peers[0]
        for index in 0..<2 { _ = bench.send(Bench.signed([UInt8(index)]).withBadSignature(), from: peer) }
        let before = bench.score(peer)
        XCTAssertLessThan(before, 0)
        bench.router.removePeer(peer, now: bench.now)
        _ = bench.router.addPeer(peer, protocolID: PubSubProtocol.meshsub11, outbound: false)
        XCTAssertEqual(bench.score(peer), before)
    }

    /// A peer scoring negative is not grafted, and its GRAFT is answered with PRUNE.
    func testNegativeScorePeersStayOutOfTheMesh() {
        var bench = Bench(count: 1)
        let peer = bench.peers[0]
        _ = bench.send(Bench.signed([1]).withBadSignature(), from: peer)
        _ = bench.advance(1)
        XCTAssertTrue(bench.router.meshPeers("t").isEmpty, "pruned at the heartbeat")
        bench.now += .seconds(120)
        let graft = Self.graftRPC().control
        let reply = bench.control(graft, from: peer)
        XCTAssertTrue(Self.sends(reply, to: peer).contains { !$0.control.prune.isEmpty })
        XCTAssertTrue(bench.router.meshPeers("t").isEmpty)
    }
}

extension Pubsub_Pb_Message {
    func withBadSignature() -> Pubsub_Pb_Message {
        var copy = self
        copy.signature = Data(repeating: 1, count: 64)
        return copy
    }
}
