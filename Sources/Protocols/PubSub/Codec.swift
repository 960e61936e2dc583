import Foundation
import Identity
import SwiftProtobuf

/// The one place where pubsub's protobuf (`rpc.proto`) meets our own types,
/// both ways. Decoding bounds what one RPC can make a router iterate over.
enum PubSubCodec {
    /// Bounds applied when decoding, from the configuration.
    struct Limits: Sendable {
        /// Largest RPC frame accepted.
        var maxRPCSize: Int
        /// Message ids kept per IHAVE, IWANT and IDONTWANT (more are dropped unread).
        var maxIDsPerEntry: Int
        /// Peers kept per PRUNE (peer exchange).
        var maxPeersPerPrune: Int

        init(_ configuration: PubSubConfiguration) {
            maxRPCSize = configuration.maxRPCSize
            maxIDsPerEntry = configuration.maxIHaveLength
            maxPeersPerPrune = configuration.prunePeers
        }
    }

    /// A remote cannot make us back off longer than this (and the seconds it
    /// sends always fit a `Duration`).
    static let maxBackoffSeconds: UInt64 = 3600

    enum DecodeError: Error, CustomStringConvertible {
        case tooLarge(size: Int, limit: Int)
        /// The bytes are not a pubsub RPC (the protobuf decoder's error kept).
        case malformed(any Error)

        var description: String {
            switch self {
            case .tooLarge(let size, let limit): return "pubsub RPC of \(size) bytes exceeds the limit of \(limit)"
            case .malformed(let error): return "malformed pubsub RPC: \(error)"
            }
        }
    }

    // MARK: - Bytes

    /// Decodes one RPC frame (without its length prefix).
    static func decode(_ bytes: [UInt8], limits: Limits) throws(DecodeError) -> PubSubRPC {
        guard bytes.count <= limits.maxRPCSize else { throw .tooLarge(size: bytes.count, limit: limits.maxRPCSize) }
        let rpc: Pubsub_Pb_RPC
        do {
            rpc = try Pubsub_Pb_RPC(serializedBytes: bytes)
        } catch {
            throw .malformed(error)
        }
        return decode(rpc, limits: limits)
    }

    /// Encodes one RPC frame (without its length prefix).
    static func encode(_ rpc: PubSubRPC) -> [UInt8] {
        // Serializing a message we built cannot fail (no required fields, no Any).
        (try? protobuf(rpc).serializedBytes()) ?? []
    }

    /// A message's own protobuf bytes (as signed, and as history carries it).
    static func encode(_ message: RawMessage) -> [UInt8] {
        (try? protobuf(message).serializedBytes()) ?? []
    }

    /// A message from its own protobuf bytes; nil if they do not decode.
    static func decodeMessage(_ bytes: [UInt8]) -> RawMessage? {
        (try? Pubsub_Pb_Message(serializedBytes: bytes)).map(message)
    }

    // MARK: - Protobuf to ours

    static func decode(_ rpc: Pubsub_Pb_RPC, limits: Limits) -> PubSubRPC {
        var result = PubSubRPC()
        // A subscription without a topic says nothing.
        result.subscriptions = rpc.subscriptions.filter(\.hasTopicid).map {
            Subscription(topic: $0.topicid, subscribe: $0.subscribe)
        }
        result.messages = rpc.publish.map(message)
        guard rpc.hasControl else { return result }
        let control = rpc.control
        func ids(_ raw: [Data]) -> [MessageID] { raw.prefix(limits.maxIDsPerEntry).map { MessageID(Array($0)) } }
        // Kind by kind, in the order the routers act on them.
        for ihave in control.ihave { result.control.append(.ihave(topic: ihave.topicID, messageIDs: ids(ihave.messageIds))) }
        for idontwant in control.idontwant { result.control.append(.idontwant(messageIDs: ids(idontwant.messageIds))) }
        for iwant in control.iwant { result.control.append(.iwant(messageIDs: ids(iwant.messageIds))) }
        for graft in control.graft { result.control.append(.graft(topic: graft.topicID)) }
        for prune in control.prune {
            // Peers whose id does not parse are dropped (after the bound, so they count against it).
            let peers = prune.peers.prefix(limits.maxPeersPerPrune).compactMap { info -> PeerExchange? in
                guard let peer = try? PeerID(bytes: Array(info.peerID)) else { return nil }
                return PeerExchange(peer: peer, signedRecord: info.hasSignedPeerRecord ? Array(info.signedPeerRecord) : nil)
            }
            let backoff: Duration? = prune.hasBackoff ? .seconds(Int64(min(prune.backoff, maxBackoffSeconds))) : nil
            result.control.append(.prune(topic: prune.topicID, peers: peers, backoff: backoff))
        }
        return result
    }

    static func message(_ message: Pubsub_Pb_Message) -> RawMessage {
        RawMessage(
            from: message.hasFrom ? Array(message.from) : nil, data: Array(message.data),
            seqno: message.hasSeqno ? Array(message.seqno) : nil, topic: message.topic,
            signature: message.hasSignature ? Array(message.signature) : nil, key: message.hasKey ? Array(message.key) : nil)
    }

    // MARK: - Ours to protobuf

    static func protobuf(_ rpc: PubSubRPC) -> Pubsub_Pb_RPC {
        var result = Pubsub_Pb_RPC()
        result.subscriptions = rpc.subscriptions.map { subscription in
            var options = Pubsub_Pb_RPC.SubOpts()
            options.topicid = subscription.topic
            options.subscribe = subscription.subscribe
            return options
        }
        result.publish = rpc.messages.map(protobuf)
        guard !rpc.control.isEmpty else { return result }
        var control = Pubsub_Pb_ControlMessage()
        for action in rpc.control {
            switch action {
            case .ihave(let topic, let ids):
                var ihave = Pubsub_Pb_ControlIHave()
                ihave.topicID = topic
                ihave.messageIds = ids.map { Data($0.bytes) }
                control.ihave.append(ihave)
            case .iwant(let ids):
                var iwant = Pubsub_Pb_ControlIWant()
                iwant.messageIds = ids.map { Data($0.bytes) }
                control.iwant.append(iwant)
            case .graft(let topic):
                var graft = Pubsub_Pb_ControlGraft()
                graft.topicID = topic
                control.graft.append(graft)
            case .prune(let topic, let peers, let backoff):
                var prune = Pubsub_Pb_ControlPrune()
                prune.topicID = topic
                // Whole seconds, never negative.
                if let backoff { prune.backoff = UInt64(max(0, backoff.components.seconds)) }
                prune.peers = peers.map { exchange in
                    var info = Pubsub_Pb_PeerInfo()
                    info.peerID = Data(exchange.peer.bytes)
                    if let record = exchange.signedRecord { info.signedPeerRecord = Data(record) }
                    return info
                }
                control.prune.append(prune)
            case .idontwant(let ids):
                var idontwant = Pubsub_Pb_ControlIDontWant()
                idontwant.messageIds = ids.map { Data($0.bytes) }
                control.idontwant.append(idontwant)
            }
        }
        result.control = control
        return result
    }

    static func protobuf(_ message: RawMessage) -> Pubsub_Pb_Message {
        var result = Pubsub_Pb_Message()
        if let from = message.from { result.from = Data(from) }
        result.data = Data(message.data)
        if let seqno = message.seqno { result.seqno = Data(seqno) }
        result.topic = message.topic
        if let signature = message.signature { result.signature = Data(signature) }
        if let key = message.key { result.key = Data(key) }
        return result
    }
}
