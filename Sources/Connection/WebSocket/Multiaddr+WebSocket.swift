import Identity
import Multiformats
import NIOCore
import Transport

/// Where a `/ws` dial goes and what it tells the server.
struct WebSocketDialTarget: Sendable {
    typealias Endpoint = TCPTarget
    let endpoint: Endpoint
    /// The HTTP `Host` header: the name (or the IP literal, IPv6 in brackets) and the port.
    let hostHeader: String
    /// From a trailing `/p2p/<id>`.
    let expectedPeer: PeerID?
}

/// An `/ip4|ip6|dns4|dns6|dns/<host>/tcp/<port>/ws[/p2p/<id>]` address taken apart.
struct WebSocketAddress {
    let host: MultiaddrComponent
    let port: UInt16
    let peer: [UInt8]?

    /// Parses `address`; `/wss` and `/tls/.../ws` are refused with their own error
    /// (TLS is not implemented), anything else that is not `/ws` as unsupported.
    init(_ address: Multiaddr) throws(WebSocketError) {
        let parts = address.components
        if parts.contains(where: { $0 == .wss || $0 == .tls }) {
            throw .secureWebSocketUnsupported(address: "\(address)")
        }
        guard parts.count == 3 || parts.count == 4,
            case .tcp(let port) = parts[1], parts[2] == .ws
        else { throw .unsupportedAddress("\(address)") }
        switch parts[0] {
        case .ip4, .ip6, .dns, .dns4, .dns6: break
        default: throw .unsupportedAddress("\(address)")
        }
        var peer: [UInt8]?
        if parts.count == 4 {
            guard case .p2p(let multihash) = parts[3] else { throw .unsupportedAddress("\(address)") }
            peer = multihash
        }
        self.host = parts[0]
        self.port = port
        self.peer = peer
    }

    /// The IP literal of an `/ip4` or `/ip6` host, nil for names.
    var ipLiteral: String? { Multiaddr([host]).ipAddressText }

    /// The socket address to listen on (listening needs a literal IP).
    func listenAddress(original: Multiaddr) throws(WebSocketError) -> SocketAddress {
        guard peer == nil, let ip = ipLiteral else { throw .unsupportedAddress("\(original)") }
        do {
            return try SocketAddress(ipAddress: ip, port: Int(port))
        } catch {
            throw .unsupportedAddress("\(original)")
        }
    }

    func dialTarget(original: Multiaddr) throws(WebSocketError) -> WebSocketDialTarget {
        var expected: PeerID?
        if let peer {
            do {
                expected = try PeerID(bytes: peer)
            } catch {
                throw .unsupportedAddress("\(original)")
            }
        }
        let endpoint: WebSocketDialTarget.Endpoint
        let hostText: String
        if let ip = ipLiteral {
            do {
                endpoint = .socket(try SocketAddress(ipAddress: ip, port: Int(port)))
            } catch {
                throw .unsupportedAddress("\(original)")
            }
            hostText = ip.contains(":") ? "[\(ip)]" : ip
        } else {
            switch host {
            case .dns(let name), .dns4(let name), .dns6(let name):
                endpoint = .host(name, Int(port))
                hostText = name
            default:
                throw .unsupportedAddress("\(original)")
            }
        }
        // RFC 7230: the port may be left out only when it is the scheme's default.
        let hostHeader = port == 80 ? hostText : "\(hostText):\(port)"
        return WebSocketDialTarget(endpoint: endpoint, hostHeader: hostHeader, expectedPeer: expected)
    }
}
