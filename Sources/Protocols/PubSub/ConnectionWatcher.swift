import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Transport

/// The connection watcher: one outbound pubsub stream per peer, opened when a
/// connection comes, moved when the connection it runs on goes (or a direct
/// connection replaces a relayed one), dropped with the peer's last connection.
extension PubSubService {
    /// Follows the host's connections until its events end.
    func watchConnections(_ events: AsyncStream<HostEvent>) async {
        for connection in host.connections { await self.attach(connection) }
        for await event in events {
            switch event {
            case .connected(let connection):
                // One stream open per new connection; ends with it (or when it is open).
                Task {
                    // A direct connection beside the relayed one our stream runs on (a hole
                    // punch): move the stream now, before the relayed one closes.
                    if !connection.isRelayed,
                        let current = await core.outboundConnectionID(connection.remotePeer),
                        host.connections.contains(where: { $0.id == current && $0.isRelayed })
                    {
                        await self.move(connection.remotePeer, to: connection)
                    } else {
                        await self.attach(connection)
                    }
                }
            case .disconnected(let connection):
                let peer = connection.remotePeer
                if let remaining = host.connection(to: peer) {
                    // Another connection to the peer remains (both dialled at once): move our
                    // stream there if it was on the one that closed.
                    if await core.removePeer(peer, ifOutboundOn: connection.id) {
                        // As for a new connection: one stream open, bounded by the connection.
                        Task { await self.attach(remaining) }
                    }
                } else {
                    await core.removePeer(peer)
                }
            default:
                break
            }
        }
        await core.stop()
    }

    /// Opens our outbound pubsub stream to the peer of `connection`, once per peer.
    func attach(_ connection: Connection) async {
        let peer = connection.remotePeer
        guard await core.claimOutbound(peer) else { return }
        do {
            let stream = try await connection.newStream(protocols: protocols)
            await core.addPeer(
                peer, protocolID: stream.protocolID, outbound: connection.direction == .outbound,
                ip: Self.ipAddress(of: connection.remoteAddress), stream: stream)
            logger.debug("pubsub peer", metadata: ["peer": "\(peer)", "protocol": "\(stream.protocolID)"])
        } catch {
            await core.releaseOutbound(peer)
            logger.debug("peer speaks no pubsub", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Moves our outbound stream to `peer` onto `connection`, keeping what the
    /// router knows of the peer (subscriptions, mesh, score): nothing is lost.
    func move(_ peer: PeerID, to connection: Connection) async {
        do {
            let stream = try await connection.newStream(protocols: protocols)
            guard await core.replaceOutbound(peer, stream: stream, ip: Self.ipAddress(of: connection.remoteAddress)) else {
                // The peer was dropped meanwhile: start afresh.
                stream.reset()
                await attach(connection)
                return
            }
            logger.debug("pubsub peer moved", metadata: ["peer": "\(peer)", "conn": "\(connection.id)"])
        } catch {
            logger.debug("pubsub move failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// The IP address of a connection's remote end, in text (for the IP colocation score).
    static func ipAddress(of address: Multiaddr) -> String? { address.ipAddressText }
}
