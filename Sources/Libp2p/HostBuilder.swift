import Host
import Identity
import LibP2PSecurity
import Logging
import NIOCore
import Noise
import QUICTransport
import TLS
import Transport
import WebSocket

/// Makes a `Libp2pHost` from libp2p's usual parts, as rust-libp2p's
/// `SwarmBuilder` and go-libp2p's `defaults.go` do. The host knows only the
/// seams (`Transport`, `SecurityProtocol`); which transports and security
/// protocols make a node is decided here.
///
/// ```swift
/// let host = try Libp2pHostBuilder(key: key).build()  // TCP, /ws, /quic-v1; Noise, then TLS
/// let relayed = try Libp2pHostBuilder(key: key)
///     .transports(.tcp(reusePort: true), .webSocket(), .quic(), .transport(circuit))
///     .build()
/// ```
public struct Libp2pHostBuilder: Sendable {
    /// One transport, made on the host's event loop group.
    public struct TransportChoice: Sendable {
        let make: @Sendable (any EventLoopGroup) -> any Transport

        public init(_ make: @escaping @Sendable (any EventLoopGroup) -> any Transport) {
            self.make = make
        }

        /// `/tcp`; `reusePort` dials from the listening port (see `TCPTransport`).
        public static func tcp(reusePort: Bool = false) -> Self { Self { TCPTransport(group: $0, reusePort: reusePort) } }
        /// `/tcp/.../ws`.
        public static func webSocket(_ configuration: WebSocketConfiguration = .init()) -> Self {
            Self { WebSocketTransport(group: $0, configuration: configuration) }
        }
        /// `/udp/.../quic-v1`: secures and multiplexes by itself.
        public static func quic(retry: QUICRetryPolicy = .underLoad) -> Self { Self { QUICTransport(group: $0, retry: retry) } }
        /// A transport made beforehand (the circuit transport, the in-memory one).
        public static func transport(_ transport: any Transport) -> Self { Self { _ in transport } }
    }

    /// Offered in this order of preference by default: Noise, then TLS (as go-libp2p).
    public static var defaultSecurity: [any SecurityProtocol] { [NoiseSecurity(), TLSSecurity()] }
    /// Tried in this order by default (the first that can dial an address takes it).
    public static var defaultTransports: [TransportChoice] { [.tcp(), .webSocket(), .quic()] }

    public var key: PrivateKey
    /// NIO's process-wide group when nil.
    public var group: (any EventLoopGroup)?
    public var configuration = TransportConfiguration()
    public var limits = HostLimits()
    public var security: [any SecurityProtocol] = Self.defaultSecurity
    public var transports: [TransportChoice] = Self.defaultTransports
    public var logger = Logger(label: "p2p.host")

    public init(key: PrivateKey) {
        self.key = key
    }

    public func group(_ group: any EventLoopGroup) -> Self { with { $0.group = group } }
    public func configuration(_ configuration: TransportConfiguration) -> Self { with { $0.configuration = configuration } }
    public func limits(_ limits: HostLimits) -> Self { with { $0.limits = limits } }
    /// In order of preference.
    public func security(_ security: [any SecurityProtocol]) -> Self { with { $0.security = security } }
    /// In the order they are tried; replaces the defaults.
    public func transports(_ transports: TransportChoice...) -> Self { with { $0.transports = transports } }
    public func transports(_ transports: [TransportChoice]) -> Self { with { $0.transports = transports } }
    public func logger(_ logger: Logger) -> Self { with { $0.logger = logger } }

    /// The host; throws, with what is wrong, when the configuration breaks a constraint.
    public func build() throws(TransportConfigurationError) -> Libp2pHost {
        let group = group ?? Libp2pHost.defaultGroup
        return try Libp2pHost(
            key: key, configuration: configuration, group: group, transports: transports.map { $0.make(group) },
            security: security, limits: limits, logger: logger)
    }

    private func with(_ change: (inout Self) -> Void) -> Self {
        var copy = self
        change(&copy)
        return copy
    }
}
