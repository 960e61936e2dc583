import Identity
import Multiformats

/// What a DHT server does with one request.
public enum DHTServerReply: Sendable, Equatable {
    case respond(DHTMessage)
    /// ADD_PROVIDER has no response.
    case none
    /// The request is invalid: the stream is reset (the spec's rule on errors).
    case reject(String)
}

/// The server side of `/ipfs/kad/1.0.0` as a pure function of the stores, the
/// routing table, the request and the time.
public enum DHTServer {
    /// What one peer of an answer carries: its first 8 dialable addresses of at
    /// most 256 bytes each, and an answer at most 64 providers (freshest
    /// first, a key's slots), so that an answer stays within about 180 KB
    /// however many long addresses peers announce (a FIND_NODE of 39 bytes drew 3.6 MB).
    public static let maxAddressesPerAnsweredPeer = 8
    public static let maxAnsweredAddressLength = 256
    public static let maxProvidersPerAnswer = DHTMessage.maxPeersPerList

    /// Answers `request` from `sender`, whom we see at `senderAddress`.
    /// `addresses` gives what we know of a peer's addresses. Answers carry
    /// only the addresses the sender can dial (`Multiaddr.isDialable(byPeerAt:)`:
    /// no loopback or private address to a peer elsewhere); peers left without
    /// any are left out (nobody could dial them). FIND_NODE for a known peer puts it first.
    public static func handle(
        _ request: DHTMessage, from sender: PeerID, at senderAddress: Multiaddr, records: inout RecordStore,
        providers: inout ProviderStore, table: RoutingTable, now: ContinuousClock.Instant,
        addresses: (PeerID) -> [Multiaddr]
    ) -> DHTServerReply {
        func dialable(_ peer: PeerID) -> DHTPeer? {
            DHTPeer(id: peer, addresses: addresses(peer)).dialable(byPeerAt: senderAddress)?.answerable
        }
        func closer(to key: [UInt8]) -> [DHTPeer] {
            table.closest(to: KadKey(hashing: key), count: table.bucketSize, excluding: sender).compactMap(dialable)
        }
        switch request.type {
        case .ping:
            return .respond(DHTMessage(type: .ping))
        case .findNode:
            guard !request.key.isEmpty else { return .reject("FIND_NODE without a key") }
            var peers = closer(to: request.key)
            if let target = try? PeerID(bytes: request.key), !peers.contains(where: { $0.id == target }),
                let known = dialable(target)
            {
                peers.insert(known, at: 0)
            }
            return .respond(DHTMessage(type: .findNode, key: request.key, closerPeers: peers))
        case .getValue:
            guard !request.key.isEmpty else { return .reject("GET_VALUE without a key") }
            let record = records.get(request.key, now: now).map { DHTRecord(key: request.key, value: $0.value) }
            return .respond(DHTMessage(type: .getValue, key: request.key, record: record, closerPeers: closer(to: request.key)))
        case .putValue:
            guard let record = request.record else { return .reject("PUT_VALUE without a record") }
            guard record.key == request.key else { return .reject("PUT_VALUE record key differs from the message key") }
            do {
                try records.put(record, from: ProviderSource(address: senderAddress), now: now)
            } catch .notBetter {
                // The stored record stays; the put itself was valid.
            } catch {
                return .reject("\(error)")
            }
            return .respond(request)
        case .addProvider:
            guard !request.key.isEmpty else { return .reject("ADD_PROVIDER without a key") }
            // Only the sender may announce itself (the spec: "all providerPeers that match the RPC
            // sender's PeerID are recorded"; others are ignored). The record is charged to the
            // sender and to the network of the connection it came on.
            let source = ProviderSource(address: senderAddress)
            for provider in request.providerPeers where provider.id == sender {
                // Without addresses in the message, those we know (e.g. of the connection) serve, as many as a record may carry.
                let announced =
                    provider.addresses.isEmpty ? DHTPeer(id: sender, addresses: providers.limits.carried(addresses(sender))) : provider
                do {
                    try providers.add(announced, for: request.key, from: source, now: now)
                } catch {
                    return .reject("ADD_PROVIDER refused: \(error)")
                }
            }
            return .none
        case .getProviders:
            guard !request.key.isEmpty else { return .reject("GET_PROVIDERS without a key") }
            return .respond(
                DHTMessage(
                    type: .getProviders, key: request.key, closerPeers: closer(to: request.key),
                    providerPeers: providers.providers(of: request.key, now: now).lazy.compactMap {
                        $0.dialable(byPeerAt: senderAddress)?.answerable
                    }.prefix(maxProvidersPerAnswer).map { $0 }))
        }
    }
}

extension DHTPeer {
    /// The peer with what an answer carries of its addresses (see `DHTServer.maxAddressesPerAnsweredPeer`); nil when none is left.
    var answerable: DHTPeer? {
        let kept = addresses.lazy.filter { $0.bytes.count <= DHTServer.maxAnsweredAddressLength }
            .prefix(DHTServer.maxAddressesPerAnsweredPeer)
        return kept.isEmpty ? nil : DHTPeer(id: id, addresses: Array(kept))
    }

    /// The peer with only the addresses a peer seen at `recipient` can dial;
    /// nil when none is left.
    public func dialable(byPeerAt recipient: Multiaddr) -> DHTPeer? {
        let usable = addresses.filter { $0.isDialable(byPeerAt: recipient) }
        return usable.isEmpty ? nil : DHTPeer(id: id, addresses: usable)
    }
}

extension DHTMessage {
    /// An answer from a peer we see at `responder`, with only the addresses
    /// we can dial (the rule of our own answers: a peer elsewhere gives no
    /// loopback or private address we could use); peers left without any are dropped.
    public func dialable(fromPeerAt responder: Multiaddr) -> DHTMessage {
        var message = self
        message.closerPeers = closerPeers.compactMap { $0.dialable(byPeerAt: responder) }
        message.providerPeers = providerPeers.compactMap { $0.dialable(byPeerAt: responder) }
        return message
    }
}
