import Foundation
import Multiformats
import Synchronization
import Transport

/// What a host lets peers make it spend in connections and dials; when a
/// limit is hit the newest is refused (closed with a reason, counted) and
/// what is already accepted keeps being served.
public struct HostLimits: Sendable {
    /// Connections at once, all peers, both directions: a newer inbound one is closed beyond it.
    public var maxConnections = 512
    /// Inbound connections from one IP address.
    public var maxInboundPerIP = 32
    /// Whether loopback addresses count against `maxInboundPerIP`, the connection
    /// slots' and the memory's per-address shares (local tests and tools often share them).
    public var limitLoopback = false
    /// Connections to one peer (two peers that dial each other at once keep two).
    public var maxConnectionsPerPeer = 4
    /// Inbound streams of one connection handled at once per protocol; a
    /// newer one is reset beyond it (Yamux bounds all streams of a connection).
    public var maxInboundStreamsPerProtocol = 256
    /// Peers being dialled at once (`connect(to:)`); beyond it a dial fails at once.
    public var maxDialsInFlight = 32
    /// Addresses of one peer tried in one dial (a peer can announce many).
    public var maxAddressesPerDial = 8
    /// An address whose dial failed is not dialled again for this long by
    /// `connect(to:)`, doubling with each further failure up to `maxDialBackoff`.
    public var dialBackoff: Duration = .seconds(5)
    public var maxDialBackoff: Duration = .seconds(300)
    /// A connection seen with no stream for this long is closed (nil: never).
    /// Pubsub peers keep their pubsub streams, so they are never idle.
    public var idleTimeout: Duration? = .seconds(300)
    /// Connection manager: over `highWater` connections, connections are
    /// closed down to `lowWater`: never those of protected peers (`protect`,
    /// e.g. pubsub mesh peers) nor those younger than `gracePeriod`; those with
    /// the fewest streams first, then the newest.
    public var highWater = 256
    public var lowWater = 192
    public var gracePeriod: Duration = .seconds(20)
    /// How often idle connections and the high-water mark are checked.
    public var maintenanceInterval: Duration = .seconds(5)
    /// Bytes all connections together may make the host buffer (see
    /// `MemoryBudget`: each stream's receive window, growth included, and the
    /// writes queued on it): an eighth of the machine's memory, within 256 MiB
    /// and 4 GiB (go-libp2p's resource manager scales its memory limit so).
    public var maxMemory = HostLimits.defaultMaxMemory
    /// What the connections to one peer may make it buffer: 160 MiB, of which
    /// new streams may fill seven eighths, room for the windows of 512
    /// streams (Yamux's limit on one connection).
    public var maxMemoryPerPeer = 160 * 1024 * 1024
    /// What the connections from one address (IPv4 address, IPv6 /64; loopback
    /// exempt unless `limitLoopback`) may make it buffer, all their peers
    /// together; nil: a quarter of `maxMemory`, so that peer ids made up at will
    /// behind two addresses take at most half of it.
    public var maxMemoryPerAddress: Int? = nil
    /// When a new stream does not fit `maxMemory`, a stream that carried no
    /// byte either way for this long, of the address (or loopback peer) holding
    /// the most, is reset to make room (see `MemoryBudget`); nil: never.
    public var reclaimIdleStreamsAfter: Duration? = .seconds(10)

    public init() {}

    static var defaultMaxMemory: Int {
        let eighth = Int(clamping: ProcessInfo.processInfo.physicalMemory / 8)
        return min(max(eighth, 256 * 1024 * 1024), 4 * 1024 * 1024 * 1024)
    }
}

#if canImport(Glibc)
import Glibc
#endif

extension HostLimits {
    /// The process's descriptor limit (RLIMIT_NOFILE, soft).
    static func descriptorLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0, limit.rlim_cur != rlim_t.max else {
            return Int.max / 4
        }
        return Int(clamping: limit.rlim_cur)
    }

    /// Descriptors kept free of sockets: for files, timers, the runtime, and
    /// sockets accepted and being refused.
    static func reserve(descriptors: Int) -> Int { max(32, descriptors / 8) }

    /// Inbound handshakes in flight that fit `descriptors` (an eighth of the sockets).
    static func handshakeBudget(descriptors: Int) -> Int {
        max(1, (descriptors - reserve(descriptors: descriptors)) / 8)
    }

    /// These limits, lowered so that connections, handshakes and dials
    /// together never use up `descriptors`. Running out is not survivable:
    /// on Linux, libdispatch (under Swift's concurrency runtime) checks its
    /// worker threads each second by opening /proc/<tid>/stat and crashes
    /// the process (SIGILL, "workq: registered worker exited prematurely")
    /// when that open fails with EMFILE.
    func fitting(descriptors: Int) -> HostLimits {
        var limits = self
        let sockets = max(8, descriptors - Self.reserve(descriptors: descriptors))
        let dialSockets = max(1, sockets / 8)
        limits.maxAddressesPerDial = max(1, min(maxAddressesPerDial, dialSockets))
        limits.maxDialsInFlight = max(1, min(maxDialsInFlight, dialSockets / limits.maxAddressesPerDial))
        // What handshakes and dials leave.
        let connections = max(1, sockets - Self.handshakeBudget(descriptors: descriptors) - dialSockets)
        limits.maxConnections = min(maxConnections, connections)
        limits.highWater = min(highWater, limits.maxConnections)
        limits.lowWater = min(lowWater, limits.highWater)
        return limits
    }
}

/// Counts of what the host's limits refused or closed, by reason.
public struct HostLimitCounters: Sendable, Equatable {
    /// Connections closed as soon as they were established, by the limit they hit.
    public var refusedConnections: [Limit: Int] = [:]
    /// Inbound streams reset over `maxInboundStreamsPerProtocol`, by protocol.
    public var refusedStreams: [String: Int] = [:]
    /// Dials refused because `maxDialsInFlight` peers were being dialled.
    public var refusedDials = 0
    /// Addresses skipped because they were backing off after a failure.
    public var backedOffAddresses = 0
    public var idleClosed = 0
    /// Connections closed by the connection manager (over the high-water mark).
    public var trimmed = 0
    /// What the transport's limits refused or closed, by reason: inbound
    /// handshakes in flight, streams negotiating, memory, stalled writes.
    public var transport: [Limit: Int] = [:]

    public init() {}
}

/// A connection and a protocol, for counting the streams handled.
struct StreamSlot: Hashable {
    let connection: UInt64
    let protocolID: String
}

/// Failed addresses and when each may be dialled again (bounded in size).
struct DialBackoffs {
    struct Entry {
        var until: ContinuousClock.Instant
        var delay: Duration
    }

    private(set) var entries: [Multiaddr: Entry] = [:]
    static let maxEntries = 4096

    func allows(_ address: Multiaddr, now: ContinuousClock.Instant) -> Bool {
        guard let entry = entries[address] else { return true }
        return entry.until <= now
    }

    mutating func failed(_ address: Multiaddr, now: ContinuousClock.Instant, base: Duration, max: Duration) {
        let delay = entries[address].map { Swift.min($0.delay * 2, max) } ?? base
        entries[address] = Entry(until: now + delay, delay: delay)
        guard entries.count > Self.maxEntries else { return }
        // Forget the entries whose wait is over, else the one ending soonest.
        let expired = entries.filter { $0.value.until <= now }.map(\.key)
        if expired.isEmpty, let first = entries.min(by: { $0.value.until < $1.value.until })?.key {
            entries[first] = nil
        }
        for key in expired { entries[key] = nil }
    }

    mutating func succeeded(_ address: Multiaddr) {
        entries[address] = nil
    }
}
