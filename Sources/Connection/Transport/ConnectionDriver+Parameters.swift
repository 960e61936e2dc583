import Identity
import Multiformats
import NIOCore

/// What a connection driver is made with.
extension ConnectionDriver {
    struct Parameters {
        let upgrader: Upgrader
        let direction: ConnectionDirection
        let role: UpgradeRole
        let expectedRemotePeer: PeerID?
        let transport: String
        let addresses: Addresses
    }

    /// Where the connection's addresses come from.
    enum Addresses {
        case fixed(local: Multiaddr?, remote: Multiaddr)
        /// The channel's socket addresses, known once it is connected, with `suffix` (`/ws`) appended.
        case channel(Channel, suffix: [MultiaddrComponent])

        var channel: Channel? {
            if case .channel(let channel, _) = self { return channel }
            return nil
        }

        func resolve() -> (local: Multiaddr?, remote: Multiaddr) {
            switch self {
            case .fixed(let local, let remote):
                return (local, remote)
            case .channel(let channel, let suffix):
                let remote =
                    channel.remoteAddress.flatMap { try? Multiaddr(socketAddress: $0) } ?? Multiaddr.unspecifiedTCP
                let local = channel.localAddress.flatMap { try? Multiaddr(socketAddress: $0) }
                return (local.map { Multiaddr($0.components + suffix) }, Multiaddr(remote.components + suffix))
            }
        }
    }
}
