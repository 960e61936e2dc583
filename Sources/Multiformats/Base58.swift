/// Errors decoding base-N text.
public enum BaseEncodingError: Error, CustomStringConvertible, Sendable, Equatable {
    case invalidCharacter(Character, encoding: String)
    case invalidLength(encoding: String)
    case unknownMultibasePrefix(Character)
    case empty

    public var description: String {
        switch self {
        case .invalidCharacter(let c, let e): return "invalid \(e) character '\(c)'"
        case .invalidLength(let e): return "invalid \(e) length"
        case .unknownMultibasePrefix(let c): return "unknown or unsupported multibase prefix '\(c)'"
        case .empty: return "empty multibase string"
        }
    }
}

/// Base58 with the bitcoin alphabet (used by peer ids and CIDv0).
public enum Base58 {
    static let alphabet = Array("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".utf8)
    static let reverse: [Int8] = {
        var table = [Int8](repeating: -1, count: 256)
        for (index, char) in alphabet.enumerated() { table[Int(char)] = Int8(index) }
        return table
    }()

    public static func encode(_ bytes: some Collection<UInt8>) -> String {
        let input = Array(bytes)
        let zeros = input.prefix(while: { $0 == 0 }).count
        // log(256)/log(58) < 1.37
        var digits = [UInt8](repeating: 0, count: (input.count - zeros) * 138 / 100 + 1)
        var length = 0
        for byte in input[zeros...] {
            var carry = Int(byte)
            var i = 0
            var index = digits.count - 1
            while (carry != 0 || i < length) && index >= 0 {
                carry += 256 * Int(digits[index])
                digits[index] = UInt8(carry % 58)
                carry /= 58
                i += 1
                index -= 1
            }
            length = i
        }
        let significant = digits.drop(while: { $0 == 0 })
        var out = [UInt8](repeating: alphabet[0], count: zeros)
        out.append(contentsOf: significant.map { alphabet[Int($0)] })
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: some StringProtocol) throws(BaseEncodingError) -> [UInt8] {
        let chars = Array(text.utf8)
        let zeros = chars.prefix(while: { $0 == alphabet[0] }).count
        var bytes = [UInt8](repeating: 0, count: (chars.count - zeros) * 733 / 1000 + 1)
        var length = 0
        for char in chars[zeros...] {
            let value = reverse[Int(char)]
            guard value >= 0 else { throw .invalidCharacter(Character(Unicode.Scalar(char)), encoding: "base58btc") }
            var carry = Int(value)
            var i = 0
            var index = bytes.count - 1
            while (carry != 0 || i < length) && index >= 0 {
                carry += 58 * Int(bytes[index])
                bytes[index] = UInt8(carry % 256)
                carry /= 256
                i += 1
                index -= 1
            }
            length = i
        }
        return [UInt8](repeating: 0, count: zeros) + bytes.drop(while: { $0 == 0 })
    }
}

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
