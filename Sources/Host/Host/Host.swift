import EventBroadcast
import Identity
import Logging
import Multiformats
import NIOCore
import NIOPosix
import LibP2PSecurity
import Synchronization
import Transport

/// Something that happened to the host's connections or peers.
public enum HostEvent: Sendable {
    /// A connection was established (there may be several to one peer: two
    /// peers that dial each other at once keep both, as go- and rust-libp2p do).
    case connected(Connection)
    case disconnected(Connection)
    /// The first connection to a peer: the peer is now connected.
    case peerConnected(Connection)
    /// The last connection to a peer closed.
    case peerDisconnected(PeerID)
    /// The peer store learned something new about a peer (e.g. from identify).
    case peerUpdated(PeerID)
    /// Our listen addresses or supported protocols changed.
    case localChanged
    /// A limit refused or closed something (counted in `limitCounters`).
    case limitReached(LimitRefusal)
}

/// A stream protocol handler; runs in its own task per stream. When it returns,
/// the host closes the stream (write side closed, unread input discarded).
public typealias StreamHandler = @Sendable (MuxedStream) async -> Void

/// Errors of the host.
public enum HostError: Error, CustomStringConvertible, Sendable {
    /// The peer store knows no address of the peer.
    case noAddresses(PeerID)
    /// Every address of the peer failed; each attempt keeps its error.
    case dialFailed(PeerID, [DialAttempt])
    /// Every known address of the peer failed recently and is backing off.
    case dialBackoff(PeerID)
    /// A limit of `HostLimits` refused the dial.
    case limitReached(Limit)
    /// The dial named our own peer id: an address of ours, or of another
    /// process running with our identity (never dialled, as go-libp2p does).
    case dialSelf(PeerID)

    public var description: String {
        switch self {
        case .dialSelf(let peer): return "\(peer) is our own peer id: not dialling ourselves"
        case .noAddresses(let peer): return "no known addresses for \(peer)"
        case .dialFailed(let peer, let attempts):
            return "could not reach \(peer): \(attempts.map(\.description).joined(separator: "; "))"
        case .dialBackoff(let peer): return "every address of \(peer) failed recently; not dialling again yet"
        case .limitReached(let what): return "refused: limit of \(what) reached"
        }
    }
}

/// One failed dial of one address.
public struct DialAttempt: Sendable, CustomStringConvertible {
    public let address: Multiaddr
    public let error: any Error

    /// "/ip4/1.2.3.4/tcp/1: connection refused": the address (its peer is named
    /// by the error that lists the attempts), and why, said once.
    public var description: String {
        "\(address.withoutP2P): \(ErrorText.reason(of: error))"
    }
}

/// A libp2p node: listens, dials, keeps one connection per peer where it can,
/// and routes inbound streams to the registered protocol handlers.
public final class Libp2pHost: Sendable {
    public let localKey: PrivateKey
    public let localPeer: PeerID
    public let peerStore = PeerStore()
    public let group: EventLoopGroup
    let logger: Logger

    /// Tried in order: the first that can dial (or listen on) an address takes it.
    public let transports: [any Transport]
    /// Secures and multiplexes every connection of every transport.
    public let upgrader: Upgrader

    struct State {
        var listeners: [Listener] = []
        var handlers: [String: StreamHandler] = [:]
        var connections: [PeerID: [Connection]] = [:]
        var pendingDials: [PeerID: Task<Connection, any Error>] = [:]
        var closed = false
        /// Limits: dials in flight, failed addresses, counters, connection ages and idleness, protected peers.
        var dialsInFlight = 0
        var backoffs = DialBackoffs()
        var counters = HostLimitCounters()
        var openedAt: [UInt64: ContinuousClock.Instant] = [:]
        var idleSince: [UInt64: ContinuousClock.Instant] = [:]
        var protected: [PeerID: Set<String>] = [:]
        /// Inbound streams being handled, per connection and protocol.
        var handling: [StreamSlot: Int] = [:]
        var maintenance: Task<Void, Never>?
        /// Connections closed to make room for a less crowded address, no longer counted.
        var displaced: Set<UInt64> = []
    }
    let state = Mutex(State())
    private let broadcaster = EventBroadcaster<HostEvent>(bufferingNewest: 1024)

    /// Limits on connections and dials (see `HostLimits`).
    public let limits: HostLimits
    let clock = ContinuousClock()

    /// NIO's process-wide group: it is never shut down, so late work (a
    /// stream reset after close) always has a loop to run on.
    public static var defaultGroup: any EventLoopGroup { MultiThreadedEventLoopGroup.singleton }

    /// A host on `transports` (TCP by default) offering `security` in order of
    /// preference. The host knows the seams only: `Libp2pHostBuilder` (in
    /// `Libp2p`) makes one with the usual transports and security protocols.
    /// Throws, with what is wrong, when `configuration` breaks a constraint
    /// (`TransportConfiguration.validate()`).
    public init(
        key: PrivateKey, configuration: TransportConfiguration = .init(), group: EventLoopGroup? = nil,
        transports: [any Transport]? = nil, security: [any SecurityProtocol],
        limits: HostLimits = .init(), logger: Logger = Logger(label: "p2p.host")
    ) throws(TransportConfigurationError) {
        try configuration.validate()
        // Sockets must never use up the descriptors: see `HostLimits.fitting(descriptors:)`.
        let descriptors = HostLimits.descriptorLimit()
        self.limits = limits.fitting(descriptors: descriptors)
        var configuration = configuration
        configuration.maxInboundHandshakes = min(
            configuration.maxInboundHandshakes, HostLimits.handshakeBudget(descriptors: descriptors))
        self.localKey = key
        self.localPeer = PeerID(publicKey: key.publicKey)
        let group = group ?? Self.defaultGroup
        self.group = group
        self.logger = logger
        self.transports = transports ?? [TCPTransport(group: group)]
        // The upgrader reaches the host weakly: connections must not keep it alive.
        let weakHost = WeakHost()
        self.upgrader = Upgrader(
            localKey: key, security: security, configuration: configuration, acceptor: Acceptor(host: weakHost),
            logger: logger,
            memoryBudget: MemoryBudget(
                limit: self.limits.maxMemory, limitPerPeer: self.limits.maxMemoryPerPeer,
                limitPerNetwork: self.limits.maxMemoryPerAddress ?? self.limits.maxMemory / 4,
                limitLoopback: self.limits.limitLoopback, reclaimIdleAfter: self.limits.reclaimIdleStreamsAfter),
            onLimitReached: { refusal in weakHost.host?.limitReached(refusal, transport: true) },
            onInboundConnection: { connection in weakHost.host?.adopt(connection) })
        weakHost.set(self)
        startMaintenance(weakHost)
    }

    private func transport(dialing address: Multiaddr) throws -> any Transport {
        guard let transport = transports.first(where: { $0.canDial(address) }) else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        return transport
    }

    // MARK: Listening

    /// Starts listening on each address (e.g. `/ip4/0.0.0.0/tcp/0`).
    @discardableResult
    public func listen(on addresses: [Multiaddr]) async throws -> [Multiaddr] {
        var bound: [Multiaddr] = []
        for address in addresses {
            guard let transport = transports.first(where: { $0.canListen(address) }) else {
                throw TransportError.unsupportedAddress("\(address)")
            }
            let listener = try await transport.listen(on: address, upgrader: upgrader)
            state.withLock { $0.listeners.append(listener) }
            bound.append(listener.address)
        }
        emit(.localChanged)
        return bound
    }

    /// Closes the listeners bound to any of `addresses` (as `listen` returned them).
    public func stopListening(on addresses: [Multiaddr]) async {
        let closing = state.withLock { state -> [Listener] in
            let (gone, kept) = (
                state.listeners.filter { addresses.contains($0.address) },
                state.listeners.filter { !addresses.contains($0.address) }
            )
            state.listeners = kept
            return gone
        }
        guard !closing.isEmpty else { return }
        for listener in closing { await listener.close() }
        emit(.localChanged)
    }

    /// The addresses we are bound to, as bound (may be unspecified: 0.0.0.0, ::).
    public var boundAddresses: [Multiaddr] {
        state.withLock { $0.listeners.map(\.address) }
    }

    /// Addresses others can dial: unspecified binds expanded to each interface address.
    public var listenAddresses: [Multiaddr] {
        let bound = boundAddresses
        let interfaces = (try? System.enumerateDevices()) ?? []
        var result: [Multiaddr] = []
        for address in bound {
            let parts = address.components
            let rest = Array(parts.dropFirst())
            func add(_ candidate: Multiaddr) {
                if !result.contains(candidate) { result.append(candidate) }
            }
            switch parts.first {
            case .ip4(let ip)? where ip == [0, 0, 0, 0]:
                for device in interfaces {
                    guard let socket = device.address, case .v4 = socket,
                        let expanded = try? Multiaddr(socketAddress: socket)
                    else { continue }
                    add(Multiaddr([expanded.components[0]] + rest))
                }
            case .ip6(let ip)? where ip.allSatisfy({ $0 == 0 }):
                for device in interfaces {
                    guard let socket = device.address, case .v6(let v6) = socket,
                        v6.address.sin6_scope_id == 0,  // skip link-local: needs a zone
                        let expanded = try? Multiaddr(socketAddress: socket)
                    else { continue }
                    add(Multiaddr([expanded.components[0]] + rest))
                }
            default:
                add(address)
            }
        }
        return result
    }

    // MARK: Protocols

    /// Serves `protocolID`: each inbound stream negotiated for it runs `handler`.
    public func setStreamHandler(_ protocolID: String, handler: @escaping StreamHandler) {
        state.withLock { $0.handlers[protocolID] = handler }
        emit(.localChanged)
    }

    public func removeStreamHandler(_ protocolID: String) {
        state.withLock { _ = $0.handlers.removeValue(forKey: protocolID) }
        emit(.localChanged)
    }

    /// The protocols we serve, sorted.
    public var supportedProtocols: [String] {
        state.withLock { $0.handlers.keys.sorted() }
    }

    func handler(for protocolID: String) -> StreamHandler? {
        state.withLock { $0.handlers[protocolID] }
    }

    // MARK: Connections

    /// Dials an address (reusing a live connection when the address names a known peer).
    public func connect(_ address: Multiaddr) async throws -> Connection {
        if let peer = address.peerID {
            guard peer != localPeer else { throw HostError.dialSelf(peer) }
            if let existing = connection(to: peer) { return existing }
            // A dial to the peer under way (connect(to:)) is shared rather than doubled.
            if let pending = state.withLock({ $0.pendingDials[peer] }), let connection = try? await pending.value {
                return connection
            }
        }
        let connection = try await transport(dialing: address).dial(address, upgrader: upgrader)
        adopt(connection)
        return connection
    }

    /// Dials a new connection even if the peer is connected already (a direct
    /// connection beside a relayed one), with the security role given (a hole
    /// punch fixes it by protocol, not by who dials).
    public func dial(_ address: Multiaddr, role: UpgradeRole) async throws -> Connection {
        if let peer = address.peerID, peer == localPeer { throw HostError.dialSelf(peer) }
        let connection = try await transport(dialing: address).dial(address, upgrader: upgrader, role: role)
        adopt(connection)
        return connection
    }

    /// A live connection to the peer, if any.
    /// A direct one is preferred to a relayed one (`p2p-circuit`).
    public func connection(to peer: PeerID) -> Connection? {
        state.withLock { state in
            let live = state.connections[peer]?.filter(\.isActive) ?? []
            return live.first { !$0.isRelayed } ?? live.first
        }
    }

    public var connectedPeers: [PeerID] {
        state.withLock { $0.connections.compactMap { $0.value.isEmpty ? nil : $0.key } }
    }

    public var connections: [Connection] {
        state.withLock { $0.connections.values.flatMap { $0 } }
    }

    /// Delay between starting dials to successive addresses of one peer
    /// (happy eyeballs, RFC 8305's connection attempt delay).
    public static let dialStagger: Duration = .milliseconds(250)

    /// A connection to the peer: the live one, one being dialled already, or a
    /// new one to its known addresses, dialled with a short stagger (happy
    /// eyeballs); the first to succeed wins and the rest are cancelled.
    public func connect(to peer: PeerID) async throws -> Connection {
        guard peer != localPeer else { throw HostError.dialSelf(peer) }
        if let existing = connection(to: peer) { return existing }
        let addresses = peerStore.info(peer)?.addresses ?? []
        guard !addresses.isEmpty else { throw HostError.noAddresses(peer) }
        let maxDials = limits.maxDialsInFlight
        let shared = state.withLock { state -> (Task<Connection, any Error>, Bool)? in
            if let pending = state.pendingDials[peer] { return (pending, false) }
            guard state.dialsInFlight < maxDials else {
                state.counters.refusedDials += 1
                return nil
            }
            state.dialsInFlight += 1
            // Shared by every caller dialling the peer; owned by `pendingDials` until it ends.
            let dial = Task { try await self.dialStaggered(peer, addresses: addresses) }
            state.pendingDials[peer] = dial
            return (dial, true)
        }
        guard let (dial, isNew) = shared else {
            limitReached(LimitRefusal(.dials(maxDials), peer: peer, address: nil))
            throw HostError.limitReached(.dials(maxDials))
        }
        // Callers share one dial per peer; the first caller clears it.
        defer {
            if isNew {
                state.withLock { state in
                    state.pendingDials.removeValue(forKey: peer)
                    state.dialsInFlight -= 1
                }
            }
        }
        return try await withTaskCancellationHandler {
            try await dial.value
        } onCancel: {
            if isNew { dial.cancel() }
        }
    }

    private func dialStaggered(_ peer: PeerID, addresses: [Multiaddr]) async throws -> Connection {
        // Addresses that failed lately wait out their backoff; at most `maxAddressesPerDial` are tried.
        let now = clock.now
        let allowed = state.withLock { state in
            // Backoffs are per peer and address: a relay's circuit address is the
            // same for every peer behind it, and one that has no reservation
            // there must not hold back the others.
            let allowed = addresses.filter { state.backoffs.allows(Self.dialTarget($0, peer), now: now) }
            state.counters.backedOffAddresses += addresses.count - allowed.count
            return allowed
        }
        guard !allowed.isEmpty else { throw HostError.dialBackoff(peer) }
        let chosen = Array(Self.preferringQUIC(allowed).prefix(limits.maxAddressesPerDial))
        let targets = chosen.map { Self.dialTarget($0, peer) }
        return try await withThrowingTaskGroup(of: (Int, Result<Connection, any Error>).self) { group in
            for (index, address) in targets.enumerated() {
                group.addTask {
                    do {
                        if index > 0 { try await Task.sleep(for: Self.dialStagger * index) }
                        let transport = try self.transport(dialing: address)
                        return (index, .success(try await transport.dial(address, upgrader: self.upgrader)))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var winner: Connection?
            var attempts: [DialAttempt] = []
            for try await (index, result) in group {
                switch result {
                case .success(let connection) where winner == nil:
                    winner = connection
                    state.withLock { $0.backoffs.succeeded(targets[index]) }
                    group.cancelAll()
                case .success(let connection):
                    // Finished while the others were being cancelled.
                    await connection.close()
                case .failure(let error):
                    guard winner == nil, !(error is CancellationError), !Task.isCancelled else { continue }
                    attempts.append(DialAttempt(address: targets[index], error: error))
                    let limits = self.limits
                    state.withLock {
                        $0.backoffs.failed(
                            targets[index], now: self.clock.now, base: limits.dialBackoff, max: limits.maxDialBackoff)
                    }
                }
            }
            guard let winner else { throw HostError.dialFailed(peer, attempts) }
            adopt(winner)
            return winner
        }
    }

    /// Direct `/quic-v1` addresses first, the rest in their order: QUIC is up
    /// in one round trip and has no head-of-line blocking between streams, so
    /// it is tried first and TCP follows a stagger later (go-libp2p ranks its
    /// dials the same way).
    static func preferringQUIC(_ addresses: [Multiaddr]) -> [Multiaddr] {
        func isDirectQUIC(_ address: Multiaddr) -> Bool {
            address.components.contains { if case .quicV1 = $0 { true } else { false } }
                && !address.components.contains { if case .p2pCircuit = $0 { true } else { false } }
        }
        return addresses.filter(isDirectQUIC) + addresses.filter { !isDirectQUIC($0) }
    }

    /// `address` ending in `/p2p/<peer>`.
    private static func dialTarget(_ address: Multiaddr, _ peer: PeerID) -> Multiaddr {
        address.peerID == nil ? address.encapsulating(.p2p(peer.bytes)) : address
    }

    /// Opens a stream to a peer for the first of `protocols` it supports.
    public func newStream(to peer: PeerID, protocols: [String]) async throws -> MuxedStream {
        let connection = try await connect(to: peer)
        return try await connection.newStream(protocols: protocols)
    }

    func adopt(_ connection: Connection) {
        let limits = self.limits
        let now = clock.now
        let (refusal, first, displaced, closed) = state.withLock { state -> (Limit?, Bool, Connection?, Bool) in
            guard !state.closed else { return (nil, false, nil, true) }
            let existing = state.connections[connection.remotePeer] ?? []
            var displaced: Connection?
            if connection.direction == .inbound {
                switch Self.admission(of: connection, existing: existing, state, limits) {
                case .admit: break
                case .refuse(let why):
                    state.counters.refusedConnections[why, default: 0] += 1
                    return (why, false, nil, false)
                case .admitClosing(let crowded):
                    state.displaced.insert(crowded.id)
                    state.counters.refusedConnections[.connectionSlots, default: 0] += 1
                    displaced = crowded
                }
            }
            state.connections[connection.remotePeer, default: []].append(connection)
            state.openedAt[connection.id] = now
            return (nil, existing.isEmpty, displaced, false)
        }
        if closed {
            // Outlives this synchronous call: closing is bounded by the connection's close timeout.
            Task { await connection.close() }
            return
        }
        if let displaced {
            logger.debug("connection closed for a less crowded address", metadata: ["peer": "\(displaced.remotePeer)"])
            emit(.limitReached(LimitRefusal(.connectionSlots, peer: displaced.remotePeer, address: displaced.remoteAddress)))
            // Outlives this synchronous call: closing is bounded by the connection's close timeout.
            Task { await displaced.close(reason: .limitReached(.connectionSlots)) }
        }
        if let refusal {
            logger.debug(
                "connection refused", metadata: ["peer": "\(connection.remotePeer)", "limit": "\(refusal)"])
            emit(.limitReached(LimitRefusal(refusal, peer: connection.remotePeer, address: connection.remoteAddress)))
            // Outlives this synchronous call: closing is bounded by the connection's close timeout.
            Task { await connection.close(reason: .limitReached(refusal)) }
            return
        }
        if connection.direction == .outbound {
            peerStore.addAddresses([connection.remoteAddress], for: connection.remotePeer)
        }
        peerStore.update(connection.remotePeer) { $0.publicKey = connection.remotePublicKey }
        logger.debug("connected", metadata: ["peer": "\(connection.remotePeer)", "conn": "\(connection.id)"])
        emit(.connected(connection))
        if first { emit(.peerConnected(connection)) }
        connection.closeFuture.whenComplete { [weak self] _ in
            self?.forget(connection)
        }
    }

    func forget(_ connection: Connection) {
        // The events go out under the lock: `close` forgets every connection
        // (taking the lock) before it ends the event streams, so a report that
        // a connection's own close callback is making cannot come after the end.
        state.withLock { state in
            guard var list = state.connections[connection.remotePeer],
                let index = list.firstIndex(where: { $0 === connection })
            else { return }
            list.remove(at: index)
            state.connections[connection.remotePeer] = list.isEmpty ? nil : list
            state.openedAt[connection.id] = nil
            state.idleSince[connection.id] = nil
            state.displaced.remove(connection.id)
            logger.debug("disconnected", metadata: ["peer": "\(connection.remotePeer)", "conn": "\(connection.id)"])
            emit(.disconnected(connection))
            if list.isEmpty { emit(.peerDisconnected(connection.remotePeer)) }
        }
    }

    // MARK: Events

    /// A new subscription to host events, from now on. Bounded: a subscriber that
    /// does not keep up loses the oldest events.
    /// After `close` the stream ends at once.
    public func events(bufferingNewest limit: Int = 1024) -> AsyncStream<HostEvent> {
        broadcaster.subscribe(bufferingNewest: limit)
    }

    /// Publishes an event to every subscriber (used by protocols such as identify too).
    public func emit(_ event: HostEvent) { broadcaster.yield(event) }

    // MARK: Shutdown

    /// Closes every connection and listener; the host cannot be used afterwards.
    public func close() async {
        let (listeners, connections, maintenance) = state.withLock { state in
            state.closed = true
            defer { state.maintenance = nil }
            let result = (state.listeners, state.connections.values.flatMap { $0 }, state.maintenance)
            state.listeners = []
            return result
        }
        // The maintenance task is the host's: ended here, and awaited (a round
        // in progress finishes) before the connections close.
        maintenance?.cancel()
        await maintenance?.value
        for listener in listeners { await listener.close() }
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { await connection.close() }
            }
        }
        // A connection's close callback may not have run yet: report it gone
        // now (once: `forget` ignores a connection already forgotten), before
        // the event streams end.
        for connection in connections { forget(connection) }
        broadcaster.finish()
    }
}
