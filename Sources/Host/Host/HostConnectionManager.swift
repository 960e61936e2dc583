import EventBroadcast
import Identity
import Logging
import Multiformats
import NIOCore
import NIOPosix
import LibP2PSecurity
import Synchronization
import Transport

// MARK: - Limits

extension Libp2pHost {
    /// What the limits refused or closed so far.
    public var limitCounters: HostLimitCounters { state.withLock { $0.counters } }

    /// Reports what a limit refused or closed (`limitReached` event); counts
    /// it too when it comes from the transport (the host's own are counted where refused).
    func limitReached(_ refusal: LimitRefusal, transport: Bool = false) {
        if transport { state.withLock { $0.counters.transport[refusal.limit, default: 0] += 1 } }
        emit(.limitReached(refusal))
    }

    /// Keeps the peer's connections when trimming over the high-water mark,
    /// for as long as any tag protects it (e.g. pubsub's mesh).
    public func protect(_ peer: PeerID, tag: String) {
        state.withLock { _ = $0.protected[peer, default: []].insert(tag) }
    }

    public func unprotect(_ peer: PeerID, tag: String) {
        state.withLock { state in
            state.protected[peer]?.remove(tag)
            if state.protected[peer]?.isEmpty == true { state.protected[peer] = nil }
        }
    }

    public func isProtected(_ peer: PeerID) -> Bool {
        state.withLock { $0.protected[peer] != nil }
    }

    /// Counts an inbound stream against `maxInboundStreamsPerProtocol`; false (counted) when over.
    func takeStreamSlot(for stream: MuxedStream) -> Bool {
        let slot = StreamSlot(connection: stream.connection.id, protocolID: stream.protocolID)
        let limit = limits.maxInboundStreamsPerProtocol
        return state.withLock { state in
            guard state.handling[slot, default: 0] < limit else {
                state.counters.refusedStreams[stream.protocolID, default: 0] += 1
                return false
            }
            state.handling[slot, default: 0] += 1
            return true
        }
    }

    func giveStreamSlot(for stream: MuxedStream) {
        let slot = StreamSlot(connection: stream.connection.id, protocolID: stream.protocolID)
        state.withLock { state in
            let count = state.handling[slot, default: 1] - 1
            state.handling[slot] = count > 0 ? count : nil
        }
    }

    /// What becomes of an inbound connection: kept, refused (the limit it
    /// hits), or kept in the place of a connection of the most crowded network.
    enum Admission {
        case admit
        case refuse(Limit)
        case admitClosing(Connection)
    }

    /// Whether an inbound connection is kept. When all connection slots are
    /// taken, a connection from a network (IPv4 address, IPv6 /64) holding
    /// fewer than another takes the place of that network's newest
    /// connection, within the grace period too: one address cannot hold the
    /// slots by refilling them faster than they are trimmed (issue 25, row 10).
    static func admission(
        of connection: Connection, existing: [Connection], _ state: State, _ limits: HostLimits
    ) -> Admission {
        let live = state.connections.values.joined().filter { !state.displaced.contains($0.id) }
        if existing.count >= limits.maxConnectionsPerPeer { return .refuse(.connectionsPerPeer(limits.maxConnectionsPerPeer)) }
        let network = SourceNetwork(connection.remoteAddress, limitLoopback: limits.limitLoopback)
        var byNetwork: [SourceNetwork: [Connection]] = [:]
        for other in live where other.direction == .inbound {
            guard let key = SourceNetwork(other.remoteAddress, limitLoopback: limits.limitLoopback) else { continue }
            byNetwork[key, default: []].append(other)
        }
        let fromNetwork = network.map { byNetwork[$0]?.count ?? 0 } ?? 0
        if network != nil, fromNetwork >= limits.maxInboundPerIP {
            return .refuse(.inboundPerIP(limits.maxInboundPerIP))
        }
        guard live.count >= limits.maxConnections else { return .admit }
        let full = Admission.refuse(.connections(limits.maxConnections))
        guard network != nil else { return full }
        // The network with the most (those of protected peers aside) gives way, if it holds two more than the newcomer's.
        let candidates = byNetwork.values.map { $0.filter { state.protected[$0.remotePeer] == nil } }
        guard let crowded = candidates.max(by: { $0.count < $1.count }), crowded.count >= fromNetwork + 2,
            let newest = crowded.max(by: { (state.openedAt[$0.id] ?? .now) < (state.openedAt[$1.id] ?? .now) })
        else { return full }
        return .admitClosing(newest)
    }

    /// Starts the task that closes idle connections and trims over the
    /// high-water mark; `close()` ends it. It holds the host weakly.
    func startMaintenance(_ weakHost: WeakHost) {
        let interval = limits.maintenanceInterval
        // Owned by the host: `close` cancels and awaits it; it also ends once the host is gone.
        let task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: interval)
                guard let host = weakHost.host else { return }
                await host.maintain()
            }
        }
        state.withLock { $0.maintenance = task }
    }

    /// One round of maintenance: idle connections, then the high-water mark.
    func maintain() async {
        let connections = self.connections
        var streams: [UInt64: Int] = [:]
        for connection in connections where connection.isActive {
            streams[connection.id] = (try? await connection.streamCount()) ?? 0
        }
        let now = clock.now
        let limits = self.limits
        let (idle, trim) = state.withLock { state -> ([Connection], [Connection]) in
            var idle: [Connection] = []
            for connection in connections {
                guard let count = streams[connection.id], count == 0 else {
                    state.idleSince[connection.id] = nil
                    continue
                }
                let since = state.idleSince[connection.id] ?? now
                state.idleSince[connection.id] = since
                if let timeout = limits.idleTimeout, now - since >= timeout { idle.append(connection) }
            }
            state.counters.idleClosed += idle.count
            let remaining = connections.filter { connection in !idle.contains { $0 === connection } }
            guard remaining.count > limits.highWater else { return (idle, []) }
            let candidates = remaining.filter { connection in
                state.protected[connection.remotePeer] == nil
                    && now - (state.openedAt[connection.id] ?? now) >= limits.gracePeriod
            }.sorted { a, b in
                let (sa, sb) = (streams[a.id] ?? 0, streams[b.id] ?? 0)
                if sa != sb { return sa < sb }
                return (state.openedAt[a.id] ?? now) > (state.openedAt[b.id] ?? now)
            }
            let trim = Array(candidates.prefix(remaining.count - limits.lowWater))
            state.counters.trimmed += trim.count
            return (idle, trim)
        }
        for connection in idle {
            logger.debug("closing idle connection", metadata: ["peer": "\(connection.remotePeer)"])
            let limit = Limit.idle(after: limits.idleTimeout)
            limitReached(LimitRefusal(limit, peer: connection.remotePeer, address: connection.remoteAddress))
            await connection.close(reason: .limitReached(limit))
        }
        for connection in trim {
            logger.debug("trimming connection", metadata: ["peer": "\(connection.remotePeer)"])
            let limit = Limit.trimmed(highWater: limits.highWater)
            limitReached(LimitRefusal(limit, peer: connection.remotePeer, address: connection.remoteAddress))
            await connection.close(reason: .limitReached(limit))
        }
    }
}

/// A weak reference to the host, so the transport's acceptor does not keep it alive.
final class WeakHost: Sendable {
    private let reference: Mutex<WeakBox>
    private struct WeakBox: @unchecked Sendable {
        // Safe: only read and written under the enclosing Mutex.
        weak var host: Libp2pHost?
    }

    init(_ host: Libp2pHost? = nil) {
        reference = Mutex(WeakBox(host: host))
    }

    func set(_ host: Libp2pHost) {
        reference.withLock { $0.host = host }
    }

    var host: Libp2pHost? { reference.withLock { $0.host } }
}

/// Routes negotiated inbound streams to the host's handlers, each in its own task.
struct Acceptor: InboundStreamAcceptor {
    let host: WeakHost

    func supports(protocolID: String) -> Bool {
        host.host?.handler(for: protocolID) != nil
    }

    func accept(_ stream: MuxedStream) {
        guard let host = host.host, let handler = host.handler(for: stream.protocolID) else {
            stream.reset()
            return
        }
        guard host.takeStreamSlot(for: stream) else {
            host.limitReached(
                LimitRefusal(
                    .inboundStreams(host.limits.maxInboundStreamsPerProtocol, protocolID: stream.protocolID),
                    peer: stream.connection.remotePeer, address: stream.connection.remoteAddress))
            stream.reset()
            return
        }
        // The handler owns the stream: the task ends with it (and the stream with its connection).
        Task {
            await handler(stream)
            await stream.close()
            host.giveStreamSlot(for: stream)
        }
    }
}
