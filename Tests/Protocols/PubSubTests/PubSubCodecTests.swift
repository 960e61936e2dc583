import Foundation
import Identity
import TestSupport
import XCTest

@testable import PubSub

/// The codec between the wire's protobuf and our RPC types: both ways, with
/// its bounds, and never crashing on what a peer sends.
final class PubSubCodecTests: XCTestCase {
    let limits = PubSubCodec.Limits(PubSubConfiguration())

    static func peer() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }

    /// An RPC with every field and control kind.
    static func fullRPC() throws -> PubSubRPC {
        let key = PrivateKey.generateEd25519()
        var message = RawMessage(from: PeerID(publicKey: key.publicKey).bytes, data: [1, 2, 3], seqno: [0, 0, 0, 9], topic: "t")
        try MessageSigning.sign(&message, with: key)
        return PubSubRPC(
            subscriptions: [Subscription(topic: "t", subscribe: true), Subscription(topic: "u", subscribe: false)],
            messages: [message, RawMessage(data: [], topic: "u")],
            control: [
                .ihave(topic: "t", messageIDs: [MessageID([1]), MessageID([2])]),
                .idontwant(messageIDs: [MessageID([3])]),
                .iwant(messageIDs: [MessageID([4])]),
                .graft(topic: "t"),
                .prune(topic: "u", peers: [PeerExchange(peer: peer(), signedRecord: [7, 7]), PeerExchange(peer: peer())],
                       backoff: .seconds(60)),
            ])
    }

    func testRoundTripKeepsEverything() throws {
        let rpc = try Self.fullRPC()
        let decoded = try PubSubCodec.decode(PubSubCodec.encode(rpc), limits: limits)
        XCTAssertEqual(decoded, rpc)
        // The signature still holds: absent fields stay absent, present ones present.
        XCTAssertNotNil(try MessageSigning.verify(decoded.messages[0], policy: .strictSign).get())
        XCTAssertEqual(decoded.messages[1].from, nil)
        XCTAssertEqual(decoded.messages[1].signature, nil)
        XCTAssertEqual(PubSubCodec.protobuf(decoded), PubSubCodec.protobuf(rpc))
    }

    /// Ids per entry and peers per PRUNE are cut to the limits; a backoff is at most an hour.
    func testDecodingIsBounded() throws {
        var limits = limits
        limits.maxIDsPerEntry = 3
        limits.maxPeersPerPrune = 2
        var rpc = Pubsub_Pb_RPC()
        var ihave = Pubsub_Pb_ControlIHave()
        ihave.topicID = "t"
        ihave.messageIds = (0..<10).map { Data([UInt8($0)]) }
        var iwant = Pubsub_Pb_ControlIWant()
        iwant.messageIds = ihave.messageIds
        var idontwant = Pubsub_Pb_ControlIDontWant()
        idontwant.messageIds = ihave.messageIds
        var prune = Pubsub_Pb_ControlPrune()
        prune.topicID = "t"
        prune.backoff = UInt64.max
        let good = Self.peer()
        prune.peers = [Data([0xff, 0xff]), Data(good.bytes), Data(Self.peer().bytes)].map { id in
            var info = Pubsub_Pb_PeerInfo()
            info.peerID = id
            return info
        }
        rpc.control.ihave = [ihave]
        rpc.control.iwant = [iwant]
        rpc.control.idontwant = [idontwant]
        rpc.control.prune = [prune]
        let decoded = try PubSubCodec.decode(try rpc.serializedBytes(), limits: limits)
        let firstThree = (0..<3).map { MessageID([UInt8($0)]) }
        XCTAssertEqual(
            decoded.control,
            [
                .ihave(topic: "t", messageIDs: firstThree), .idontwant(messageIDs: firstThree), .iwant(messageIDs: firstThree),
                // The unparsable peer id counts against the bound, then is dropped.
                .prune(topic: "t", peers: [PeerExchange(peer: good)], backoff: .seconds(3600)),
            ])
    }

    func testSubscriptionWithoutTopicIsDropped() throws {
        var rpc = Pubsub_Pb_RPC()
        var noTopic = Pubsub_Pb_RPC.SubOpts()
        noTopic.subscribe = true
        rpc.subscriptions = [noTopic, Wire.subOpts("", subscribe: true)]
        let decoded = try PubSubCodec.decode(try rpc.serializedBytes(), limits: limits)
        XCTAssertEqual(decoded.subscriptions, [Subscription(topic: "", subscribe: true)])
    }

    func testOversizedFrameIsRefused() {
        var limits = limits
        limits.maxRPCSize = 100
        let bytes = PubSubCodec.encode(PubSubRPC(messages: [RawMessage(data: [UInt8](repeating: 1, count: 200), topic: "t")]))
        XCTAssertThrowsError(try PubSubCodec.decode(bytes, limits: limits)) { error in
            guard case .tooLarge(let size, 100) = error as? PubSubCodec.DecodeError else { return XCTFail("\(error)") }
            XCTAssertEqual(size, bytes.count)
        }
        // A field announcing far more bytes than the frame holds is malformed, not an allocation.
        XCTAssertThrowsError(try PubSubCodec.decode([0x12, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x01], limits: self.limits)) { error in
            guard case .malformed = error as? PubSubCodec.DecodeError else { return XCTFail("\(error)") }
        }
    }

    /// Every prefix of a valid RPC decodes or throws, never crashes.
    func testTruncatedRPCsNeverCrash() throws {
        let bytes = PubSubCodec.encode(try Self.fullRPC())
        var malformed = 0
        for length in 0..<bytes.count {
            if (try? PubSubCodec.decode(Array(bytes.prefix(length)), limits: limits)) == nil { malformed += 1 }
        }
        XCTAssertGreaterThan(malformed, 0)
    }

    func testRandomBytesNeverCrash() {
        var rng = SplitMix(seed: 16)
        var decoded = 0
        var malformed = 0
        for _ in 0..<5000 {
            let bytes = (0..<Int(rng.next() % 300)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            do {
                let rpc = try PubSubCodec.decode(bytes, limits: limits)
                decoded += 1
                // What decodes encodes again, and decodes to the same.
                XCTAssertEqual(try PubSubCodec.decode(PubSubCodec.encode(rpc), limits: limits), rpc)
            } catch {
                malformed += 1
            }
        }
        XCTAssertGreaterThan(decoded, 0)
        XCTAssertGreaterThan(malformed, 0)
    }
}
