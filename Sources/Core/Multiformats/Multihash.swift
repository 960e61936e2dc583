/// Errors decoding a multihash or CID.
public enum MultihashError: Error, CustomStringConvertible, Sendable, Equatable {
    case varint(VarintError)
    case lengthMismatch(declared: UInt64, actual: Int)
    case digestTooLong(Int)
    case unsupportedCIDVersion(UInt64)
    case wrongCodec(UInt64)
    case encoding(BaseEncodingError)

    public var description: String {
        switch self {
        case .varint(let e): return "multihash: \(e)"
        case .lengthMismatch(let declared, let actual): return "multihash declares \(declared) digest bytes but has \(actual)"
        case .digestTooLong(let n): return "multihash digest of \(n) bytes is too long"
        case .unsupportedCIDVersion(let v): return "unsupported CID version \(v)"
        case .wrongCodec(let c): return "CID codec 0x\(String(c, radix: 16)) is not libp2p-key (0x72)"
        case .encoding(let e): return "CID: \(e)"
        }
    }
}

/// A self-describing hash: hash function code, digest length, digest.
public struct Multihash: Hashable, Sendable {
    public static let identity: UInt64 = 0x00
    public static let sha2_256: UInt64 = 0x12
    /// Digests longer than this are refused (no real hash needs more).
    public static let maxDigestLength = 1024

    public let code: UInt64
    public let digest: [UInt8]

    public init(code: UInt64, digest: [UInt8]) {
        self.code = code
        self.digest = digest
    }

    /// `varint(code) varint(length) digest`.
    public var bytes: [UInt8] {
        var out = Varint.encode(code)
        Varint.append(UInt64(digest.count), to: &out)
        out.append(contentsOf: digest)
        return out
    }

    /// Decodes exactly one multihash filling `bytes`.
    public init(bytes: some Collection<UInt8>) throws(MultihashError) {
        let input = Array(bytes)
        let (code, length, prefixSize): (UInt64, UInt64, Int)
        do { (code, length, prefixSize) = try Varint.decodePair(input) } catch { throw .varint(error) }
        guard length <= UInt64(Self.maxDigestLength) else { throw .digestTooLong(Int(clamping: length)) }
        let digest = input[prefixSize...]
        guard digest.count == Int(length) else { throw .lengthMismatch(declared: length, actual: digest.count) }
        self.code = code
        self.digest = Array(digest)
    }
}

/// A CIDv1: a content codec and the multihash of the content
/// (<https://github.com/multiformats/cid>).
public struct CID: Hashable, Sendable, CustomStringConvertible {
    /// Raw bytes (files, arbitrary keys).
    public static let raw: UInt64 = 0x55

    public let codec: UInt64
    public let multihash: Multihash

    public init(codec: UInt64, multihash: Multihash) {
        self.codec = codec
        self.multihash = multihash
    }

    /// 0x01, the codec and the multihash, as varints and bytes.
    public var bytes: [UInt8] {
        var bytes: [UInt8] = [0x01]
        Varint.append(codec, to: &bytes)
        bytes.append(contentsOf: multihash.bytes)
        return bytes
    }

    public init(bytes: some Collection<UInt8>) throws(MultihashError) {
        let bytes = Array(bytes)
        let (version, codec, prefixSize): (UInt64, UInt64, Int)
        do { (version, codec, prefixSize) = try Varint.decodePair(bytes) } catch { throw .varint(error) }
        guard version == 1 else { throw .unsupportedCIDVersion(version) }
        self.codec = codec
        multihash = try Multihash(bytes: bytes[prefixSize...])
    }

    /// The dag-pb codec: what a CIDv0 names.
    public static let dagPB: UInt64 = 0x70

    /// A multibase text form (`b` + base32 by default), or a CIDv0 (`Qm...`:
    /// base58btc of a sha2-256 multihash, no prefix), taken as the CIDv1 of
    /// the same multihash with the dag-pb codec.
    public init(_ text: String) throws(MultihashError) {
        if text.utf8.count == 46, text.hasPrefix("Qm") {
            let bytes: [UInt8]
            do { bytes = try Base58.decode(text) } catch { throw .encoding(error) }
            self.init(codec: Self.dagPB, multihash: try Multihash(bytes: bytes))
            return
        }
        let bytes: [UInt8]
        do {
            (_, bytes) = try Multibase.decode(text)
        } catch {
            throw .encoding(error)
        }
        try self.init(bytes: bytes)
    }

    public func text(base: Multibase = .base32) -> String { base.encode(bytes) }

    public var description: String { text() }
}

/// CIDv1 with the libp2p-key codec, the other text form of a peer id.
public enum LibP2PKeyCID {
    public static let codec: UInt64 = 0x72

    /// `b` + base32(0x01, 0x72, multihash).
    public static func encode(_ multihash: Multihash, base: Multibase = .base32) -> String {
        CID(codec: codec, multihash: multihash).text(base: base)
    }

    /// The multihash inside a CIDv1 string whose codec is libp2p-key.
    public static func decode(_ text: String) throws(MultihashError) -> Multihash {
        let cid = try CID(text)
        guard cid.codec == Self.codec else { throw .wrongCodec(cid.codec) }
        return cid.multihash
    }
}
