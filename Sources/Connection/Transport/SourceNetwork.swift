import Multiformats

/// Where a connection comes from, for the per-address shares of the limits
/// (connection slots, stream memory): an IPv4 address, or an IPv6 /64 (what
/// one host or customer gets), as the transport's handshake shares count.
/// A relayed connection counts as its relay's address. Nil for loopback when
/// loopback is exempt (local tests and tools share it), and for what is not IP.
public struct SourceNetwork: Hashable, Sendable {
    let bytes: [UInt8]

    public init?(_ address: Multiaddr, limitLoopback: Bool) {
        guard limitLoopback || address.scope != .loopback else { return nil }
        let ip = address.components.first {
            switch $0 {
            case .ip4, .ip6: true
            default: false
            }
        }
        switch ip {
        case .ip4(let bytes)?: self.bytes = bytes
        case .ip6(let bytes)? where bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF:
            self.bytes = Array(bytes[12...])
        case .ip6(let bytes)?: self.bytes = Array(bytes.prefix(8))
        default: return nil
        }
    }
}
