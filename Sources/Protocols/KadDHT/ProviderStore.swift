import Identity
import Multiformats

/// Why a provider record was refused.
public enum ProviderStoreError: Error, CustomStringConvertible, Sendable, Equatable {
    case badKey(length: Int, limit: Int)
    case tooManyAddresses(Int, limit: Int)
    case addressTooLong(Int, limit: Int)
    case addressTooDeep(Int, limit: Int)
    /// The whole store is at its count or its bytes.
    case storeFull
    /// This provider id holds its share of the store already.
    case providerShareFull
    /// The network the record came from (an IPv4 address, an IPv6 /64) holds its share already.
    case sourceShareFull
    /// Every slot of the key is taken by networks holding no more than the sender's.
    case keyFull

    public var description: String {
        switch self {
        case .badKey(let length, let limit): return "provider key of \(length) bytes (1 to \(limit) allowed)"
        case .tooManyAddresses(let count, let limit): return "provider record with \(count) addresses, over \(limit)"
        case .addressTooLong(let size, let limit): return "provider address of \(size) bytes, over \(limit)"
        case .addressTooDeep(let count, let limit): return "provider address of \(count) protocols, over \(limit)"
        case .storeFull: return "provider store full"
        case .providerShareFull: return "this provider holds its share of the provider store"
        case .sourceShareFull: return "the sender's network holds its share of the provider store"
        case .keyFull: return "every provider slot of this key is taken"
        }
    }
}

/// Where a provider record came from, for the shares of the store: the
/// IPv4 address of the connection that sent it, the /64 of an IPv6 one (what
/// one host or customer gets), or the whole address when it has no IP.
/// Records a node adds itself have no source.
public struct ProviderSource: Hashable, Sendable {
    let bytes: [UInt8]

    public init(address: Multiaddr) {
        let ip = if case .ip6zone? = address.components.first { address.components.dropFirst().first } else { address.components.first }
        switch ip {
        case .ip4(let bytes)?: self.bytes = [4] + bytes
        case .ip6(let bytes)? where bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF:
            self.bytes = [4] + bytes[12...]
        case .ip6(let bytes)?: self.bytes = [6] + bytes.prefix(8)
        default: self.bytes = [0] + address.bytes
        }
    }
}

/// Who provides which key: provider records that expire after 48 h (so
/// providers republish every 22 h), bounded by count and by the bytes they
/// hold, per key, per provider, per source network and in total.
///
/// Memory is charged when a record is accepted, in bytes, for what it holds
/// (`charge(key:peer:)`), as go-libp2p's resource manager and rust-libp2p's
/// kad store limits do; every share is a part of the whole, so no one peer or
/// network can take it all. A key's slots go to the networks fairly: one
/// network holds at most `maxPerKeyPerSource` of them (a newcomer from it
/// takes the slot of its least recently refreshed one: peers behind one NAT
/// that come and go replace their departed predecessors), and when the key
/// is full a provider from a network with fewer takes the slot of the least
/// recently refreshed provider of the network with the most.
public struct ProviderStore: Sendable {
    /// Time as the store takes it (an input: the store reads no clock).
    public typealias Instant = ContinuousClock.Instant

    public static let expiry: Duration = .seconds(48 * 3600)
    public static let republishInterval: Duration = .seconds(22 * 3600)
    /// Longest key accepted (go-libp2p's ADD_PROVIDER refuses keys over 80 bytes; a multihash of sha2-512 is 66).
    public static let maxKeyLength = 80
    /// What a record costs besides its key, id and addresses (the entry, its list slot, the ledgers).
    public static let recordOverhead = 256

    /// The bounds of the store.
    public struct Limits: Sendable, Equatable {
        public var maxPerKey = 64
        public var maxTotal = 100_000
        public var maxTotalBytes = 32 << 20
        /// Addresses one record may carry, and bytes per address (binary form); a record beyond is refused.
        public var maxAddressesPerProvider = 16
        public var maxAddressBytes = 256
        /// Protocols per address (the longest in use, a WebTransport address with two certificate hashes through a relay, has 14).
        public var maxComponentsPerAddress = 24
        /// One provider id's share, in records and bytes.
        public var maxPerProvider = 1_024
        public var maxBytesPerProvider = 1 << 20
        /// One source network's share (all the identities it sends), in records and bytes.
        public var maxPerSource = 6_250
        public var maxBytesPerSource = 2 << 20
        /// Providers of one key from one source network.
        public var maxPerKeyPerSource = 8

        public init() {}

        /// Whether a record may carry `address` (its bytes and protocols within the caps).
        public func allows(_ address: Multiaddr) -> Bool {
            address.bytes.count <= maxAddressBytes && address.components.count <= maxComponentsPerAddress
        }

        /// The first of `addresses` a record may carry, as many as it may.
        public func carried(_ addresses: [Multiaddr]) -> [Multiaddr] {
            Array(addresses.filter(allows).prefix(maxAddressesPerProvider))
        }
    }

    /// A peer providing a key, until its announcement expires.
    public struct Provider: Sendable, Equatable {
        public var peer: DHTPeer
        public var expires: Instant
        /// Nil when we added it ourselves.
        public var source: ProviderSource?
        /// The bytes it is charged.
        public var charge: Int
    }

    /// Records and bytes held by one provider or source.
    struct Usage: Sendable {
        var count = 0
        var bytes = 0
    }

    public let limits: Limits
    private var providers: [[UInt8]: [Provider]] = [:]
    private var byProvider: [PeerID: Usage] = [:]
    private var bySource: [ProviderSource: Usage] = [:]
    public private(set) var total = 0
    public private(set) var totalBytes = 0

    public init(limits: Limits = .init()) {
        self.limits = limits
    }

    public init(maxPerKey: Int, maxTotal: Int) {
        var limits = Limits()
        limits.maxPerKey = maxPerKey
        limits.maxTotal = maxTotal
        self.init(limits: limits)
    }

    public var maxPerKey: Int { limits.maxPerKey }
    public var maxTotal: Int { limits.maxTotal }
    public var keyCount: Int { providers.count }

    /// Records and bytes held for `peer` as a provider.
    public func held(byProvider peer: PeerID) -> (count: Int, bytes: Int) {
        let usage = byProvider[peer] ?? Usage()
        return (usage.count, usage.bytes)
    }

    /// Records and bytes held from `source`.
    public func held(bySource source: ProviderSource) -> (count: Int, bytes: Int) {
        let usage = bySource[source] ?? Usage()
        return (usage.count, usage.bytes)
    }

    /// The bytes a record of `peer` for `key` holds: its key, id and addresses
    /// as kept in memory (each address's components and their payloads), and
    /// the entry around them.
    public static func charge(key: [UInt8], peer: DHTPeer) -> Int {
        recordOverhead + key.count + peer.id.bytes.count
            + peer.addresses.reduce(heapHeader) { $0 + MemoryLayout<Multiaddr>.stride + heldBytes(of: $1) }
    }

    /// What one heap allocation costs besides its contents: Swift's header and the allocator's.
    static let heapHeader = 48

    /// An address as a `Multiaddr` holds it: an array of components, each
    /// payload that is an array or a long string in a heap allocation of its own.
    static func heldBytes(of address: Multiaddr) -> Int {
        var bytes = heapHeader + address.components.count * MemoryLayout<MultiaddrComponent>.stride
        for component in address.components {
            switch component {
            case .ip4(let payload), .ip6(let payload), .p2p(let payload), .certhash(let payload):
                bytes += heapHeader + payload.count
            case .ip6zone(let text), .dns(let text), .dns4(let text), .dns6(let text), .dnsaddr(let text), .sni(let text),
                .unix(let text):
                // Up to 15 UTF-8 bytes live in the string itself.
                if text.utf8.count > 15 { bytes += heapHeader + text.utf8.count }
            default: break
            }
        }
        return bytes
    }

    /// Checks what one record carries: its key, the number and size of its addresses.
    public func check(_ peer: DHTPeer, for key: [UInt8]) throws(ProviderStoreError) {
        guard !key.isEmpty, key.count <= Self.maxKeyLength else { throw .badKey(length: key.count, limit: Self.maxKeyLength) }
        guard peer.addresses.count <= limits.maxAddressesPerProvider else {
            throw .tooManyAddresses(peer.addresses.count, limit: limits.maxAddressesPerProvider)
        }
        if let long = peer.addresses.first(where: { $0.bytes.count > limits.maxAddressBytes }) {
            throw .addressTooLong(long.bytes.count, limit: limits.maxAddressBytes)
        }
        if let deep = peer.addresses.first(where: { $0.components.count > limits.maxComponentsPerAddress }) {
            throw .addressTooDeep(deep.components.count, limit: limits.maxComponentsPerAddress)
        }
    }

    /// Adds or refreshes a provider of `key`, sent from `source` (nil: added
    /// by this node, outside the shares). Throws, keeping what is stored, when
    /// the record carries too much or a bound refuses it.
    public mutating func add(
        _ peer: DHTPeer, for key: [UInt8], from source: ProviderSource? = nil, now: Instant
    ) throws(ProviderStoreError) {
        try check(peer, for: key)
        var list = providers[key] ?? []
        for gone in list.indices.reversed() where list[gone].expires <= now { release(list.remove(at: gone)) }
        defer { providers[key] = list.isEmpty ? nil : list }
        let record = Provider(peer: peer, expires: now + Self.expiry, source: source, charge: Self.charge(key: key, peer: peer))
        let old = list.first { $0.peer.id == peer.id }
        try admit(record, replacing: old)
        var evicted: Int?
        var counts: [ProviderSource?: Int] = [:]
        for provider in list where provider.peer.id != peer.id { counts[provider.source, default: 0] += 1 }
        let mine = source.map { counts[$0] ?? 0 } ?? 0
        // The sender's network against the others, on this key (a refresh from another network counts as
        // new there): at its share, the newcomer takes the slot of its network's stalest provider.
        if let source, old?.source != source, mine >= limits.maxPerKeyPerSource {
            evicted = stalest(of: source, in: list, except: peer.id)
        } else if old == nil, list.count >= limits.maxPerKey {
            evicted = try slotToFree(in: list, counts: counts, forSourceHolding: mine)
        }
        if let evicted { release(list.remove(at: evicted)) }
        if let existing = list.firstIndex(where: { $0.peer.id == peer.id }) {
            release(list[existing])
            list[existing] = record
        } else {
            list.append(record)
        }
        hold(record)
    }

    /// Whether the shares and the whole take `record` (in place of `old`, the same provider's record of the key).
    private func admit(_ record: Provider, replacing old: Provider?) throws(ProviderStoreError) {
        let added = old == nil ? 1 : 0
        let grown = record.charge - (old?.charge ?? 0)
        guard total + added <= limits.maxTotal, totalBytes + grown <= limits.maxTotalBytes else { throw .storeFull }
        guard let source = record.source else { return }
        let provider = byProvider[record.peer.id] ?? Usage()
        guard provider.count + added <= limits.maxPerProvider, provider.bytes + grown <= limits.maxBytesPerProvider else {
            throw .providerShareFull
        }
        // A refresh from another network moves the record's whole charge there.
        let moved = old?.source == source ? (added, grown) : (1, record.charge)
        let network = bySource[source] ?? Usage()
        guard network.count + moved.0 <= limits.maxPerSource, network.bytes + moved.1 <= limits.maxBytesPerSource else {
            throw .sourceShareFull
        }
    }

    /// The index of the provider whose slot a newcomer from a network holding
    /// `mine` slots of the key takes: the least recently refreshed of the
    /// network holding the most, if it holds at least two more (so slots end
    /// up shared evenly among networks); `keyFull` otherwise.
    private func slotToFree(in list: [Provider], counts: [ProviderSource?: Int], forSourceHolding mine: Int)
        throws(ProviderStoreError) -> Int
    {
        // Our own records (no source) are never pushed out.
        guard let (crowded, most) = counts.filter({ $0.key != nil }).max(by: { $0.value < $1.value }), most >= mine + 2 else {
            throw .keyFull
        }
        // Not nil: `crowded` holds `most` >= 2 slots.
        return stalest(of: crowded, in: list, except: nil) ?? 0
    }

    /// The index of the least recently refreshed provider from `source` in `list`, other than `peer`.
    private func stalest(of source: ProviderSource?, in list: [Provider], except peer: PeerID?) -> Int? {
        list.indices.filter { list[$0].source == source && list[$0].peer.id != peer }.min { list[$0].expires < list[$1].expires }
    }

    private mutating func hold(_ record: Provider) {
        total += 1
        totalBytes += record.charge
        guard let source = record.source else { return }
        byProvider[record.peer.id, default: Usage()].count += 1
        byProvider[record.peer.id, default: Usage()].bytes += record.charge
        bySource[source, default: Usage()].count += 1
        bySource[source, default: Usage()].bytes += record.charge
    }

    private mutating func release(_ record: Provider) {
        total -= 1
        totalBytes -= record.charge
        guard let source = record.source else { return }
        byProvider[record.peer.id]?.count -= 1
        byProvider[record.peer.id]?.bytes -= record.charge
        if byProvider[record.peer.id]?.count == 0 { byProvider[record.peer.id] = nil }
        bySource[source]?.count -= 1
        bySource[source]?.bytes -= record.charge
        if bySource[source]?.count == 0 { bySource[source] = nil }
    }

    /// The live providers of `key`, the most recently refreshed first (a
    /// record left by a peer that has gone stays for 48 h; fresh ones are the
    /// likeliest to answer, and an asker may dial only the first few).
    public func providers(of key: [UInt8], now: Instant) -> [DHTPeer] {
        (providers[key] ?? []).filter { $0.expires > now }.sorted { $0.expires > $1.expires }.map(\.peer)
    }

    public mutating func expire(now: Instant) {
        for (key, list) in providers {
            var live: [Provider] = []
            for provider in list {
                if provider.expires > now { live.append(provider) } else { release(provider) }
            }
            providers[key] = live.isEmpty ? nil : live
        }
    }
}
