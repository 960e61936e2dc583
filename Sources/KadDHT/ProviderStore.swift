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
    /// Every slot of the key is taken.
    case keyFull

    public var description: String {
        switch self {
        case .badKey(let length, let limit): return "provider key of \(length) bytes (1 to \(limit) allowed)"
        case .tooManyAddresses(let count, let limit): return "provider record with \(count) addresses, over \(limit)"
        case .addressTooLong(let size, let limit): return "provider address of \(size) bytes, over \(limit)"
        case .addressTooDeep(let count, let limit): return "provider address of \(count) protocols, over \(limit)"
        case .storeFull: return "provider store full"
        case .keyFull: return "every provider slot of this key is taken"
        }
    }
}

/// Who provides which key: provider records that expire after 48 h (so
/// providers republish every 22 h), bounded by count and by the bytes they
/// hold, per key and in total; what one record may carry is capped.
///
/// Memory is charged when a record is accepted, in bytes, for what it holds
/// (`charge(key:peer:)`), as go-libp2p's resource manager and rust-libp2p's
/// kad store limits do.
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
        /// The bytes it is charged.
        public var charge: Int
    }

    public let limits: Limits
    private var providers: [[UInt8]: [Provider]] = [:]
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

    /// Adds or refreshes a provider of `key`. Throws, keeping what is
    /// stored, when the record carries too much or a bound refuses it.
    public mutating func add(_ peer: DHTPeer, for key: [UInt8], now: Instant) throws(ProviderStoreError) {
        try check(peer, for: key)
        var list = providers[key] ?? []
        for gone in list.indices.reversed() where list[gone].expires <= now { release(list.remove(at: gone)) }
        defer { providers[key] = list.isEmpty ? nil : list }
        let record = Provider(peer: peer, expires: now + Self.expiry, charge: Self.charge(key: key, peer: peer))
        let existing = list.firstIndex { $0.peer.id == peer.id }
        let added = existing == nil ? 1 : 0
        let grown = record.charge - (existing.map { list[$0].charge } ?? 0)
        guard total + added <= limits.maxTotal, totalBytes + grown <= limits.maxTotalBytes else { throw .storeFull }
        if let existing {
            release(list[existing])
            list[existing] = record
        } else {
            guard list.count < limits.maxPerKey else { throw .keyFull }
            list.append(record)
        }
        hold(record)
    }

    private mutating func hold(_ record: Provider) {
        total += 1
        totalBytes += record.charge
    }

    private mutating func release(_ record: Provider) {
        total -= 1
        totalBytes -= record.charge
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
