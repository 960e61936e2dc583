import Crypto
import Multiformats

/// Errors parsing a peer id.
public enum PeerIDError: Error, CustomStringConvertible, Sendable, Equatable {
    case invalidText(String)
    case invalidMultihash(String)
    case unsupportedHash(UInt64)

    public var description: String {
        switch self {
        case .invalidText(let t): return "invalid peer id \"\(t)\""
        case .invalidMultihash(let why): return "invalid peer id multihash: \(why)"
        case .unsupportedHash(let code): return "peer id multihash code 0x\(String(code, radix: 16)) is neither identity nor sha2-256"
        }
    }
}

/// A peer id: the multihash of the peer's marshaled public key (identity
/// multihash when that is at most 42 bytes, sha2-256 otherwise).
public struct PeerID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public static let maxInlineKeyLength = 42

    public let multihash: Multihash

    public init(publicKey: PublicKey) {
        let marshaled = publicKey.marshal()
        if marshaled.count <= Self.maxInlineKeyLength {
            multihash = Multihash(code: Multihash.identity, digest: marshaled)
        } else {
            multihash = Multihash(code: Multihash.sha2_256, digest: Array(SHA256.hash(data: marshaled)))
        }
    }

    /// From the binary multihash; identity digests must hold a valid public key.
    public init(bytes: some Collection<UInt8>) throws(PeerIDError) {
        let multihash: Multihash
        do {
            multihash = try Multihash(bytes: bytes)
        } catch {
            throw .invalidMultihash("\(error)")
        }
        switch multihash.code {
        case Multihash.identity:
            guard multihash.digest.count <= Self.maxInlineKeyLength,
                (try? PublicKey(marshaled: multihash.digest)) != nil
            else { throw .invalidMultihash("identity digest is not a public key of at most 42 bytes") }
        case Multihash.sha2_256:
            guard multihash.digest.count == 32 else { throw .invalidMultihash("sha2-256 digest must be 32 bytes") }
        default:
            throw .unsupportedHash(multihash.code)
        }
        self.multihash = multihash
    }

    /// From text: base58btc (`12D3KooW...`, `Qm...`, `16Uiu2...`) or a CIDv1 with the libp2p-key codec.
    public init(_ text: String) throws(PeerIDError) {
        guard !text.isEmpty, text.utf8.count <= 256 else { throw .invalidText(text) }
        let bytes: [UInt8]
        if text.hasPrefix("1") || text.hasPrefix("Qm") {
            guard let decoded = try? Base58.decode(text) else { throw .invalidText(text) }
            bytes = decoded
        } else {
            guard let multihash = try? LibP2PKeyCID.decode(text) else { throw .invalidText(text) }
            bytes = multihash.bytes
        }
        try self.init(bytes: bytes)
    }

    /// The multihash bytes (what `/p2p/` carries in binary).
    public var bytes: [UInt8] { multihash.bytes }

    /// base58btc, the usual text form.
    public var description: String { Base58.encode(bytes) }

    /// The CIDv1 text form (`bafz...`).
    public var cidString: String { LibP2PKeyCID.encode(multihash) }

    /// The public key when it is inlined (identity multihash).
    public func extractPublicKey() -> PublicKey? {
        guard multihash.code == Multihash.identity else { return nil }
        return try? PublicKey(marshaled: multihash.digest)
    }

    /// Whether this peer id belongs to `publicKey`.
    public func matches(_ publicKey: PublicKey) -> Bool {
        PeerID(publicKey: publicKey) == self
    }

    public static func < (lhs: PeerID, rhs: PeerID) -> Bool {
        lhs.bytes.lexicographicallyPrecedes(rhs.bytes)
    }
}
