import Foundation
import Identity

@testable import PubSub

/// Tests craft RPCs as the wire's protobuf, while routers take and return our
/// own types: every protobuf RPC a test hands a router goes through
/// `overTheWire` (serialized, then decoded by the codec, as the service does).
enum Wire {
    static func overTheWire(_ rpc: Pubsub_Pb_RPC, limits: PubSubCodec.Limits) -> PubSubRPC {
        let bytes: [UInt8] = try! rpc.serializedBytes()
        return try! PubSubCodec.decode(bytes, limits: limits)
    }

    static func subOpts(_ topic: String, subscribe: Bool) -> Pubsub_Pb_RPC.SubOpts {
        var options = Pubsub_Pb_RPC.SubOpts()
        options.topicid = topic
        options.subscribe = subscribe
        return options
    }
}

extension PubSubRouter {
    /// Handles an RPC crafted as protobuf, after its trip over the wire.
    mutating func handle(_ rpc: Pubsub_Pb_RPC, from peer: PeerID, now: ContinuousClock.Instant) -> [RouterAction] {
        handle(Wire.overTheWire(rpc, limits: .init(configuration)), from: peer, now: now)
    }

    func messageID(_ message: Pubsub_Pb_Message) -> MessageID { messageID(PubSubCodec.message(message)) }
}

extension PubSubRPC {
    /// The RPC as protobuf, for tests that read what a router sends.
    var wire: Pubsub_Pb_RPC { PubSubCodec.protobuf(self) }
}
