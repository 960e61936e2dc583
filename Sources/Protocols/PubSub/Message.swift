import Foundation
import Identity

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
    /// The author's signature and key as they came (nil when unsigned, or the
    /// key inlined in the peer id): with them the message can be passed on
    /// outside pubsub (history) and verified there.
    public let signature: [UInt8]?
    public let key: [UInt8]?

    public init(
        topic: String, data: [UInt8], from: PeerID?, seqno: [UInt8]?, id: MessageID, receivedFrom: PeerID?,
        signature: [UInt8]? = nil, key: [UInt8]? = nil
    ) {
        self.topic = topic
        self.data = data
        self.from = from
        self.seqno = seqno
        self.id = id
        self.receivedFrom = receivedFrom
        self.signature = signature
        self.key = key
    }

    init(_ message: RawMessage, author: PeerID?, id: MessageID, receivedFrom: PeerID?) {
        self.init(
            topic: message.topic, data: message.data, from: author, seqno: message.seqno, id: id,
            receivedFrom: receivedFrom, signature: message.signature, key: message.key)
    }

    /// The message as pubsub carries it (its protobuf), signature included.
    public var wireBytes: [UInt8] {
        PubSubCodec.encode(
            RawMessage(from: from?.bytes, data: data, seqno: seqno, topic: topic, signature: signature, key: key))
    }

    /// When its author sent it, as signed: the seqno read as Unix nanoseconds
    /// (8 bytes, big-endian), which our publisher sets to the send time; nil
    /// (time unknown) for an unsigned message or a seqno that is no plausible
    /// time (before 2020, or more than 10 minutes after `now`: rust-libp2p's are
    /// random). go-libp2p and older p2pchat seed theirs with their start time
    /// and count up, so for them it is when their pubsub started: never later
    /// than the sending, so an old line is never taken for a recent one.
    public func signedSendTime(now: Date = Date()) -> Date? {
        guard from != nil, signature != nil, let seqno, seqno.count == 8 else { return nil }
        let nanoseconds = seqno.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let time = Date(timeIntervalSince1970: Double(nanoseconds) / 1_000_000_000)
        guard time >= Self.earliestSendTime, time <= now.addingTimeInterval(Self.maxClockSkew) else { return nil }
        return time
    }

    /// 2020-01-01: no seqno earlier than this is a send time.
    static let earliestSendTime = Date(timeIntervalSince1970: 1_577_836_800)
    /// How far ahead of ours an author's clock may be.
    static let maxClockSkew: TimeInterval = 600

    /// A message from its wire bytes (as `wireBytes` gives), accepted only if
    /// its signature holds under `policy`; its id is the default (from + seqno).
    /// `receivedFrom` is the peer that passed it on.
    public static func verified(
        wire bytes: [UInt8], policy: SignaturePolicy = .strictSign, maxSize: Int = 1024 * 1024, receivedFrom: PeerID?
    ) throws(RejectReason) -> PubSubMessage {
        guard bytes.count <= maxSize + 1024 else { throw .tooLarge }
        guard let message = PubSubCodec.decodeMessage(bytes) else { throw .malformed }
        guard message.data.count <= maxSize else { throw .tooLarge }
        guard !message.topic.isEmpty else { throw .missingTopic }
        let author = try MessageSigning.verify(message, policy: policy).get()
        return PubSubMessage(message, author: author, id: MessageSigning.defaultID(message), receivedFrom: receivedFrom)
    }
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
    /// Not a pubsub message at all (bytes that do not decode).
    case malformed
}

/// The verdict of an application validator.
public enum ValidationResult: Sendable {
    case accept
    /// Drop and penalise the sender.
    case reject
    /// Drop silently.
    case ignore
}

/// Message signatures (spec: pubsub "Message Signing"), on our own message type.
enum MessageSigning {
    static let prefix = Array("libp2p-pubsub:".utf8)

    /// The bytes that are signed: the message's protobuf without `signature` and `key`.
    static func signedBytes(_ message: RawMessage) -> [UInt8] {
        var unsigned = message
        unsigned.signature = nil
        unsigned.key = nil
        return prefix + PubSubCodec.encode(unsigned)
    }

    static func sign(_ message: inout RawMessage, with key: PrivateKey) throws {
        message.signature = try key.sign(signedBytes(message))
        let peer = PeerID(publicKey: key.publicKey)
        if peer.extractPublicKey() == nil {
            message.key = key.publicKey.marshal()
        }
    }

    /// Checks a received message against the policy; the author on success.
    static func verify(_ message: RawMessage, policy: SignaturePolicy) -> Result<PeerID?, RejectReason> {
        switch policy {
        case .strictNoSign:
            if message.signature != nil || message.key != nil || message.from != nil || message.seqno != nil {
                return .failure(.unexpectedSignature)
            }
            return .success(nil)
        case .strictSign:
            guard let fromBytes = message.from, message.seqno != nil, let signature = message.signature else {
                return .failure(.missingSignature)
            }
            guard let from = try? PeerID(bytes: fromBytes) else { return .failure(.keyMismatch) }
            let key: PublicKey
            if let marshaled = message.key {
                guard let decoded = try? PublicKey(marshaled: marshaled), from.matches(decoded) else {
                    return .failure(.keyMismatch)
                }
                key = decoded
            } else {
                guard let inlined = from.extractPublicKey() else { return .failure(.keyMismatch) }
                key = inlined
            }
            guard key.verify(signature: signature, for: signedBytes(message)) else {
                return .failure(.invalidSignature)
            }
            return .success(from)
        }
    }

    /// The default message id: from + seqno.
    static func defaultID(_ message: RawMessage) -> MessageID {
        MessageID((message.from ?? []) + (message.seqno ?? []))
    }
}
