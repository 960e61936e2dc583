import Identity
import Multiformats

/// Why a record was refused.
public enum RecordError: Error, CustomStringConvertible, Sendable, Equatable {
    case noNamespace
    case unknownNamespace(String)
    case invalid(namespace: String, reason: String)
    case tooLarge(Int, limit: Int)
    case storeFull
    /// The network the record came from holds its share of the store.
    case sourceFull
    case notBetter

    public var description: String {
        switch self {
        case .noNamespace: return "record key has no /namespace/ prefix"
        case .unknownNamespace(let ns): return "no validator for record namespace /\(ns)/"
        case .invalid(let ns, let reason): return "invalid /\(ns)/ record: \(reason)"
        case .tooLarge(let size, let limit): return "record value of \(size) bytes exceeds \(limit)"
        case .storeFull: return "record store full"
        case .sourceFull: return "the sender's network holds its share of the record store"
        case .notBetter: return "the stored record is preferred over the new one"
        }
    }
}

/// Checks the values of one key namespace and picks the best of several.
public protocol RecordValidator: Sendable {
    /// Throws when `value` may not be stored under `key` (the whole key, with its namespace).
    func validate(key: [UInt8], value: [UInt8]) throws(RecordError)
    /// The index of the best of `values` (all valid, at least one).
    func select(key: [UInt8], values: [[UInt8]]) -> Int
}

/// `/pk/<peer id bytes>`: the value is the marshaled public key of that peer.
public struct PublicKeyValidator: RecordValidator {
    public init() {}

    public func validate(key: [UInt8], value: [UInt8]) throws(RecordError) {
        let prefix = Array("/pk/".utf8)
        guard key.starts(with: prefix) else { throw .invalid(namespace: "pk", reason: "key is not /pk/...") }
        let publicKey: PublicKey
        do {
            publicKey = try PublicKey(marshaled: value)
        } catch {
            throw .invalid(namespace: "pk", reason: "value is not a public key: \(error)")
        }
        guard PeerID(publicKey: publicKey).bytes == Array(key.dropFirst(prefix.count)) else {
            throw .invalid(namespace: "pk", reason: "public key does not match the peer id of the key")
        }
    }

    /// Every valid value of a key is the same key.
    public func select(key: [UInt8], values: [[UInt8]]) -> Int { 0 }
}

/// `/p2pchat/<name>`: our own namespace, for small announcements. A value is
/// UTF-8 text of at most `maxValueSize` bytes; of several, the greatest by
/// bytewise order wins, so every node picks the same one whatever order the
/// values arrived in (values are not signed: anyone may write a name).
public struct ChatValueValidator: RecordValidator {
    public static let maxValueSize = 1024
    public init() {}

    public func validate(key: [UInt8], value: [UInt8]) throws(RecordError) {
        guard key.count > "/p2pchat/".utf8.count else { throw .invalid(namespace: "p2pchat", reason: "empty name") }
        guard value.count <= Self.maxValueSize else { throw .tooLarge(value.count, limit: Self.maxValueSize) }
        guard String(validating: value, as: UTF8.self) != nil else {
            throw .invalid(namespace: "p2pchat", reason: "value is not UTF-8")
        }
    }

    public func select(key: [UInt8], values: [[UInt8]]) -> Int {
        values.indices.max { values[$0].lexicographicallyPrecedes(values[$1]) } ?? 0
    }
}

/// Validators by namespace (the first path segment of a key: `/pk/...` is `pk`).
public struct NamespacedValidator: Sendable {
    public var validators: [String: any RecordValidator]

    public static let standard = NamespacedValidator(validators: [
        "pk": PublicKeyValidator(), "p2pchat": ChatValueValidator(),
    ])

    public init(validators: [String: any RecordValidator]) {
        self.validators = validators
    }

    static func namespace(of key: [UInt8]) -> String? {
        guard key.first == UInt8(ascii: "/"), let end = key.dropFirst().firstIndex(of: UInt8(ascii: "/")) else {
            return nil
        }
        return String(decoding: key[1..<end], as: UTF8.self)
    }

    func validator(for key: [UInt8]) throws(RecordError) -> any RecordValidator {
        guard let namespace = Self.namespace(of: key) else { throw .noNamespace }
        guard let validator = validators[namespace] else { throw .unknownNamespace(namespace) }
        return validator
    }

    public func validate(_ record: DHTRecord) throws(RecordError) {
        try validator(for: record.key).validate(key: record.key, value: record.value)
    }

    /// The index of the best of `values` for `key`.
    public func select(key: [UInt8], values: [[UInt8]]) throws(RecordError) -> Int {
        try validator(for: key).select(key: key, values: values)
    }
}

/// Value records we hold for others (and our own), validated, bounded and
/// expiring. A record from a peer is charged to the network it came from
/// (`ProviderSource`), which holds at most a sixteenth of the store in count
/// and in bytes, so that one peer cannot fill it (issue 25).
public struct RecordStore: Sendable {
    /// Time as the store takes it (an input: the store reads no clock).
    public typealias Instant = ContinuousClock.Instant

    /// A record as held: its value and when it arrived.
    public struct Stored: Sendable, Equatable {
        public var value: [UInt8]
        public var received: Instant
    }

    /// Records older than this are dropped (go-libp2p's MaxRecordAge).
    public static let maxAge: Duration = .seconds(48 * 3600)
    public static let maxValueSize = 64 * 1024
    public static let maxKeyLength = 256

    public let validator: NamespacedValidator
    public let maxRecords: Int
    public let maxTotalBytes: Int
    private(set) var records: [[UInt8]: Stored] = [:]
    public private(set) var totalBytes = 0
    /// Who each record from a peer is charged to, and what each source holds.
    private var sourceOf: [[UInt8]: ProviderSource] = [:]
    private var heldBySource: [ProviderSource: Held] = [:]
    struct Held: Sendable { var count = 0, bytes = 0 }

    /// What one source may hold: a sixteenth of the store.
    public var maxRecordsPerSource: Int { max(1, maxRecords / 16) }
    public var maxBytesPerSource: Int { max(1, maxTotalBytes / 16) }

    /// Records (and their bytes) held for `source`.
    public func held(bySource source: ProviderSource) -> (count: Int, bytes: Int) {
        let held = heldBySource[source] ?? Held()
        return (held.count, held.bytes)
    }

    public init(validator: NamespacedValidator = .standard, maxRecords: Int = 16_384, maxTotalBytes: Int = 32 << 20) {
        self.validator = validator
        self.maxRecords = maxRecords
        self.maxTotalBytes = maxTotalBytes
    }

    public var count: Int { records.count }

    /// Validates and stores a record unless the stored one is better; a
    /// record from a peer is charged to `source`, the network it came from.
    public mutating func put(_ record: DHTRecord, from source: ProviderSource? = nil, now: Instant) throws(RecordError) {
        guard record.value.count <= Self.maxValueSize else { throw .tooLarge(record.value.count, limit: Self.maxValueSize) }
        guard record.key.count <= Self.maxKeyLength else { throw .tooLarge(record.key.count, limit: Self.maxKeyLength) }
        try validator.validate(record)
        let size = record.key.count + record.value.count
        if let source {
            var held = heldBySource[source] ?? Held()
            if sourceOf[record.key] == source, let old = records[record.key] {
                held.count -= 1
                held.bytes -= record.key.count + old.value.count
            }
            guard held.count + 1 <= maxRecordsPerSource, held.bytes + size <= maxBytesPerSource else { throw .sourceFull }
        }
        if let old = get(record.key, now: now) {
            if old.value != record.value,
                try validator.select(key: record.key, values: [old.value, record.value]) == 0
            {
                throw .notBetter
            }
        } else {
            guard records.count < maxRecords, totalBytes + size <= maxTotalBytes else { throw .storeFull }
        }
        if records[record.key] != nil { forget(record.key) }
        records[record.key] = Stored(value: record.value, received: now)
        totalBytes += size
        sourceOf[record.key] = source
        if let source {
            heldBySource[source, default: Held()].count += 1
            heldBySource[source, default: Held()].bytes += size
        }
    }

    /// Removes `key`'s record and its charge.
    private mutating func forget(_ key: [UInt8]) {
        guard let stored = records.removeValue(forKey: key) else { return }
        let size = key.count + stored.value.count
        totalBytes -= size
        guard let source = sourceOf.removeValue(forKey: key), var held = heldBySource[source] else { return }
        held.count -= 1
        held.bytes -= size
        heldBySource[source] = held.count > 0 ? held : nil
    }

    /// The live record under `key`.
    public func get(_ key: [UInt8], now: Instant) -> Stored? {
        guard let stored = records[key], now - stored.received < Self.maxAge else { return nil }
        return stored
    }

    /// Drops expired records.
    public mutating func expire(now: Instant) {
        for (key, stored) in records where now - stored.received >= Self.maxAge { forget(key) }
    }
}
