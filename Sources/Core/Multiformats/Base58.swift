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
        let significant = rebase(
            input[zeros...].map { Int($0) }, from: 256, to: 58, capacity: (input.count - zeros) * 138 / 100 + 1)
        var out = [UInt8](repeating: alphabet[0], count: zeros)
        out.append(contentsOf: significant.map { alphabet[Int($0)] })
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ text: some StringProtocol) throws(BaseEncodingError) -> [UInt8] {
        let chars = Array(text.utf8)
        let zeros = chars.prefix(while: { $0 == alphabet[0] }).count
        var values: [Int] = []
        values.reserveCapacity(chars.count - zeros)
        for char in chars[zeros...] {
            let value = reverse[Int(char)]
            guard value >= 0 else { throw .invalidCharacter(Character(Unicode.Scalar(char)), encoding: "base58btc") }
            values.append(Int(value))
        }
        // log(58)/log(256) < 0.733
        return [UInt8](repeating: 0, count: zeros)
            + rebase(values, from: 58, to: 256, capacity: (chars.count - zeros) * 733 / 1000 + 1)
    }

    /// The digits (most significant first) in base `to` of the number whose
    /// digits in base `from` are `values`, without leading zeros; `capacity`
    /// bounds how many digits the result may need.
    private static func rebase(_ values: [Int], from: Int, to: Int, capacity: Int) -> ArraySlice<UInt8> {
        var digits = [UInt8](repeating: 0, count: capacity)
        var length = 0
        for value in values {
            var carry = value
            var i = 0
            var index = digits.count - 1
            while (carry != 0 || i < length) && index >= 0 {
                carry += from * Int(digits[index])
                digits[index] = UInt8(carry % to)
                carry /= to
                i += 1
                index -= 1
            }
            length = i
        }
        return digits.drop(while: { $0 == 0 })
    }
}
