import Identity
import Multiformats
import NIOCore
import NIOPosix
import QUIC
import Transport

/// libp2p over QUIC v1 (`/ip4|ip6/.../udp/N/quic-v1`, specs quic/README.md):
/// TLS 1.3 inside QUIC with ALPN `libp2p` and the libp2p certificate on both
/// sides, one libp2p stream per bidirectional QUIC stream, multistream-select
/// on each. No security or muxer negotiation: the upgrader's protocol lists
/// are not used, its identity, limits and acceptor are.
///
/// One UDP socket per listen address; dials leave from a listener's socket of
/// the same family when there is one, else from a dial-only socket.
public struct QUICTransport: Transport {
    public var name: String { "quic-v1" }

    /// Retry packets our listeners sent (since they started).
    public func retriesSent() async -> Int { await sockets.retriesSent() }

    /// The receive window of a stream, and of a connection (quic-go's starting windows).
    static let streamWindow = 512 * 1024
    static let connectionWindow = 768 * 1024
    /// The largest datagram we take (and say we take).
    static let maxDatagramSize = 2048
    /// Our connection IDs' length: short headers carry no length, routing needs it.
    static let connectionIDLength = 8
    /// As go-libp2p and rust-libp2p: 256 concurrent streams a peer may open, 30 s idle, a PING every 15 s.
    static var transportParameters: TransportParameters {
        var parameters = TransportParameters.defaultLimits
        parameters.maxIdleTimeout = 30_000
        parameters.maxUDPPayloadSize = UInt64(maxDatagramSize)
        parameters.initialMaxData = UInt64(connectionWindow)
        parameters.initialMaxStreamDataBidiLocal = UInt64(streamWindow)
        parameters.initialMaxStreamDataBidiRemote = UInt64(streamWindow)
        parameters.initialMaxStreamDataUni = 0
        parameters.initialMaxStreamsBidi = 256
        parameters.initialMaxStreamsUni = 0
        return parameters
    }
    static let keepAliveInterval: Duration = .seconds(15)

    private let group: EventLoopGroup
    private let sockets: QUICSockets

    /// `retry`: when listeners make clients prove their address with a Retry first.
    public init(group: EventLoopGroup, retry: QUICRetryPolicy = .underLoad) {
        self.group = group
        self.sockets = QUICSockets(group: group, retryPolicy: retry)
    }

    public func canDial(_ address: Multiaddr) -> Bool { address.isQUICv1 }

    public func canListen(_ address: Multiaddr) -> Bool {
        guard address.isQUICv1, address.peerID == nil else { return false }
        switch address.components.first {
        case .ip4?, .ip6?: return true
        default: return false
        }
    }

    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection {
        let remote: SocketAddress
        switch try address.quicTarget() {
        case .socket(let socket):
            remote = socket
        case .host(let name, let port, _):
            do {
                remote = try await NIOThreadPool.singleton.runIfActive {
                    try SocketAddress.makeAddressResolvingHost(name, port: port)
                }
            } catch {
                throw TransportError.dialFailed(address: "\(address)", underlying: error)
            }
        }
        let endpoint = try await sockets.endpoint(toReach: remote)
        do {
            return try await endpoint.dial(to: remote, upgrader: upgrader, expectedPeer: address.peerID).get()
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError.dialFailed(address: "\(address)", underlying: error)
        }
    }

    public func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener {
        guard canListen(address), case .socket(let socket) = try address.quicTarget() else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        let endpoint = try await sockets.listen(on: socket, upgrader: upgrader)
        let sockets = self.sockets
        return Listener(address: endpoint.localMultiaddr) {
            await sockets.remove(endpoint)
            await endpoint.close()
        }
    }
}

extension QUICTransport: HolePunchPacketSending {
    /// As go-libp2p's QUIC hole punch: 64 random bytes, which no QUIC
    /// endpoint takes for a packet (too short for an Initial, no connection
    /// ID of theirs), sent from the socket our listener and dials share.
    public func sendHolePunchPacket(to address: Multiaddr) async throws {
        guard case .socket(let remote) = try address.quicTarget() else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        let endpoint = try await sockets.endpoint(toReach: remote)
        let payload = (0..<64).map { _ in UInt8.random(in: 0...255) }
        endpoint.eventLoop.execute {
            endpoint.send([payload], to: remote)
            endpoint.flush()
        }
    }
}

/// The transport's sockets: listeners (which dials share) and a dial-only socket per family.
actor QUICSockets {
    private let group: EventLoopGroup
    private let certificates = QUICCertificates()
    private var listeners: [QUICEndpoint] = []
    private var dialers: [Bool: QUICEndpoint] = [:]
    private let retryPolicy: QUICRetryPolicy

    init(group: EventLoopGroup, retryPolicy: QUICRetryPolicy) {
        self.group = group
        self.retryPolicy = retryPolicy
    }

    func listen(on address: SocketAddress, upgrader: Upgrader) async throws -> QUICEndpoint {
        let endpoint = try await QUICEndpoint.bind(
            group: group, to: address, inbound: upgrader, certificates: certificates, retryPolicy: retryPolicy)
        listeners.append(endpoint)
        return endpoint
    }

    func retriesSent() async -> Int {
        var total = 0
        for listener in listeners { total += (try? await listener.eventLoop.submit { listener.retriesSent }.get()) ?? 0 }
        return total
    }

    func remove(_ endpoint: QUICEndpoint) {
        listeners.removeAll { $0 === endpoint }
    }

    /// A listener's socket that can send to `remote` (same family; bound to the
    /// unspecified address, or loopback to loopback), else the dial-only one.
    func endpoint(toReach remote: SocketAddress) async throws -> QUICEndpoint {
        let ipv6 = Self.isIPv6(remote)
        if let listener = listeners.first(where: { Self.canSend(from: $0.localAddress, to: remote, ipv6: ipv6) }) {
            return listener
        }
        if let dialer = dialers[ipv6] { return dialer }
        let any = try SocketAddress(ipAddress: ipv6 ? "::" : "0.0.0.0", port: 0)
        let dialer = try await QUICEndpoint.bind(group: group, to: any, inbound: nil, certificates: certificates)
        if let raced = dialers[ipv6] {
            await dialer.close()
            return raced
        }
        dialers[ipv6] = dialer
        return dialer
    }

    static func isIPv6(_ address: SocketAddress) -> Bool {
        if case .v6 = address { return true }
        return false
    }

    static func canSend(from local: SocketAddress?, to remote: SocketAddress, ipv6: Bool) -> Bool {
        guard let local, isIPv6(local) == ipv6, let ip = local.ipAddress else { return false }
        if ip == "0.0.0.0" || ip == "::" { return true }
        let localLoopback = ip.hasPrefix("127.") || ip == "::1"
        let remoteLoopback = remote.ipAddress.map { $0.hasPrefix("127.") || $0 == "::1" } ?? false
        return localLoopback == remoteLoopback
    }
}
