import Crypto
import Multiformats

/// Keys of content in the DHT. Provider records are keyed by a multihash (as
/// go- and py-libp2p do); its text form is a CIDv1 with the raw codec.
public enum ContentKey {
    /// The raw-binary multicodec of a CID.
    public static let rawCodec: UInt64 = 0x55

    /// The sha2-256 multihash of `bytes`: the DHT key of that content.
    public static func sha256(_ bytes: some Sequence<UInt8>) -> [UInt8] {
        Multihash(code: Multihash.sha2_256, digest: Array(SHA256.hash(data: Array(bytes)))).bytes
    }

    /// The key a chat provides for a topic: sha256("p2pchat/topic/" + name).
    public static func topic(_ name: String) -> [UInt8] {
        sha256(Array("p2pchat/topic/\(name)".utf8))
    }

    /// `b` + base32 of CIDv1 (raw codec) around the multihash `key`.
    public static func cidString(_ key: [UInt8]) -> String {
        var bytes: [UInt8] = [0x01]
        Varint.append(rawCodec, to: &bytes)
        bytes.append(contentsOf: key)
        return Multibase.base32.encode(bytes)
    }

    /// A key from text: a CID, v0 (`Qm...`) or v1 (`bafy...`), as its
    /// multihash (go-libp2p keys providers by the multihash of a CID), or hex of a multihash.
    public static func parse(_ text: String) -> [UInt8]? {
        if let cid = try? CID(text) { return cid.multihash.bytes }
        guard text.count % 2 == 0, !text.isEmpty else { return nil }
        var bytes: [UInt8] = []
        var index = text.startIndex
        while index < text.endIndex {
            let next = text.index(index, offsetBy: 2)
            guard let byte = UInt8(text[index..<next], radix: 16) else { return nil }
            bytes.append(byte)
            index = next
        }
        return bytes
    }
}
