/// Lower-case hex of `bytes`.
public func hex(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for byte in bytes {
        out.append(digits[Int(byte >> 4)])
        out.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: out, as: UTF8.self)
}

/// The bytes of hex `text`, ignoring white space (test vectors are often printed
/// in groups); traps on anything else, as a test vector with a typo should.
public func unhex(_ text: String) -> [UInt8] {
    let digits = text.unicodeScalars.filter { !$0.properties.isWhitespace }.map { Character($0) }
    precondition(digits.count % 2 == 0, "odd hex length")
    return stride(from: 0, to: digits.count, by: 2).map {
        guard let byte = UInt8(String(digits[$0...$0 + 1]), radix: 16) else { preconditionFailure("not hex: \(text)") }
        return byte
    }
}
