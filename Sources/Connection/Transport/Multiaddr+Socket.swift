import Identity
import Multiformats
import NIOCore

/// Where a TCP dial goes: a literal socket address, or a name to resolve.
public enum TCPTarget: Sendable {
    case socket(SocketAddress)
    case host(String, Int)
}

extension Multiaddr {
    /// `/ip4/0.0.0.0/tcp/0`, used when a socket has no address to report.
    static let unspecifiedTCP: Multiaddr = try! Multiaddr("/ip4/0.0.0.0/tcp/0")

    /// The multiaddr of a socket address (`/ip4|ip6/<ip>/tcp/<port>`).
    public init(socketAddress: SocketAddress) throws {
        guard let port = socketAddress.port else {
            throw TransportError.unsupportedAddress("\(socketAddress)")
        }
        switch socketAddress {
        case .v4(let v4):
            var ip = v4.address.sin_addr.s_addr  // already in network byte order
            let bytes = withUnsafeBytes(of: &ip) { Array($0) }
            self = Multiaddr([.ip4(bytes), .tcp(UInt16(port))])
        case .v6(let v6):
            var ip = v6.address.sin6_addr
            let bytes = withUnsafeBytes(of: &ip) { Array($0) }
            self = Multiaddr([.ip6(bytes), .tcp(UInt16(port))])
        default:
            throw TransportError.unsupportedAddress("\(socketAddress)")
        }
    }

    /// The socket address of an `/ip4|ip6/.../tcp/...` address (listening needs a literal IP).
    public func tcpSocketAddress() throws -> SocketAddress {
        guard case .socket(let address) = try tcpTarget() else {
            throw TransportError.unsupportedAddress("\(self)")
        }
        return address
    }

    /// What to connect to for this address; trailing `/p2p/<id>` is allowed.
    func tcpTarget() throws -> TCPTarget {
        let parts = components
        guard parts.count >= 2, case .tcp(let port) = parts[1] else {
            throw TransportError.unsupportedAddress("\(self)")
        }
        for extra in parts.dropFirst(2) {
            guard case .p2p = extra else { throw TransportError.unsupportedAddress("\(self)") }
        }
        switch parts[0] {
        case .ip4:
            let text = Multiaddr([parts[0]]).description.dropFirst("/ip4/".count)
            return .socket(try SocketAddress(ipAddress: String(text), port: Int(port)))
        case .ip6:
            let text = Multiaddr([parts[0]]).description.dropFirst("/ip6/".count)
            return .socket(try SocketAddress(ipAddress: String(text), port: Int(port)))
        case .dns(let name), .dns4(let name), .dns6(let name):
            return .host(name, Int(port))
        default:
            throw TransportError.unsupportedAddress("\(self)")
        }
    }

    /// The peer id of a trailing `/p2p/<id>`, if any.
    public var peerID: PeerID? {
        guard case .p2p(let multihash) = components.last else { return nil }
        return try? PeerID(bytes: multihash)
    }
}
