import Foundation
import Multiformats
import SwiftProtobuf

/// Why a signed envelope or peer record was refused.
public enum SignedRecordError: Error, CustomStringConvertible, Sendable, Equatable {
    case malformedEnvelope(String)
    case badPublicKey(KeyError)
    case wrongPayloadType(expected: [UInt8], got: [UInt8])
    case badSignature
    case malformedRecord(String)
    case peerMismatch(record: String, signer: String)
    case tooLarge(size: Int, limit: Int)

    public var description: String {
        switch self {
        case .malformedEnvelope(let why): return "malformed signed envelope: \(why)"
        case .badPublicKey(let error): return "signed envelope: \(error)"
        case .wrongPayloadType(let expected, let got):
            return "signed envelope carries payload type \(got), expected \(expected)"
        case .badSignature: return "signed envelope: the signature does not verify"
        case .malformedRecord(let why): return "malformed peer record: \(why)"
        case .peerMismatch(let record, let signer): return "peer record of \(record) is signed by \(signer)"
        case .tooLarge(let size, let limit): return "signed envelope of \(size) bytes exceeds \(limit)"
        }
    }
}

/// A signed envelope (libp2p RFC 0002): the signature covers the domain, the
/// payload type and the payload, each prefixed with its varint length, so a
/// signature made for one purpose cannot be replayed for another.
public struct SignedEnvelope: Sendable, Equatable {
    public let publicKey: PublicKey
    public let payloadType: [UInt8]
    public let payload: [UInt8]
    public let signature: [UInt8]

    /// Envelopes larger than this are refused before parsing.
    public static let maxSize = 64 * 1024

    /// Signs `payload` for `domain` with `key`.
    public static func seal(payload: [UInt8], payloadType: [UInt8], domain: String, key: PrivateKey) throws -> SignedEnvelope {
        let signature = try key.sign(signedBytes(domain: domain, payloadType: payloadType, payload: payload))
        return SignedEnvelope(publicKey: key.publicKey, payloadType: payloadType, payload: payload, signature: signature)
    }

    private init(publicKey: PublicKey, payloadType: [UInt8], payload: [UInt8], signature: [UInt8]) {
        self.publicKey = publicKey
        self.payloadType = payloadType
        self.payload = payload
        self.signature = signature
    }

    /// Parses and verifies an envelope signed for `domain`.
    public init(marshaled bytes: [UInt8], domain: String) throws(SignedRecordError) {
        guard bytes.count <= Self.maxSize else { throw .tooLarge(size: bytes.count, limit: Self.maxSize) }
        let message: Envelope_Pb_Envelope
        do {
            message = try Envelope_Pb_Envelope(serializedBytes: bytes)
        } catch {
            throw .malformedEnvelope("\(error)")
        }
        do {
            publicKey = try PublicKey(marshaled: Array(message.publicKey))
        } catch {
            throw .badPublicKey(error)
        }
        payloadType = Array(message.payloadType)
        payload = Array(message.payload)
        signature = Array(message.signature)
        let signed = Self.signedBytes(domain: domain, payloadType: payloadType, payload: payload)
        guard publicKey.verify(signature: signature, for: signed) else { throw .badSignature }
    }

    public func marshal() -> [UInt8] {
        var message = Envelope_Pb_Envelope()
        message.publicKey = Data(publicKey.marshal())
        message.payloadType = Data(payloadType)
        message.payload = Data(payload)
        message.signature = Data(signature)
        return (try? message.serializedBytes()) ?? []
    }

    static func signedBytes(domain: String, payloadType: [UInt8], payload: [UInt8]) -> [UInt8] {
        let domainBytes = Array(domain.utf8)
        var out: [UInt8] = []
        out.reserveCapacity(domainBytes.count + payloadType.count + payload.count + 12)
        for part in [domainBytes, payloadType, payload] {
            out += Varint.encode(UInt64(part.count))
            out += part
        }
        return out
    }
}

/// A peer record (libp2p RFC 0003): a peer's addresses, with a sequence number
/// so that newer records replace older ones, carried in a signed envelope.
public struct PeerRecord: Sendable, Equatable {
    public static let domain = "libp2p-peer-record"
    /// The multicodec `libp2p-peer-record` (0x0301) as a varint.
    public static let payloadType: [UInt8] = [0x03, 0x01]
    /// Addresses accepted in one record.
    public static let maxAddresses = 64

    public let peerID: PeerID
    public let seq: UInt64
    public let addresses: [Multiaddr]

    public init(peerID: PeerID, seq: UInt64, addresses: [Multiaddr]) {
        self.peerID = peerID
        self.seq = seq
        self.addresses = addresses
    }

    /// A record of `key`'s peer with a sequence number from the clock (newer records win).
    public init(key: PrivateKey, addresses: [Multiaddr]) {
        self.init(
            peerID: PeerID(publicKey: key.publicKey), seq: UInt64(Date().timeIntervalSince1970 * 1_000_000),
            addresses: addresses)
    }

    /// The record sealed in an envelope signed by `key` (which must be the record's peer).
    public func sealed(with key: PrivateKey) throws -> [UInt8] {
        var message = PeerRecord_Pb_PeerRecord()
        message.peerID = Data(peerID.bytes)
        message.seq = seq
        message.addresses = addresses.map { address in
            var info = PeerRecord_Pb_PeerRecord.AddressInfo()
            info.multiaddr = Data(address.bytes)
            return info
        }
        let payload: [UInt8] = try message.serializedBytes()
        return try SignedEnvelope.seal(payload: payload, payloadType: Self.payloadType, domain: Self.domain, key: key)
            .marshal()
    }

    /// Verifies an envelope holding a peer record and returns the record; the
    /// record's peer must be the envelope's signer. Unknown addresses are skipped.
    public static func open(_ envelopeBytes: [UInt8]) throws(SignedRecordError) -> PeerRecord {
        let envelope = try SignedEnvelope(marshaled: envelopeBytes, domain: domain)
        guard envelope.payloadType == payloadType else {
            throw .wrongPayloadType(expected: payloadType, got: envelope.payloadType)
        }
        let message: PeerRecord_Pb_PeerRecord
        do {
            message = try PeerRecord_Pb_PeerRecord(serializedBytes: envelope.payload)
        } catch {
            throw .malformedRecord("\(error)")
        }
        let peer: PeerID
        do {
            peer = try PeerID(bytes: Array(message.peerID))
        } catch {
            throw .malformedRecord("peer id: \(error)")
        }
        let signer = PeerID(publicKey: envelope.publicKey)
        guard peer == signer else { throw .peerMismatch(record: "\(peer)", signer: "\(signer)") }
        let addresses = message.addresses.prefix(maxAddresses).compactMap { try? Multiaddr(bytes: Array($0.multiaddr)) }
        return PeerRecord(peerID: peer, seq: message.seq, addresses: addresses)
    }
}
