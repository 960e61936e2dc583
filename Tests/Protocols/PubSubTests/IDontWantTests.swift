import Foundation
import Identity
import XCTest

@testable import PubSub

/// Gossipsub v1.2 (/meshsub/1.2.0): IDONTWANT sent for large messages and honoured.
final class IDontWantTests: XCTestCase {
    typealias Bench = PeerScoreTests.Bench

    /// Peers 0-2 speak v1.2, peer 3 only v1.1; all in the mesh.
    func makeBench() -> Bench {
        let bench = Bench(count: 4, protocolID: { $0 < 3 ? PubSubProtocol.meshsub12 : PubSubProtocol.meshsub11 })
        XCTAssertEqual(bench.router.meshPeers("t").count, 4)
        return bench
    }

    static func idontwants(_ actions: [RouterAction], to peer: PeerID) -> [[Data]] {
        PeerScoreTests.sends(actions, to: peer).flatMap { $0.control.idontwant.map(\.messageIds) }
    }

    static func forwards(_ actions: [RouterAction], to peer: PeerID) -> Int {
        PeerScoreTests.sends(actions, to: peer).reduce(0) { $0 + $1.publish.count }
    }

    func testLargeMessageSendsIDontWantToOtherV12MeshPeers() {
        var bench = makeBench()
        let (source, other, third, old) = (bench.peers[0], bench.peers[1], bench.peers[2], bench.peers[3])
        let large = Bench.signed([UInt8](repeating: 7, count: PubSubConfiguration().idontwantMessageThreshold))
        let id = Data(bench.router.messageID(large).bytes)
        let actions = bench.send(large, from: source)
        XCTAssertEqual(Self.idontwants(actions, to: other), [[id]])
        XCTAssertEqual(Self.idontwants(actions, to: third), [[id]])
        XCTAssertTrue(Self.idontwants(actions, to: source).isEmpty, "not to the peer it came from")
        XCTAssertTrue(Self.idontwants(actions, to: old).isEmpty, "not to a v1.1 peer")
        // Small messages need none.
        let small = bench.send(Bench.signed([1, 2, 3]), from: source)
        XCTAssertTrue(bench.peers.allSatisfy { Self.idontwants(small, to: $0).isEmpty })
    }

    func testIDontWantSuppressesForwardingUntilItExpires() {
        var bench = makeBench()
        let (source, picky, plain) = (bench.peers[0], bench.peers[1], bench.peers[2])
        let message = Bench.signed([4, 5, 6])
        var control = Pubsub_Pb_ControlMessage()
        control.idontwant = [{
            var i = Pubsub_Pb_ControlIDontWant()
            i.messageIds = [Data(bench.router.messageID(message).bytes)]
            return i
        }()]
        _ = bench.control(control, from: picky)
        let actions = bench.send(message, from: source)
        XCTAssertEqual(Self.forwards(actions, to: picky), 0)
        XCTAssertEqual(Self.forwards(actions, to: plain), 1)
        XCTAssertEqual(bench.router.counters.skippedForIDontWant, 1)
        // Remembered for the gossip window only.
        _ = bench.control(control, from: picky)
        _ = bench.advance(PubSubConfiguration().historyGossip + 1)
        let later = Bench.signed([4, 5, 6, 7])
        control.idontwant[0].messageIds = [Data(bench.router.messageID(later).bytes)]
        _ = bench.control(control, from: picky)
        _ = bench.advance(PubSubConfiguration().historyGossip + 1)
        XCTAssertEqual(Self.forwards(bench.send(later, from: source), to: picky), 1)
    }

    /// What one peer can make us remember is bounded per heartbeat and in total.
    func testIDontWantFloodIsBounded() {
        var configuration = PubSubConfiguration()
        configuration.maxIDontWantIDs = 100
        var bench = Bench(count: 2, configuration: configuration, protocolID: { _ in PubSubProtocol.meshsub12 })
        let flooder = bench.peers[0]
        var control = Pubsub_Pb_ControlMessage()
        control.idontwant = (0..<50).map { round in
            var i = Pubsub_Pb_ControlIDontWant()
            i.messageIds = (0..<60).map { Data([UInt8(round), UInt8($0)]) }
            return i
        }
        _ = bench.control(control, from: flooder)
        XCTAssertEqual(bench.router.dontWantCount(of: flooder), 100, "capped at maxIDontWantIDs")
        _ = bench.advance(1)
        _ = bench.control(control, from: flooder)
        XCTAssertEqual(bench.router.dontWantCount(of: flooder), 100)
        // Messages the flooder never named still reach it.
        let message = Bench.signed([9])
        XCTAssertEqual(Self.forwards(bench.send(message, from: bench.peers[1]), to: flooder), 1)
        XCTAssertEqual(bench.router.counters.skippedForIDontWant, 0)
    }
}
