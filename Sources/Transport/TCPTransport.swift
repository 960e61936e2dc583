import Identity
import Logging
import Multiformats
import NIOCore
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
        let bootstrap = SocketDial.serverBootstrap(group: group, configuration: configuration)
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
        return try await SocketDial.connect(
            target, address: address, on: eventLoop, configuration: configuration, established: established
        ) { channel in
            upgrader.upgrade(
                channel: channel, direction: .outbound, role: role, expectedRemotePeer: expected, transport: "tcp"
            ).cascade(to: established)
        }
    }
}
