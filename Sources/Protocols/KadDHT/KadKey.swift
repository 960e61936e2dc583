import Crypto

/// A point of the Kademlia key space: the SHA-256 of a peer id's bytes or of a
/// record key, held as four big-endian 64-bit words so XOR and comparison are cheap.
public struct KadKey: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let words: (UInt64, UInt64, UInt64, UInt64)

    public init(words: (UInt64, UInt64, UInt64, UInt64)) {
        self.words = words
    }

    /// The key of `bytes` (a peer id's multihash bytes, or a record or provider key).
    public init(hashing bytes: some Sequence<UInt8>) {
        self.init(digest: Array(SHA256.hash(data: Array(bytes))))
    }

    /// From 32 bytes of digest.
    init(digest: [UInt8]) {
        precondition(digest.count == 32, "a Kademlia key is 32 bytes")
        func word(_ at: Int) -> UInt64 {
            var value: UInt64 = 0
            for byte in digest[at..<(at + 8)] { value = value << 8 | UInt64(byte) }
            return value
        }
        words = (word(0), word(8), word(16), word(24))
    }

    public static func == (lhs: KadKey, rhs: KadKey) -> Bool {
        lhs.words == rhs.words
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    /// Keys ordered as 256-bit numbers (so distances order by closeness).
    public static func < (lhs: KadKey, rhs: KadKey) -> Bool {
        if lhs.words.0 != rhs.words.0 { return lhs.words.0 < rhs.words.0 }
        if lhs.words.1 != rhs.words.1 { return lhs.words.1 < rhs.words.1 }
        if lhs.words.2 != rhs.words.2 { return lhs.words.2 < rhs.words.2 }
        return lhs.words.3 < rhs.words.3
    }

    /// The XOR distance to `other`, itself a key-space value.
    public func distance(to other: KadKey) -> KadKey {
        KadKey(words: (words.0 ^ other.words.0, words.1 ^ other.words.1, words.2 ^ other.words.2, words.3 ^ other.words.3))
    }

    /// The number of leading bits this key shares with `other` (256 when equal).
    public func commonPrefixLength(with other: KadKey) -> Int {
        let d = distance(to: other).words
        if d.0 != 0 { return d.0.leadingZeroBitCount }
        if d.1 != 0 { return 64 + d.1.leadingZeroBitCount }
        if d.2 != 0 { return 128 + d.2.leadingZeroBitCount }
        return 192 + d.3.leadingZeroBitCount
    }

    public var description: String {
        String(words.0, radix: 16) + "…"
    }
}
