import Identity

/// What may be fetched without asking (the chat's `--accept-files`): each
/// file within a size, a number of files and of bytes in all and per peer,
/// a few at once, and never so much that the download directory's file
/// system would be left with less than `minFreeBytes`.
public struct AutoAcceptLimits: Sendable, Equatable {
    /// Largest file fetched without asking.
    public var maxFileSize: UInt64
    /// Files and bytes fetched without asking, in all (for the life of the policy: a chat session).
    public var maxFiles = 100
    public var maxBytes: UInt64 = 1 << 30
    /// One peer's share of those.
    public var maxFilesPerPeer = 25
    public var maxBytesPerPeer: UInt64 = 256 << 20
    /// Downloads running at once; later ones wait their turn.
    public var maxConcurrent = 2
    /// Free space the download directory's file system keeps, besides the downloads accepted.
    public var minFreeBytes: UInt64 = 512 << 20

    public init(maxFileSize: UInt64) {
        self.maxFileSize = maxFileSize
    }
}

/// Why an offer was not fetched without asking.
public enum AutoAcceptRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    case sizeUnknown
    case tooLarge(size: UInt64, limit: UInt64)
    case tooManyFiles(limit: Int)
    case tooManyBytes(limit: UInt64)
    case peerFiles(limit: Int)
    case peerBytes(limit: UInt64)
    case diskSpace(free: UInt64, needed: UInt64)

    public var description: String {
        switch self {
        case .sizeUnknown: return "its size is not announced"
        case .tooLarge(let size, let limit): return "\(size) bytes is over the limit of \(limit)"
        case .tooManyFiles(let limit): return "\(limit) files were fetched without asking already"
        case .tooManyBytes(let limit): return "\(limit) bytes were fetched without asking already"
        case .peerFiles(let limit): return "this peer had \(limit) files fetched without asking already"
        case .peerBytes(let limit): return "this peer had \(limit) bytes fetched without asking already"
        case .diskSpace(let free, let needed): return "the download directory has \(free) bytes free, \(needed) needed"
        }
    }
}

/// The auto-accept policy (sans-IO: the free space is an input): offers are
/// charged when accepted, in files and bytes, in all and to the peer that
/// made them; `maxConcurrent` run at once and the others wait, in order.
public struct AutoAccept<Item: Sendable>: Sendable {
    public enum Decision: Sendable {
        /// Fetch it now.
        case start
        /// Accepted: it starts when a running download ends (`finished`).
        case queued
        case refused(AutoAcceptRefusal)
    }

    struct Usage: Sendable {
        var files = 0
        var bytes: UInt64 = 0
    }

    public let limits: AutoAcceptLimits
    private var accepted = Usage()
    private var byPeer: [PeerID: Usage] = [:]
    /// Bytes accepted and not yet finished (still to land on the disk).
    private var pendingBytes: UInt64 = 0
    public private(set) var running = 0
    private var waiting: [(item: Item, size: UInt64)] = []

    public init(limits: AutoAcceptLimits) {
        self.limits = limits
    }

    public var queued: Int { waiting.count }
    public var acceptedFiles: Int { accepted.files }
    public var acceptedBytes: UInt64 { accepted.bytes }

    /// Decides on an offer of `size` bytes (nil: unknown) from `peer`;
    /// `freeBytes` is what the download directory's file system has available (nil: unknown).
    public mutating func offer(_ item: Item, size: UInt64?, from peer: PeerID, freeBytes: UInt64?) -> Decision {
        guard let size else { return .refused(.sizeUnknown) }
        guard size <= limits.maxFileSize else { return .refused(.tooLarge(size: size, limit: limits.maxFileSize)) }
        guard accepted.files < limits.maxFiles else { return .refused(.tooManyFiles(limit: limits.maxFiles)) }
        guard accepted.bytes + size <= limits.maxBytes else { return .refused(.tooManyBytes(limit: limits.maxBytes)) }
        let share = byPeer[peer] ?? Usage()
        guard share.files < limits.maxFilesPerPeer else { return .refused(.peerFiles(limit: limits.maxFilesPerPeer)) }
        guard share.bytes + size <= limits.maxBytesPerPeer else { return .refused(.peerBytes(limit: limits.maxBytesPerPeer)) }
        if let freeBytes {
            let needed = pendingBytes + size + limits.minFreeBytes
            guard freeBytes >= needed else { return .refused(.diskSpace(free: freeBytes, needed: needed)) }
        }
        accepted.files += 1
        accepted.bytes += size
        byPeer[peer, default: Usage()].files += 1
        byPeer[peer, default: Usage()].bytes += size
        pendingBytes += size
        guard running < limits.maxConcurrent else {
            waiting.append((item, size))
            return .queued
        }
        running += 1
        return .start
    }

    /// A download this policy started (of `size` bytes) ended, however it
    /// ended: the next waiting one, which takes its turn, if any.
    public mutating func finished(size: UInt64) -> Item? {
        pendingBytes -= min(pendingBytes, size)
        guard !waiting.isEmpty else {
            running = max(0, running - 1)
            return nil
        }
        return waiting.removeFirst().item
    }
}

/// Offers seen, numbered in the order they came (for `/get N`), at most one
/// per file and peer, bounded in all and per peer: past `maxPerPeer` a peer's
/// oldest offer goes, past `maxOffers` the oldest of all; numbers never change.
public struct OfferBook<Offer: Sendable>: Sendable {
    public struct Entry: Sendable {
        public let number: Int
        public var offer: Offer
        public let from: PeerID
        public let fileID: String
    }

    struct FileKey: Hashable, Sendable {
        let peer: PeerID
        let fileID: String
    }

    public let maxOffers: Int
    public let maxPerPeer: Int
    private var entries: [Int: Entry] = [:]
    private var numbers: [FileKey: Int] = [:]
    /// Each peer's offers, oldest first.
    private var byPeer: [PeerID: [Int]] = [:]
    /// No entry below this number.
    private var oldest = 1
    private var next = 1

    public init(maxOffers: Int = 1024, maxPerPeer: Int = 128) {
        self.maxOffers = max(1, maxOffers)
        self.maxPerPeer = max(1, min(maxPerPeer, maxOffers))
    }

    public var count: Int { entries.count }

    public subscript(number: Int) -> Entry? { entries[number] }

    /// The number of `peer`'s offer of `fileID`, if kept.
    public func number(of fileID: String, from peer: PeerID) -> Int? { numbers[FileKey(peer: peer, fileID: fileID)] }

    /// Every kept offer, by number.
    public var all: [Entry] { entries.values.sorted { $0.number < $1.number } }

    /// Keeps a new offer; returns its number (the caller checked it is new with `number(of:from:)`).
    public mutating func add(_ offer: Offer, fileID: String, from peer: PeerID) -> Int {
        let number = next
        next += 1
        entries[number] = Entry(number: number, offer: offer, from: peer, fileID: fileID)
        numbers[FileKey(peer: peer, fileID: fileID)] = number
        byPeer[peer, default: []].append(number)
        if let own = byPeer[peer], own.count > maxPerPeer { remove(own[0]) }
        while entries.count > maxOffers {
            if entries[oldest] != nil { remove(oldest) }
            oldest += 1
        }
        return number
    }

    /// Replaces the offer kept under `number`.
    public mutating func update(_ number: Int, to offer: Offer) {
        entries[number]?.offer = offer
    }

    private mutating func remove(_ number: Int) {
        guard let entry = entries.removeValue(forKey: number) else { return }
        numbers[FileKey(peer: entry.from, fileID: entry.fileID)] = nil
        byPeer[entry.from]?.removeAll { $0 == number }
        if byPeer[entry.from]?.isEmpty == true { byPeer[entry.from] = nil }
    }
}
