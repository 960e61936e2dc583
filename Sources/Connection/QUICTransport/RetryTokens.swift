import Crypto
import NIOCore
import QUIC

/// Stateless Retry (RFC 9000 §8.1.2): a listener under load answers a client's
/// first Initial with a Retry carrying a token only it can make; the client
/// sends its Initial again with the token, which proves it receives at its
/// address. Only then does the listener keep state for it, so spoofed Initials
/// cost us one small reply each and hold no handshake slot.
///
/// A token is: the issue time (8 bytes, seconds), the original destination ID
/// (its length, then the bytes), and an HMAC-SHA256 (first 16 bytes) over
/// those and the client's address, under a key made when the listener starts.
struct RetryTokens: Sendable {
    /// How long a token is good for: a client answers a Retry within a round trip or two.
    static let lifetime: Int64 = 10
    static let macLength = 16

    /// The MAC key's bytes (swift-crypto's `SymmetricKey` is not Sendable).
    private let key: [UInt8] = {
        var generator = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
    }()

    /// What a valid token says about the connection to create.
    struct Validated: Equatable {
        let originalDestination: ConnectionID
    }

    func make(for client: SocketAddress, originalDestination: ConnectionID, now: Int64) -> [UInt8] {
        var token: [UInt8] = []
        withUnsafeBytes(of: UInt64(bitPattern: now).bigEndian) { token.append(contentsOf: $0) }
        token.append(UInt8(originalDestination.count))
        token.append(contentsOf: originalDestination.bytes)
        token.append(contentsOf: mac(token, client))
        return token
    }

    /// The original destination ID if `token` was made by us for `client` less than `lifetime` ago.
    func validate(_ token: [UInt8], from client: SocketAddress, now: Int64) -> Validated? {
        guard token.count >= 9 + Self.macLength else { return nil }
        let idLength = Int(token[8])
        guard idLength <= ConnectionID.maxLength, token.count == 9 + idLength + Self.macLength else { return nil }
        let body = Array(token[..<(9 + idLength)])
        guard mac(body, client) == Array(token[(9 + idLength)...]) else { return nil }
        let issued = Int64(bitPattern: body[0..<8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) })
        guard now >= issued, now - issued <= Self.lifetime, let id = try? ConnectionID(body[9..<(9 + idLength)]) else { return nil }
        return Validated(originalDestination: id)
    }

    private func mac(_ body: [UInt8], _ client: SocketAddress) -> [UInt8] {
        var authenticated = body
        authenticated.append(contentsOf: Array("\(client)".utf8))
        return Array(HMAC<SHA256>.authenticationCode(for: authenticated, using: SymmetricKey(data: key)).prefix(Self.macLength))
    }
}

/// When a listener answers first Initials with a Retry.
public enum QUICRetryPolicy: Sendable {
    /// Once half of the inbound handshake slots are taken (the default).
    case underLoad
    /// Always: every client proves its address first (one more round trip).
    case always
    /// Never.
    case never
}
