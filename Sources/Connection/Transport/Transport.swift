import Identity
import Multiformats
import NIOCore
import LibP2PSecurity

/// A way to reach peers (TCP, WebSocket, in-memory; a relayed stream later):
/// it dials and listens on the multiaddrs it understands and hands every raw
/// connection to the upgrader, which secures and multiplexes it.
///
/// A host holds several and picks the first that can handle an address, as
/// rust-libp2p's `OrTransport` does.
public protocol Transport: Sendable {
    /// A short name for logs and `id` output (`tcp`, `ws`, `memory`).
    var name: String { get }
    /// Whether `dial` takes this address (a trailing `/p2p/<id>` allowed).
    func canDial(_ address: Multiaddr) -> Bool
    /// Whether `listen` takes this address.
    func canListen(_ address: Multiaddr) -> Bool
    /// Connects and upgrades. A trailing `/p2p/<id>` must match the remote's
    /// proven identity. `role` defaults to initiator (the dialler).
    func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection
    /// Listens; every accepted connection is upgraded (as responder) and handed
    /// to `upgrader.onInboundConnection`.
    func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener
}

/// A transport whose listening side can open its NAT's mapping toward a
/// dialler without connecting: DCUtR over QUIC, where the side that does not
/// dial sends a few datagrams of random bytes to the dialler's address (from
/// the socket its listener uses) so that the dialler's packets get in.
public protocol HolePunchPacketSending: Transport {
    /// One datagram of random bytes to `address` (one this transport dials),
    /// from the socket that dials to it and listens.
    func sendHolePunchPacket(to address: Multiaddr) async throws
}

extension Transport {
    public func dial(_ address: Multiaddr, upgrader: Upgrader) async throws -> Connection {
        try await dial(address, upgrader: upgrader, role: .initiator)
    }
}

/// A listening socket (or in-memory listener) with its bound address.
public struct Listener: Sendable {
    /// The address actually bound (port 0 resolved), e.g. `/ip4/127.0.0.1/tcp/4001/ws`.
    public let address: Multiaddr
    private let closer: @Sendable () async -> Void

    public init(address: Multiaddr, close: @escaping @Sendable () async -> Void) {
        self.address = address
        self.closer = close
    }

    public func close() async {
        await closer()
    }
}
