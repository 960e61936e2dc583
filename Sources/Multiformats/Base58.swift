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
