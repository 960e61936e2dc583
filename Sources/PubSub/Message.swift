import Foundation
import Identity
import SwiftProtobuf

/// A message delivered to a subscriber.
public struct PubSubMessage: Sendable, Equatable {
    public let topic: String
    public let data: [UInt8]
    /// The original author (nil for unsigned, anonymous messages).
    public let from: PeerID?
    public let seqno: [UInt8]?
    public let id: MessageID
    /// The peer that forwarded it to us (nil when we published it).
    public let receivedFrom: PeerID?
}

/// A message id (default: `from` bytes followed by `seqno`).
public struct MessageID: Hashable, Sendable, CustomStringConvertible {
    public let bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    public var description: String { bytes.prefix(12).map { String(format: "%02x", $0) }.joined() + "…" }
}

/// The fields of a message a custom message-id function may use.
public struct MessageFields: Sendable {
    public let topic: String
    public let data: [UInt8]
    /// The author, for signed messages.
    public let from: PeerID?
    public let seqno: [UInt8]?
}

/// How messages are signed and what we accept.
public enum SignaturePolicy: Sendable {
    /// Sign our messages; accept only correctly signed ones (the default).
    case strictSign
    /// Send no from, seqno, signature or key; refuse messages that carry them.
    case strictNoSign
}

/// Why a received message was dropped.
public enum RejectReason: String, Error, Sendable, CaseIterable {
    case tooLarge
    case missingSignature
    case invalidSignature
    case keyMismatch
    case unexpectedSignature
    case missingTopic
    case validatorRejected
}

/// The verdict of an application validator.
public enum ValidationResult: Sendable {
    case accept
    /// Drop and penalise the sender.
    case reject
    /// Drop silently.
    case ignore
}

enum MessageSigning {
    static let prefix = Array("libp2p-pubsub:".utf8)

    /// The bytes that are signed: the message without `signature` and `key`.
    static func signedBytes(_ message: Pubsub_Pb_Message) -> [UInt8] {
        var unsigned = message
        unsigned.clearSignature()
        unsigned.clearKey()
        let bytes: [UInt8] = (try? unsigned.serializedBytes()) ?? []
        return prefix + bytes
    }

    static func sign(_ message: inout Pubsub_Pb_Message, with key: PrivateKey) throws {
        let signature = try key.sign(signedBytes(message))
        message.signature = Data(signature)
        let peer = PeerID(publicKey: key.publicKey)
        if peer.extractPublicKey() == nil {
            message.key = Data(key.publicKey.marshal())
        }
    }

    /// Checks a received message against the policy; the author on success.
    static func verify(_ message: Pubsub_Pb_Message, policy: SignaturePolicy) -> Result<PeerID?, RejectReason> {
        switch policy {
        case .strictNoSign:
            if message.hasSignature || message.hasKey || message.hasFrom || message.hasSeqno {
                return .failure(.unexpectedSignature)
            }
            return .success(nil)
        case .strictSign:
            guard message.hasFrom, message.hasSeqno, message.hasSignature else { return .failure(.missingSignature) }
            guard let from = try? PeerID(bytes: Array(message.from)) else { return .failure(.keyMismatch) }
            let key: PublicKey
            if message.hasKey {
                guard let decoded = try? PublicKey(marshaled: Array(message.key)), from.matches(decoded) else {
                    return .failure(.keyMismatch)
                }
                key = decoded
            } else {
                guard let inlined = from.extractPublicKey() else { return .failure(.keyMismatch) }
                key = inlined
            }
            guard key.verify(signature: Array(message.signature), for: signedBytes(message)) else {
                return .failure(.invalidSignature)
            }
            return .success(from)
        }
    }

    /// The default message id: from + seqno.
    static func defaultID(_ message: Pubsub_Pb_Message) -> MessageID {
        MessageID(Array(message.from) + Array(message.seqno))
    }
}
