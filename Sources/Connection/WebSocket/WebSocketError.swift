import NIOHTTP1

/// What went wrong in the WebSocket layer of a `/ws` dial or listener.
///
/// TCP connect failures are reported as `TransportError.dialFailed`/`.dialTimeout`
/// (as the TCP transport does), failures of the libp2p upgrade that runs over the
/// WebSocket as the `TransportError` the upgrade reports.
public enum WebSocketError: Error, CustomStringConvertible, Sendable {
    /// `/wss` (or `/tls/.../ws`): WebSocket over TLS is not implemented.
    case secureWebSocketUnsupported(address: String)
    /// Not an `/ip4|ip6|dns*/.../tcp/<port>/ws[/p2p/<id>]` address (listening needs an IP).
    case unsupportedAddress(String)
    /// The HTTP upgrade did not finish within `WebSocketConfiguration.handshakeTimeout`.
    case handshakeTimeout(address: String)
    /// The server answered the upgrade request with another status than 101.
    case upgradeRefused(address: String, status: HTTPResponseStatus)
    /// The HTTP upgrade failed (bad `Sec-WebSocket-Accept`, malformed response, ...).
    case handshakeFailed(address: String, underlying: any Error)
    /// The connection closed before the upgrade finished.
    case closedDuringHandshake(address: String)
    /// The remote broke RFC 6455 or libp2p's use of it (a text frame, say); we closed with status 1002.
    case protocolViolation(String)

    public var description: String {
        switch self {
        case .secureWebSocketUnsupported(let a):
            return "\(a): secure WebSocket (/wss, /tls/ws) is not supported, only /ws"
        case .unsupportedAddress(let a):
            return "unsupported address \(a): need /ip4|ip6|dns|dns4|dns6/<host>/tcp/<port>/ws (an IP to listen)"
        case .handshakeTimeout(let a): return "\(a): WebSocket upgrade timed out"
        case .upgradeRefused(let a, let status): return "\(a): WebSocket upgrade refused: HTTP \(status.code) \(status.reasonPhrase)"
        case .handshakeFailed(let a, let error): return "\(a): WebSocket upgrade failed: \(error)"
        case .closedDuringHandshake(let a): return "\(a): connection closed during the WebSocket upgrade"
        case .protocolViolation(let reason): return "WebSocket protocol violation: \(reason)"
        }
    }
}
