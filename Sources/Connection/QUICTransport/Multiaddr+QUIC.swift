import Identity
import Multiformats
import NIOCore
import Transport

/// Where a QUIC dial goes: a literal socket address, or a name to resolve first.
enum QUICTarget: Sendable {
    case socket(SocketAddress)
    case host(String, port: Int, ipv6: Bool?)
}

extension Multiaddr {
    /// `/ip4|ip6|dns|dns4|dns6/<host>/udp/<port>/quic-v1`, a trailing `/p2p/<id>` allowed.
    var isQUICv1: Bool {
        let parts = components
        guard parts.count >= 3, case .udp = parts[1], case .quicV1 = parts[2] else { return false }
        switch parts[0] {
        case .ip4, .ip6, .dns, .dns4, .dns6: break
        default: return false
        }
        return parts.dropFirst(3).allSatisfy { if case .p2p = $0 { true } else { false } }
    }

    /// What a QUIC dial to this address reaches.
    func quicTarget() throws(TransportError) -> QUICTarget {
        guard isQUICv1, case .udp(let port) = components[1] else { throw .unsupportedAddress("\(self)") }
        switch components[0] {
        case .ip4, .ip6:
            guard let text = Multiaddr([components[0]]).ipAddressText,
                let address = try? SocketAddress(ipAddress: text, port: Int(port))
            else { throw .unsupportedAddress("\(self)") }
            return .socket(address)
        case .dns(let name): return .host(name, port: Int(port), ipv6: nil)
        case .dns4(let name): return .host(name, port: Int(port), ipv6: false)
        case .dns6(let name): return .host(name, port: Int(port), ipv6: true)
        default: throw .unsupportedAddress("\(self)")
        }
    }

    /// `/ip4|ip6/<ip>/udp/<port>/quic-v1` of a UDP socket address.
    init(quicSocketAddress address: SocketAddress) throws(TransportError) {
        // The TCP form carries the IP and port; only the transport part differs.
        guard let tcp = try? Multiaddr(socketAddress: address), case .tcp(let port) = tcp.components.last else {
            throw .unsupportedAddress("\(address)")
        }
        self = Multiaddr([tcp.components[0], .udp(port), .quicV1])
    }
}
