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
    /// Answers `request` from `sender`. `addresses` gives what we know of a
    /// peer's addresses: peers without any are left out of answers (nobody
    /// could dial them), except that FIND_NODE for a known peer puts it first.
    public static func handle(
        _ request: DHTMessage, from sender: PeerID, records: inout RecordStore, providers: inout ProviderStore,
        table: RoutingTable, now: ContinuousClock.Instant, addresses: (PeerID) -> [Multiaddr]
    ) -> DHTServerReply {
        func closer(to key: [UInt8]) -> [DHTPeer] {
            table.closest(to: KadKey(hashing: key), count: table.bucketSize, excluding: sender).compactMap { peer in
                let known = addresses(peer)
                return known.isEmpty ? nil : DHTPeer(id: peer, addresses: known)
            }
        }
        switch request.type {
        case .ping:
            return .respond(DHTMessage(type: .ping))
        case .findNode:
            guard !request.key.isEmpty else { return .reject("FIND_NODE without a key") }
            var peers = closer(to: request.key)
            if let target = try? PeerID(bytes: request.key), !peers.contains(where: { $0.id == target }) {
                let known = addresses(target)
                if !known.isEmpty { peers.insert(DHTPeer(id: target, addresses: known), at: 0) }
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
                try records.put(record, now: now)
            } catch .notBetter {
                // The stored record stays; the put itself was valid.
            } catch {
                return .reject("\(error)")
            }
            return .respond(request)
        case .addProvider:
            guard !request.key.isEmpty else { return .reject("ADD_PROVIDER without a key") }
            // Only the sender may announce itself (the spec ignores other providers).
            for provider in request.providerPeers where provider.id == sender {
                // Without addresses in the message, those we know (e.g. of the connection) serve.
                let announced = provider.addresses.isEmpty ? DHTPeer(id: sender, addresses: addresses(sender)) : provider
                providers.add(announced, for: request.key, now: now)
            }
            return .none
        case .getProviders:
            guard !request.key.isEmpty else { return .reject("GET_PROVIDERS without a key") }
            return .respond(
                DHTMessage(
                    type: .getProviders, key: request.key, closerPeers: closer(to: request.key),
                    providerPeers: providers.providers(of: request.key, now: now)))
        }
    }
}
