/// How far an IP address reaches: who could dial it.
public enum AddressScope: Sendable, Equatable {
    /// 0.0.0.0, `::`: a bind address, which nobody can dial.
    case unspecified
    /// 127/8, `::1`: this machine only.
    case loopback
    /// A local network only: the private ranges (10/8, 172.16/12, 192.168/16),
    /// carrier-grade NAT (100.64/10), link-local (169.254/16, fe80::/10) and
    /// unique local IPv6 (fc00::/7).
    case local
    /// Anything else, the documentation ranges included (203.0.113.0/24 is
    /// the "internet" of the NAT testbed).
    case `public`
}

extension Multiaddr {
    /// The scope of the address's IP (its first component, after a zone; an IPv4-mapped
    /// IPv6 address as its IPv4); nil when it does not start with an IP
    /// (a DNS name, `/memory`...).
    public var scope: AddressScope? {
        // A zone (`/ip6zone/eth0/ip6/fe80::1`) names the interface of the IP that follows.
        let ip = if case .ip6zone? = components.first { components.dropFirst().first } else { components.first }
        switch ip {
        case .ip4(let bytes)?: return Self.scope(ipv4: bytes)
        case .ip6(let bytes)?: return Self.scope(ipv6: bytes)
        default: return nil
        }
    }

    /// Whether a peer we see at `recipient` could use this address, as
    /// go-libp2p's address filters decide: a public address (or a name) for
    /// anyone, a local-network one only for a peer that is itself at a local
    /// or loopback address, loopback only for a peer on loopback (this
    /// machine), an unspecified one for nobody. A recipient that is not at an
    /// IP (a name, `/memory`) counts as public.
    public func isDialable(byPeerAt recipient: Multiaddr) -> Bool {
        guard let scope else { return true }
        let seen = recipient.scope ?? .public
        switch scope {
        case .unspecified: return false
        case .public: return true
        case .local: return seen == .local || seen == .loopback
        case .loopback: return seen == .loopback
        }
    }

    static func scope(ipv4 b: [UInt8]) -> AddressScope {
        guard b.count == 4 else { return .public }
        if b == [0, 0, 0, 0] { return .unspecified }
        if b[0] == 127 { return .loopback }
        if b[0] == 10 || (b[0] == 172 && (16...31).contains(b[1])) || (b[0] == 192 && b[1] == 168)
            || (b[0] == 100 && (64...127).contains(b[1])) || (b[0] == 169 && b[1] == 254)
        {
            return .local
        }
        return .public
    }

    static func scope(ipv6 b: [UInt8]) -> AddressScope {
        guard b.count == 16 else { return .public }
        if b.allSatisfy({ $0 == 0 }) { return .unspecified }
        if b.dropLast().allSatisfy({ $0 == 0 }) && b[15] == 1 { return .loopback }
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xFF && b[11] == 0xFF { return scope(ipv4: Array(b[12...])) }
        if (b[0] & 0xFE) == 0xFC || (b[0] == 0xFE && (b[1] & 0xC0) == 0x80) { return .local }
        return .public
    }
}
