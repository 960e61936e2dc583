import AutoNAT
import DCUtR
import Foundation
import Identity
import KadDHT
import Multiformats
import Relay

#if DEBUG
@testable import ChatHistory
@testable import FileShare
@testable import PubSub
#endif

/// Seeds of the protocol-message targets, encoded by our own encoders
/// (`p2pfuzz --seeds TARGET DIRECTORY`): what is committed in `Fuzz/corpus`.
enum ProtocolSeeds {
    static func make(_ target: FuzzTarget) throws -> [String: [UInt8]] {
        let peer = PeerID(publicKey: FuzzTarget.remote.publicKey)
        let relay = PeerID(publicKey: FuzzTarget.identity.publicKey)
        let address = try Multiaddr("/ip4/192.0.2.1/tcp/4001")
        let circuit = try Multiaddr("/ip4/192.0.2.1/tcp/4001/p2p/\(relay)/p2p-circuit")
        switch target {
        case .dht:
            let closer = [DHTPeer(id: peer, addresses: [address, circuit])]
            return [
                "find-node": DHTMessage(type: .findNode, key: peer.bytes, closerPeers: closer).encoded(),
                "put-value": DHTMessage(
                    type: .putValue, key: Array("/p2pchat/name".utf8),
                    record: DHTRecord(key: Array("/p2pchat/name".utf8), value: Array("hello".utf8))
                ).encoded(),
                "providers": DHTMessage(
                    type: .getProviders, key: [0x12, 0x20] + [UInt8](repeating: 7, count: 32), closerPeers: closer,
                    providerPeers: closer
                ).encoded(),
            ]
        case .relay:
            return [
                "reserve": HopMessage.reserve.encoded(),
                "connect": HopMessage.connect(peer).encoded(),
                "status": HopMessage.status(
                    .ok, reservation: ReservationGrant(expire: 1_900_000_000, addresses: [address], voucher: nil),
                    limit: CircuitLimit(duration: 120, data: 1 << 17)
                ).encoded(),
                "stop-connect": StopMessage.connect(peer, limit: CircuitLimit(duration: 120, data: nil)).encoded(),
                "voucher": try ReservationVoucher(relay: relay, peer: peer, expiration: 1_900_000_000)
                    .sealed(with: FuzzTarget.identity),
            ]
        case .dcutr:
            return [
                "connect": HolePunchMessage.connect([address, try Multiaddr("/ip6/2001:db8::1/tcp/4001")]).encoded(),
                "sync": HolePunchMessage.sync.encoded(),
            ]
        case .autonat:
            return [
                "dial": AutoNATMessage.dial(peer: peer, addresses: [address]).encoded(),
                "response": AutoNATMessage.dialResponse(.ok, text: "ok", address: address).encoded(),
            ]
        case .file:
            #if DEBUG
            var request = FileRequest()
            request.cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            request.offset = 1024
            var response = FileResponse()
            response.size = 1 << 20
            return [
                "request": try request.serializedBytes(),
                "response": try response.serializedBytes(),
                "offer": Array("/file bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy 1048576 notes.txt".utf8),
            ]
            #else
            return [:]
            #endif
        case .history:
            #if DEBUG
            var router = GossipsubRouter(localKey: FuzzTarget.remote, configuration: PubSubConfiguration())
            let (_, message) = try router.publishMessage(topic: "lobby", data: Array("a line".utf8), now: .now)
            var response = HistoryResponse()
            response.ids = [Data(message.id.bytes)]
            response.messages = [Data(message.wireBytes)]
            var request = HistoryRequest()
            request.want = [Data(message.id.bytes)]
            return [
                "response": try response.serializedBytes(),
                "request": try request.serializedBytes(),
            ]
            #else
            return [:]
            #endif
        default:
            return [:]
        }
    }
}
