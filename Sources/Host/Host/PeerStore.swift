import Identity
import Multiformats
import Synchronization

/// What we know about a remote peer: its addresses and what identify told us.
public struct PeerInfo: Sendable, Equatable {
    public var peer: PeerID
    public var addresses: [Multiaddr] = []
    public var protocols: [String] = []
    public var agentVersion: String?
    public var protocolVersion: String?
    public var publicKey: PublicKey?
    /// Our address as this peer saw it.
    public var observedAddress: Multiaddr?
    /// The peer's latest signed peer record (a marshalled envelope), verified,
    /// and its sequence number: we pass it on in peer exchange.
    public var signedPeerRecord: [UInt8]?
    public var peerRecordSeq: UInt64?

    public init(peer: PeerID) {
        self.peer = peer
    }
}

/// Thread-safe store of peer information, bounded in the number of peers and
/// of addresses and protocols per peer (a peer must not make us grow without bound).
public final class PeerStore: Sendable {
    public static let maxPeers = 10_000
    public static let maxAddressesPerPeer = 64
    public static let maxProtocolsPerPeer = 256

    private let peers = Mutex<[PeerID: PeerInfo]>([:])

    public init() {}

    public func info(_ peer: PeerID) -> PeerInfo? {
        peers.withLock { $0[peer] }
    }

    public var allPeers: [PeerID] {
        peers.withLock { Array($0.keys) }
    }

    /// Adds addresses (deduplicated, bounded) for a peer.
    public func addAddresses(_ addresses: [Multiaddr], for peer: PeerID) {
        update(peer) { info in
            for address in addresses where !info.addresses.contains(address) {
                guard info.addresses.count < Self.maxAddressesPerPeer else { break }
                info.addresses.append(address)
            }
        }
    }

    /// Applies a change to a peer's record, creating it if there is room.
    public func update(_ peer: PeerID, _ change: (inout PeerInfo) -> Void) {
        peers.withLock { peers in
            guard peers[peer] != nil || peers.count < Self.maxPeers else { return }
            var info = peers[peer] ?? PeerInfo(peer: peer)
            change(&info)
            if info.addresses.count > Self.maxAddressesPerPeer {
                info.addresses.removeLast(info.addresses.count - Self.maxAddressesPerPeer)
            }
            if info.protocols.count > Self.maxProtocolsPerPeer {
                info.protocols.removeLast(info.protocols.count - Self.maxProtocolsPerPeer)
            }
            peers[peer] = info
        }
    }

    /// Stores a verified peer record if it is newer than the one we have, and
    /// its addresses; whether it was newer.
    @discardableResult
    public func addSignedRecord(_ record: PeerRecord, envelope: [UInt8]) -> Bool {
        var newer = false
        update(record.peerID) { info in
            guard info.peerRecordSeq.map({ record.seq > $0 }) ?? true else { return }
            newer = true
            info.signedPeerRecord = envelope
            info.peerRecordSeq = record.seq
            for address in record.addresses where !info.addresses.contains(address) {
                guard info.addresses.count < Self.maxAddressesPerPeer else { break }
                info.addresses.append(address)
            }
        }
        return newer
    }

    public func remove(_ peer: PeerID) {
        _ = peers.withLock { $0.removeValue(forKey: peer) }
    }
}
