#if canImport(Glibc)
import Glibc
#endif
import Identity
import Logging
import NIOConcurrencyHelpers
import Multiformats
import NIOCore
import NIOPosix
import LibP2PSecurity

/// TCP on SwiftNIO: `/ip4|ip6/<addr>/tcp/<port>` (and `/dns*` for dialing).
public struct TCPTransport: Transport {
    public let group: EventLoopGroup
    public var name: String { "tcp" }
    /// With port reuse, the ports we listen on (dials leave from one of them).
    private let listenPorts: ListenPorts?

    /// `reusePort`: listeners set SO_REUSEPORT and dials leave from a
    /// listener's port (of the same IP family), as go-libp2p does, so that a
    /// NAT maps our outgoing connections to the port we listen on: what peers
    /// observe is then an address hole punching can use.
    public init(group: EventLoopGroup, reusePort: Bool = false) {
        self.group = group
        self.listenPorts = reusePort ? ListenPorts() : nil
    }

    public func canDial(_ address: Multiaddr) -> Bool {
        (try? address.tcpTarget()) != nil
    }

    public func canListen(_ address: Multiaddr) -> Bool {
        (try? address.tcpSocketAddress()) != nil
    }

    /// Listens on an `/ip4|ip6/<addr>/tcp/<port>` address (port 0 picks one).
    public func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener {
        let socketAddress = try address.tcpSocketAddress()
        let configuration = upgrader.configuration
        var bootstrap = SocketDial.serverBootstrap(group: group, configuration: configuration)
        if listenPorts != nil { bootstrap = bootstrap.serverChannelOption(SocketDial.reusePort, value: 1) }
        bootstrap = bootstrap.childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    _ = upgrader.upgrade(channel: channel, direction: .inbound, transport: "tcp")
                }
            }
        let channel = try await SocketDial.bind(bootstrap, to: socketAddress, address: address)
        guard let bound = channel.localAddress, let boundAddress = try? Multiaddr(socketAddress: bound) else {
            try? await channel.close()
            throw TransportError.unsupportedAddress("\(address)")
        }
        upgrader.logger.debug("listening", metadata: ["address": "\(boundAddress)"])
        listenPorts?.add(bound)
        let ports = listenPorts
        return Listener(address: boundAddress) {
            ports?.remove(bound)
            try? await channel.close()
        }
    }

    /// Dials a TCP address and upgrades the connection. If the address ends in
    /// `/p2p/<id>`, a remote with another peer id is rejected.
    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection {
        let target = try address.tcpTarget()
        let expected = address.peerID
        let configuration = upgrader.configuration
        // Pick the loop first so the promise exists before connecting.
        let eventLoop = group.next()
        let local = listenPorts.flatMap { ports in
            if case .socket(let remote) = target { ports.source(toward: remote) } else { nil }
        }
        let established = eventLoop.makePromise(of: Connection.self)
        do {
            return try await SocketDial.connect(
                target, address: address, on: eventLoop, configuration: configuration, localAddress: local,
                established: established
            ) { channel in
                upgrader.upgrade(
                    channel: channel, direction: .outbound, role: role, expectedRemotePeer: expected, transport: "tcp"
                ).cascade(to: established)
            }
        } catch let error as TransportError where local != nil && Self.worthAFreshPort(error, role: role) {
            upgrader.logger.debug(
                "dial from the listening port failed; dialling again from a fresh port",
                metadata: ["address": "\(address)", "error": "\(error)"])
            return try await TCPTransport(group: group).dial(address, upgrader: upgrader, role: role)
        }
    }

    /// Whether a dial that left from our listening port failed in a way a dial
    /// from a fresh port avoids:
    /// - the bind or connect clashed with a connection we already have to that
    ///   remote from our port (same four-tuple);
    /// - the upgrade failed as it does when both ends act as the dialler: if
    ///   the remote dialled us from its listening port at the same moment, TCP
    ///   simultaneous open joined both dials into one connection and both
    ///   handshakes fail (the security handshake or its negotiation broke, or
    ///   the remote hung up). Hole punching wants simultaneous open, but gives
    ///   each end its role, so its handshake succeeds. A cancelled dial is not retried.
    ///
    /// A hole punch's dial (any role but `.initiator`) is retried only after a
    /// clash: the remote's dial reached our listener first (no NAT between
    /// us), so the four-tuple is taken by a connection in which both may be
    /// listeners; ours from a fresh port reaches the remote's listener, which
    /// answers. After a failed upgrade a fresh port could not meet the remote's dial.
    private static func worthAFreshPort(_ error: TransportError, role: UpgradeRole) -> Bool {
        switch error {
        case .dialFailed(_, let underlying): isAddressClash(underlying)
        case .securityFailed, .negotiationFailed, .connectionClosed, .io: role == .initiator && !Task.isCancelled
        default: false
        }
    }

    /// The bind or connect clashed with a connection that has the same four-tuple.
    private static func isAddressClash(_ error: any Error) -> Bool {
        guard let error = error as? IOError else { return false }
        return error.errnoCode == EADDRINUSE || error.errnoCode == EADDRNOTAVAIL
    }
}

/// The socket addresses a port-reusing TCP transport listens on.
private final class ListenPorts: Sendable {
    private let bound = NIOLockedValueBox<[SocketAddress]>([])

    func add(_ address: SocketAddress) { bound.withLockedValue { $0.append(address) } }

    func remove(_ address: SocketAddress) { bound.withLockedValue { $0.removeAll { $0 == address } } }

    /// Where a dial to `remote` leaves from: a listener's address of its family
    /// (loopback listeners only toward loopback).
    func source(toward remote: SocketAddress) -> SocketAddress? {
        bound.withLockedValue { list in
            list.first { local in
                switch (local, remote) {
                case (.v4(let l), .v4(let r)):
                    let loopback = { (a: sockaddr_in) in UInt32(bigEndian: a.sin_addr.s_addr) >> 24 == 127 }
                    return !loopback(l.address) || loopback(r.address)
                case (.v6, .v6): return true
                default: return false
                }
            }
        }
    }
}
