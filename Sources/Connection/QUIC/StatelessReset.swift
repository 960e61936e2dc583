import Crypto

/// Stateless resets (RFC 9000 §10.3): an endpoint that lost a connection's
/// state (it restarted) answers the connection's packets with a datagram
/// that looks like a short-header packet and ends in the reset token the
/// connection's ID was issued with. Tokens come from a key, so a restarted
/// endpoint with the same key makes the same tokens without any state.
public enum StatelessReset {
    public static let tokenLength = 16
    /// The smallest reset: 5 unpredictable bytes (a short header's first
    /// byte and at least 4 more), then the token (§10.3).
    public static let minimumSize = 21
    /// Resets are one byte shorter than what they answer up to this size,
    /// and this size above it (§10.3: so that two endpoints cannot loop, and
    /// a reset amplifies nothing).
    static let usualSize = 43

    /// The token of a connection ID we issue: the first 16 bytes of
    /// HMAC-SHA256(key, ID) (as quic-go derives them).
    public static func token(for id: ConnectionID, key: [UInt8]) -> [UInt8] {
        Array(HMAC<SHA256>.authenticationCode(for: id.bytes, using: SymmetricKey(data: key)).prefix(tokenLength))
    }

    /// A reset answering a datagram of `size` bytes: random bytes with a
    /// short header's fixed bits (`01`), shorter than the trigger, ending in
    /// `token`; nil when the trigger is too small to answer without a loop.
    public static func packet(token: [UInt8], answering size: Int) -> [UInt8]? {
        let length = min(size - 1, usualSize)
        guard token.count == tokenLength, length >= minimumSize else { return nil }
        var bytes = (0..<(length - tokenLength)).map { _ in UInt8.random(in: 0...255) }
        bytes[0] = 0x40 | (bytes[0] & 0x3F)
        return bytes + token
    }

    /// The last 16 bytes of a datagram that may be a reset (its size and
    /// short-header form allow one), to look up among known tokens.
    public static func candidateToken(_ datagram: [UInt8]) -> ArraySlice<UInt8>? {
        guard datagram.count >= minimumSize, let first = datagram.first, first & 0xC0 == 0x40 else { return nil }
        return datagram.suffix(tokenLength)
    }
}
