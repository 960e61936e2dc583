/// RFC 4648 base32 (lower case, no padding) and base64url (no padding), base16.
enum RFC4648 {
    static let base32Alphabet = Array("abcdefghijklmnopqrstuvwxyz234567".utf8)
    static let base64URLAlphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let hexAlphabet = Array("0123456789abcdef".utf8)

    static func encode(_ bytes: [UInt8], alphabet: [UInt8], bitsPerChar: Int) -> String {
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 8 / bitsPerChar + 1)
        var buffer = 0
        var bits = 0
        let mask = (1 << bitsPerChar) - 1
        for byte in bytes {
            buffer = (buffer << 8) | Int(byte)
            bits += 8
            while bits >= bitsPerChar {
                bits -= bitsPerChar
                out.append(alphabet[(buffer >> bits) & mask])
            }
            buffer &= (1 << bits) - 1
        }
        if bits > 0 { out.append(alphabet[(buffer << (bitsPerChar - bits)) & mask]) }
        return String(decoding: out, as: UTF8.self)
    }

    static func decode(
        _ text: some StringProtocol, alphabet: [UInt8], bitsPerChar: Int, name: String, caseInsensitive: Bool
    ) throws(BaseEncodingError) -> [UInt8] {
        var table = [Int](repeating: -1, count: 256)
        for (index, char) in alphabet.enumerated() {
            table[Int(char)] = index
            if caseInsensitive, char >= UInt8(ascii: "a"), char <= UInt8(ascii: "z") {
                table[Int(char - 32)] = index
            }
        }
        var out: [UInt8] = []
        var buffer = 0
        var bits = 0
        for char in text.utf8 {
            let value = table[Int(char)]
            guard value >= 0 else { throw .invalidCharacter(Character(Unicode.Scalar(char)), encoding: name) }
            buffer = (buffer << bitsPerChar) | value
            bits += bitsPerChar
            if bits >= 8 {
                bits -= 8
                out.append(UInt8((buffer >> bits) & 0xff))
            }
            buffer &= (1 << bits) - 1
        }
        // Leftover bits must be padding zeros and fewer than a whole character's worth.
        if bits >= bitsPerChar || buffer != 0 { throw .invalidLength(encoding: name) }
        return out
    }
}

/// Multibase: a one-character prefix names the encoding of the rest.
public enum Multibase: Character, Sendable, CaseIterable {
    case base16 = "f"
    case base32 = "b"
    case base58btc = "z"
    case base64url = "u"

    public func encode(_ bytes: some Collection<UInt8>) -> String {
        String(rawValue) + encodeBare(Array(bytes))
    }

    func encodeBare(_ bytes: [UInt8]) -> String {
        switch self {
        case .base16: return RFC4648.encode(bytes, alphabet: RFC4648.hexAlphabet, bitsPerChar: 4)
        case .base32: return RFC4648.encode(bytes, alphabet: RFC4648.base32Alphabet, bitsPerChar: 5)
        case .base58btc: return Base58.encode(bytes)
        case .base64url: return RFC4648.encode(bytes, alphabet: RFC4648.base64URLAlphabet, bitsPerChar: 6)
        }
    }

    func decodeBare(_ text: Substring) throws(BaseEncodingError) -> [UInt8] {
        switch self {
        case .base16:
            return try RFC4648.decode(
                text, alphabet: RFC4648.hexAlphabet, bitsPerChar: 4, name: "base16", caseInsensitive: true)
        case .base32:
            return try RFC4648.decode(
                text, alphabet: RFC4648.base32Alphabet, bitsPerChar: 5, name: "base32", caseInsensitive: false)
        case .base58btc:
            return try Base58.decode(text)
        case .base64url:
            return try RFC4648.decode(
                text, alphabet: RFC4648.base64URLAlphabet, bitsPerChar: 6, name: "base64url", caseInsensitive: false)
        }
    }

    /// Decodes multibase text: the encoding it used and the bytes.
    public static func decode(_ text: String) throws(BaseEncodingError) -> (Multibase, [UInt8]) {
        guard let prefix = text.first else { throw .empty }
        guard let base = Multibase(rawValue: prefix) else { throw .unknownMultibasePrefix(prefix) }
        return (base, try base.decodeBare(text.dropFirst()))
    }
}
