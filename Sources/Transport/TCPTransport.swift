import Identity
import Logging
import Multiformats
import NIOCore
import NIOConcurrencyHelpers
import NIOPosix
import LibP2PSecurity

/// TCP on SwiftNIO: `/ip4|ip6/<addr>/tcp/<port>` (and `/dns*` for dialing).
public struct TCPTransport: Transport {
    public let group: EventLoopGroup
    public var name: String { "tcp" }

    public init(group: EventLoopGroup) {
        self.group = group
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
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .childChannelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    _ = upgrader.upgrade(channel: channel, direction: .inbound, transport: "tcp")
                }
            }
        let channel = try await bootstrap.bind(to: socketAddress).get()
        guard let bound = channel.localAddress, let boundAddress = try? Multiaddr(socketAddress: bound) else {
            try? await channel.close()
            throw TransportError.unsupportedAddress("\(address)")
        }
        upgrader.logger.debug("listening", metadata: ["address": "\(boundAddress)"])
        return Listener(address: boundAddress) { try? await channel.close() }
    }

    /// Dials a TCP address and upgrades the connection. If the address ends in
    /// `/p2p/<id>`, a remote with another peer id is rejected.
    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: SecurityRole) async throws -> Connection {
        let target = try address.tcpTarget()
        let expected = address.peerID
        let configuration = upgrader.configuration
        // Pick the loop first so the promise exists before connecting.
        let eventLoop = group.next()
        let established = eventLoop.makePromise(of: Connection.self)
        // Known once the socket exists, so a cancelled dial can close it (happy eyeballs' losers).
        let dialling = NIOLockedValueBox<Channel?>(nil)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.dialTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: TransportConfiguration.receiveAllocator)
            .channelOption(.tcpOption(.tcp_notsent_lowat), value: configuration.notSentLowWatermark ?? 0)
            .channelInitializer { channel in
                dialling.withLockedValue { $0 = channel }
                return channel.eventLoop.makeCompletedFuture {
                    upgrader.upgrade(
                        channel: channel, direction: .outbound, role: role, expectedRemotePeer: expected,
                        transport: "tcp"
                    ).cascade(to: established)
                }
            }
        return try await withTaskCancellationHandler {
            do {
                switch target {
                case .socket(let socketAddress):
                    _ = try await bootstrap.connect(to: socketAddress).get()
                case .host(let host, let port):
                    _ = try await bootstrap.connect(host: host, port: port).get()
                }
            } catch {
                let failure = Self.dialError(address, error)
                // The upgrade may never have started: settle the promise ourselves.
                established.fail(failure)
                throw failure
            }
            return try await established.futureResult.get()
        } onCancel: {
            dialling.withLockedValue { $0 }?.close(promise: nil)
        }
    }

    static func dialError(_ address: Multiaddr, _ error: any Error) -> TransportError {
        if case ChannelError.connectTimeout = error { return .dialTimeout(address: "\(address)") }
        return .dialFailed(address: "\(address)", underlying: error)
    }
}
