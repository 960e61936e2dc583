import Foundation
import Identity
import Multiformats
import SwiftProtobuf

/// The RPC kinds of `/ipfs/kad/1.0.0`.
public enum DHTMessageType: Int, Sendable, CaseIterable {
    case putValue = 0, getValue = 1, addProvider = 2, getProviders = 3, findNode = 4, ping = 5
}

/// A peer as a DHT message carries it: its id and the addresses it is reachable at.
public struct DHTPeer: Sendable, Hashable {
    public var id: PeerID
    public var addresses: [Multiaddr]

    public init(id: PeerID, addresses: [Multiaddr]) {
        self.id = id
        self.addresses = addresses
    }
}

/// A value record: the key it is stored under and its value.
public struct DHTRecord: Sendable, Hashable {
    public var key: [UInt8]
    public var value: [UInt8]

    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// One DHT request or response, decoded and checked: unusable peers
/// (bad ids) are dropped, garbage addresses skipped, and lists bounded.
public struct DHTMessage: Sendable, Hashable {
    public var type: DHTMessageType
    public var key: [UInt8]
    public var record: DHTRecord?
    public var closerPeers: [DHTPeer]
    public var providerPeers: [DHTPeer]

    public init(
        type: DHTMessageType, key: [UInt8] = [], record: DHTRecord? = nil, closerPeers: [DHTPeer] = [],
        providerPeers: [DHTPeer] = []
    ) {
        self.type = type
        self.key = key
        self.record = record
        self.closerPeers = closerPeers
        self.providerPeers = providerPeers
    }
}

/// Errors decoding a DHT message.
public enum DHTMessageError: Error, CustomStringConvertible, Sendable, Equatable {
    case tooLarge(Int, limit: Int)
    case malformed(String)
    case unknownType(Int)
    case keyTooLong(Int, limit: Int)

    public var description: String {
        switch self {
        case .tooLarge(let size, let limit): return "DHT message of \(size) bytes exceeds \(limit)"
        case .malformed(let why): return "malformed DHT message: \(why)"
        case .unknownType(let type): return "DHT message of unknown type \(type)"
        case .keyTooLong(let size, let limit): return "DHT key of \(size) bytes exceeds \(limit)"
        }
    }
}

extension DHTMessage {
    /// The largest message we read or write (go-libp2p and py-libp2p use 4 MiB).
    public static let maxSize = 4 * 1024 * 1024
    /// Bounds on what one message may make us keep.
    public static let maxPeersPerList = 64
    public static let maxAddressesPerPeer = 32
    public static let maxKeyLength = 1024

    /// Decodes a message body (without its length prefix).
    public init(decoding bytes: some Collection<UInt8>) throws(DHTMessageError) {
        guard bytes.count <= Self.maxSize else { throw .tooLarge(bytes.count, limit: Self.maxSize) }
        let proto: Dht_Pb_Message
        do {
            proto = try Dht_Pb_Message(serializedBytes: Array(bytes))
        } catch {
            throw .malformed("\(error)")
        }
        guard let type = DHTMessageType(rawValue: proto.type.rawValue) else { throw .unknownType(proto.type.rawValue) }
        guard proto.key.count <= Self.maxKeyLength else { throw .keyTooLong(proto.key.count, limit: Self.maxKeyLength) }
        self.type = type
        self.key = Array(proto.key)
        self.record = proto.hasRecord ? DHTRecord(key: Array(proto.record.key), value: Array(proto.record.value)) : nil
        self.closerPeers = Self.decodePeers(proto.closerPeers)
        self.providerPeers = Self.decodePeers(proto.providerPeers)
    }

    private static func decodePeers(_ peers: [Dht_Pb_Message.Peer]) -> [DHTPeer] {
        var result: [DHTPeer] = []
        for peer in peers {
            guard result.count < maxPeersPerList else { break }
            guard let id = try? PeerID(bytes: peer.id) else { continue }
            let addresses = peer.addrs.prefix(maxAddressesPerPeer).compactMap { try? Multiaddr(bytes: $0) }
            result.append(DHTPeer(id: id, addresses: addresses))
        }
        return result
    }

    /// The protobuf encoding (without length prefix).
    public func encoded() -> [UInt8] {
        var proto = Dht_Pb_Message()
        proto.type = Dht_Pb_Message.MessageType(rawValue: type.rawValue) ?? .ping
        proto.key = Data(key)
        if let record {
            var r = Dht_Pb_Record()
            r.key = Data(record.key)
            r.value = Data(record.value)
            proto.record = r
        }
        func encode(_ peer: DHTPeer) -> Dht_Pb_Message.Peer {
            var p = Dht_Pb_Message.Peer()
            p.id = Data(peer.id.bytes)
            p.addrs = peer.addresses.map { Data($0.bytes) }
            return p
        }
        proto.closerPeers = closerPeers.map(encode)
        proto.providerPeers = providerPeers.map(encode)
        // Serializing a message we built cannot fail (no required fields, valid UTF-8).
        return (try? proto.serializedBytes()) ?? []
    }

    /// The message with its unsigned-varint length prefix, as it goes on the wire.
    public func framed() -> [UInt8] {
        let body = encoded()
        var out = Varint.encode(UInt64(body.count))
        out.append(contentsOf: body)
        return out
    }
}
