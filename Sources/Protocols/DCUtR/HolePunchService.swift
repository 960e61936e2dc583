import EventBroadcast
import Host
import Identity
import LibP2PSecurity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

/// What a hole punch came to.
public enum HolePunchEvent: Sendable {
    /// A direct connection replaced the relayed one: the round trip measured
    /// over the relay, the time from the start of DCUtR to the direct
    /// connection, and the attempt that worked.
    case succeeded(peer: PeerID, connection: Connection, rtt: Duration, elapsed: Duration, attempt: Int)
    /// A plain dial to the remote's public address replaced the relayed
    /// connection, with no hole punch (the spec's unilateral connection upgrade).
    case dialledDirectly(peer: PeerID, connection: Connection, elapsed: Duration)
    case failed(peer: PeerID, error: HolePunchError)
}

/// DCUtR (`/libp2p/dcutr`) on a host: upgrades relayed connections to direct
/// ones. The peer that accepted a relayed connection ("B") first dials the
/// remote's public addresses, if it advertises any (the unilateral upgrade);
/// failing that it starts DCUtR (CONNECT, CONNECT, SYNC), and both then dial
/// each other's observed addresses at the same moment, from their listening
/// port (a TCP transport with `reusePort`), so that TCP simultaneous open
/// joins the dials. Once a direct connection works, the relayed one is closed.
///
/// Roles in the joined connection: the spec makes the relayed connection's
/// dialer ("A") the client. go-libp2p before v0.41 had them the other way
/// round (B client, with the multistream simultaneous-open extension before
/// v0.33), and since v0.41 its B takes the client's part on its last attempt.
/// So that old and new peers meet: B is the listener on every attempt but the
/// last, where it dials with the simultaneous-open extension; A dials with the
/// extension (a listener answers `na`, another dialler breaks the tie by
/// nonce) on the first two exchanges and is the listener from the third.
public final class HolePunchService: Sendable {
    public static let protocolID = "/libp2p/dcutr"

    /// Attempts, time-outs and delays of a hole punch, and whether it starts by itself.
    public struct Configuration: Sendable {
        public var maxAttempts = 3
        /// A whole exchange (CONNECT, CONNECT, SYNC), and one dial.
        public var exchangeTimeout: Duration = .seconds(10)
        public var dialTimeout: Duration = .seconds(5)
        /// The relayed connection closes this long after the direct one works
        /// (its users move their streams over meanwhile).
        public var closeRelayedAfter: Duration = .seconds(1)
        /// Before attempt n + 1, n times this (the remote may not know its
        /// observed addresses yet at the first).
        public var retryDelay: Duration = .seconds(1)
        /// Addresses of a CONNECT dialled at once (the first ones).
        public var maxDialAddresses = 8
        /// How long the accepting side waits for identify (the remote's public
        /// addresses) before it decides between a direct dial and a hole punch.
        public var identifyWait: Duration = .seconds(3)
        /// Which end takes which part in the connection a hole punch joins.
        public var roles = Roles.adaptive
        /// Start hole punching on every inbound relayed connection...
        public var automatic = true
        /// ...this long after it is established.
        public var startDelay: Duration = .zero

        public init() {}
    }

    public let host: Libp2pHost
    public let configuration: Configuration
    private let logger: Logger

    private struct State {
        var watcher: Task<Void, Never>?
        var punches: [UInt64: Task<Void, Never>] = [:]
        /// Exchanges answered per relayed connection (the answering side's role follows it).
        var answered: [UInt64: Int] = [:]
        /// Relayed connections with an exchange being answered (one at a time each).
        var answering: Set<UInt64> = []
        /// Peers we are about to hole punch, or hole punching, as the starting
        /// side (`upgrade` and `holePunch` under way, nested ones counted).
        var initiating: [PeerID: Int] = [:]
    }

    /// The parts each end plays in a hole punch's connection. Only `adaptive`
    /// is ours; the others play older go-libp2p peers, for tests.
    public enum Roles: Sendable, Equatable {
        /// Meets spec-following peers (rust, py, go since v0.41) and older go
        /// peers (see the type's comment).
        case adaptive
        /// go-libp2p v0.33 to v0.40: the DCUtR initiator ("B") dials as a plain
        /// client, the answerer ("A") listens.
        case goBefore041
        /// go-libp2p before v0.33: as `goBefore041`, but B dials with the
        /// multistream simultaneous-open extension.
        case goBefore033

        /// B's part at `attempt` of `maxAttempts`.
        func initiating(attempt: Int, of maxAttempts: Int) -> UpgradeRole {
            switch self {
            case .adaptive: attempt == maxAttempts && attempt > 1 ? .simultaneousOpen : .responder
            case .goBefore041: .initiator
            case .goBefore033: .simultaneousOpen
            }
        }

        /// A's part at the `exchange`th exchange on one relayed connection.
        func answering(exchange: Int) -> UpgradeRole {
            switch self {
            case .adaptive: exchange >= HolePunchService.answerAsListenerFrom ? .responder : .simultaneousOpen
            case .goBefore041, .goBefore033: .responder
            }
        }
    }

    /// The answering side dials as a listener from this exchange on (see the type's comment).
    static let answerAsListenerFrom = 3
    /// Connections whose answered exchanges are remembered at once.
    static let maxAnsweredConnections = 256
    /// Exchanges answered on one relayed connection: a starting side makes 3
    /// (go, rust, py, ours); more only make us dial where the remote says.
    static let maxExchangesPerConnection = 4
    private let state = Mutex(State())
    private let broadcaster = EventBroadcaster<HolePunchEvent>(bufferingNewest: 64)

    public init(host: Libp2pHost, configuration: Configuration = .init(), logger: Logger = Logger(label: "p2p.dcutr")) {
        self.host = host
        self.configuration = configuration
        self.logger = logger
    }

    /// Hole punch outcomes from now on (ends at `stop`).
    public func events() -> AsyncStream<HolePunchEvent> { broadcaster.subscribe() }

    /// Exchanges answered so far, on every relayed connection.
    var answeredExchanges: Int { state.withLock { $0.answered.values.reduce(0, +) } }

    private func emit(_ event: HolePunchEvent) { broadcaster.yield(event) }

    public func start() {
        host.setStreamHandler(Self.protocolID) { [self] stream in
            await self.answer(stream)
        }
        guard configuration.automatic else { return }
        let events = host.events()
        // The service's: `stop` cancels it (without awaiting: `stop` is synchronous); it also ends with the host's events.
        let watcher = Task { [weak self] in
            for await event in events {
                guard case .connected(let connection) = event, connection.isRelayed, let self
                else { continue }
                if connection.direction == .inbound {
                    self.punchInBackground(connection)
                } else {
                    self.dialPublicInBackground(connection)
                }
            }
        }
        state.withLock { $0.watcher = watcher }
    }

    /// Stops answering and punching; returns once the tasks it started have ended.
    public func stop() async {
        let (watcher, punches) = state.withLock { state in
            defer {
                state.watcher = nil
                state.punches = [:]
            }
            return (state.watcher, Array(state.punches.values))
        }
        host.removeStreamHandler(Self.protocolID)
        watcher?.cancel()
        for punch in punches { punch.cancel() }
        await watcher?.value
        for punch in punches { await punch.value }
        broadcaster.finish()
    }

    /// Runs `upgrade` in a task the service owns (cancelled by `stop`).
    private func punchInBackground(_ relayed: Connection) {
        let id = relayed.id
        let delay = configuration.startDelay
        // Counted as starting from now: the delay and identify come before the exchange.
        beginInitiating(relayed.remotePeer)
        let task = Task { [weak self] in
            if delay > .zero { try? await Task.sleep(for: delay) }
            _ = try? await self?.upgrade(relayed)
            self?.endInitiating(relayed.remotePeer)
            _ = self?.state.withLock { $0.punches.removeValue(forKey: id) }
        }
        state.withLock { $0.punches[id] = task }
    }

    private func beginInitiating(_ peer: PeerID) {
        state.withLock { $0.initiating[peer, default: 0] += 1 }
    }

    private func endInitiating(_ peer: PeerID) {
        state.withLock { state in
            let left = state.initiating[peer, default: 1] - 1
            state.initiating[peer] = left > 0 ? left : nil
        }
    }

    /// The side that dialled through a relay: when the remote advertises a
    /// public address, a plain dial there gives the direct connection without
    /// waiting for the remote's DCUtR (which may find no address of ours).
    private func dialPublicInBackground(_ relayed: Connection) {
        let id = relayed.id
        // Owned by the service as a punch (`punches`): cancelled by `stop`.
        let task = Task { [weak self] in
            guard let self else { return }
            let peer = relayed.remotePeer
            let start = ContinuousClock.now
            await self.waitForIdentify(peer, within: self.configuration.identifyWait)
            let addresses = self.publicAddresses(of: peer)
            if !addresses.isEmpty, Self.directConnection(self.host, to: peer) == nil,
                let direct = try? await self.dialAll(addresses, peer: peer, role: .initiator, watchInbound: false)
            {
                self.emit(.dialledDirectly(peer: peer, connection: direct, elapsed: .now - start))
                await self.closeRelayed(relayed)
            }
            _ = self.state.withLock { $0.punches.removeValue(forKey: id) }
        }
        state.withLock { $0.punches[id] = task }
    }

    /// The remote's public, non-relayed addresses that our transports dial;
    /// none when it advertises a circuit address (a peer that holds a relay
    /// reservation says it cannot be dialled: its public address is a NAT's).
    public func publicAddresses(of peer: PeerID) -> [Multiaddr] {
        let known = host.peerStore.info(peer)?.addresses ?? []
        guard !known.contains(where: { $0.components.contains(.p2pCircuit) }) else { return [] }
        return HolePunchMessage.dialable(known).filter { $0.scope == .public }
    }

    /// What the side that accepted `relayed` does: a plain dial when the
    /// remote advertises a public address (identify is awaited briefly for
    /// it), else `holePunch`. Returns the direct connection.
    @discardableResult
    public func upgrade(_ relayed: Connection) async throws -> Connection {
        let peer = relayed.remotePeer
        let start = ContinuousClock.now
        if let direct = Self.directConnection(host, to: peer) { return direct }
        await waitForIdentify(peer, within: configuration.identifyWait)
        let addresses = publicAddresses(of: peer)
        if !addresses.isEmpty {
            do {
                let direct = try await dialAll(addresses, peer: peer, role: .initiator, watchInbound: false)
                logger.info("direct dial replaced a relayed connection", metadata: ["peer": "\(peer)"])
                emit(.dialledDirectly(peer: peer, connection: direct, elapsed: .now - start))
                await closeRelayed(relayed)
                return direct
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                logger.debug("direct dial failed; hole punching", metadata: ["peer": "\(peer)", "error": "\(error)"])
            }
        }
        return try await holePunch(relayed)
    }

    /// Until identify told us about `peer` (its protocols are known), at most `limit`.
    private func waitForIdentify(_ peer: PeerID, within limit: Duration) async {
        let events = host.events(bufferingNewest: 64)
        let identified: @Sendable () -> Bool = { [host] in !(host.peerStore.info(peer)?.protocols.isEmpty ?? true) }
        guard !identified() else { return }
        _ = try? await withTimeout(limit, "identify") {
            for await event in events {
                if case .peerUpdated(peer) = event, identified() { return }
            }
        }
    }

    /// The addresses we offer: what peers observed us at (identify) and our
    /// listen addresses that are neither loopback nor private, TCP and QUIC.
    public var ourAddresses: [Multiaddr] {
        // Our listening ports (TCP, and UDP with QUIC) per address family.
        var listening: [(ipv6: Bool, rest: [MultiaddrComponent])] = []
        for address in host.listenAddresses {
            let parts = address.components
            guard let ipv6 = Self.isIPv6(parts.first) else { continue }
            let isTCP = parts.count == 2 && { if case .tcp = parts[1] { true } else { false } }()
            guard isTCP || address.isQUICv1AtIP else { continue }
            let rest = Array(parts.dropFirst())
            if !listening.contains(where: { $0.ipv6 == ipv6 && $0.rest == rest }) { listening.append((ipv6, rest)) }
        }
        var result: [Multiaddr] = []
        for connection in host.connections where !connection.isRelayed {
            guard let observed = host.peerStore.info(connection.remotePeer)?.observedAddress else { continue }
            result.append(observed)
            // Our listening ports at the observed IP: where a port-preserving NAT
            // maps the dials we make from those ports (TCP with `reusePort`,
            // QUIC from the listener's socket), whichever transport observed us.
            guard let ip = observed.components.first, let ipv6 = Self.isIPv6(ip) else { continue }
            result += listening.filter { $0.ipv6 == ipv6 }.map { Multiaddr([ip] + $0.rest) }
        }
        result += host.listenAddresses.filter { $0.scope == .public }
        var unique: [Multiaddr] = []
        for address in HolePunchMessage.dialable(result) where !unique.contains(address) { unique.append(address) }
        return unique
    }

    private static func isIPv6(_ component: MultiaddrComponent?) -> Bool? {
        switch component {
        case .ip4?: false
        case .ip6?: true
        default: nil
        }
    }

    /// The starting side ("B", which accepted `relayed`): up to `maxAttempts`
    /// exchanges, each followed by the simultaneous dial; returns the direct
    /// connection and closes the relayed one.
    @discardableResult
    public func holePunch(_ relayed: Connection) async throws -> Connection {
        let peer = relayed.remotePeer
        let start = ContinuousClock.now
        beginInitiating(peer)
        defer { endInitiating(peer) }
        var lastError: any Error = HolePunchError.noAddresses
        for attempt in 1...configuration.maxAttempts {
            if attempt > 1 { try await Task.sleep(for: configuration.retryDelay * (attempt - 1)) }
            // The listener's part (the spec's), but on the last attempt the
            // dialler's, for the remotes whose roles are the other way round.
            let role = configuration.roles.initiating(attempt: attempt, of: configuration.maxAttempts)
            // The remote may have punched through on its own initiative meanwhile.
            if let direct = Self.directConnection(host, to: peer) {
                emit(.succeeded(peer: peer, connection: direct, rtt: .zero, elapsed: .now - start, attempt: attempt))
                await closeRelayed(relayed)
                return direct
            }
            do {
                let (exchange, rtt) = try await withTimeout(configuration.exchangeTimeout, "dcutr exchange") {
                    try await self.initiate(on: relayed)
                }
                try await Task.sleep(for: exchange.after)
                let direct = try await dialAll(exchange.dial, peer: peer, role: role)
                logger.info("hole punch succeeded", metadata: ["peer": "\(peer)", "attempt": "\(attempt)"])
                emit(.succeeded(peer: peer, connection: direct, rtt: rtt, elapsed: .now - start, attempt: attempt))
                await closeRelayed(relayed)
                return direct
            } catch is CancellationError {
                throw CancellationError()
            } catch {
                lastError = error
                logger.debug("hole punch attempt failed", metadata: ["peer": "\(peer)", "attempt": "\(attempt)", "error": "\(error)"])
                guard relayed.isActive else { break }
            }
        }
        let failure = HolePunchError.failed(attempts: configuration.maxAttempts, underlying: lastError)
        emit(.failed(peer: peer, error: failure))
        throw failure
    }

    private struct Exchange: Sendable {
        let dial: [Multiaddr]
        let after: Duration
    }

    /// CONNECT, CONNECT, SYNC on a new stream of the relayed connection.
    private func initiate(on relayed: Connection) async throws -> (Exchange, Duration) {
        let stream = try await relayed.newStream(protocols: [Self.protocolID])
        defer { stream.reset() }
        var machine = HolePunchInitiator()
        var reader = StreamReader(stream)
        let addresses = ourAddresses
        logger.debug("dcutr connect", metadata: ["peer": "\(relayed.remotePeer)", "addresses": "\(addresses)"])
        try await send(machine.start(addresses: addresses, now: .now), on: stream)
        let answer = try await receive(&reader)
        let (sync, dial, after, rtt) = try machine.receive(answer, now: .now)
        try await send(sync, on: stream)
        try await stream.closeWrite()
        return (Exchange(dial: dial, after: after), rtt)
    }

    /// The answering side ("A", which dialled through the relay).
    private func answer(_ stream: MuxedStream) async {
        let relayed = stream.connection
        let peer = relayed.remotePeer
        let start = ContinuousClock.now
        // A direct connection has nothing to upgrade: an exchange on one would
        // only make us dial where a stranger says.
        guard relayed.isRelayed else {
            logger.debug("dcutr on a direct connection refused", metadata: ["peer": "\(peer)"])
            stream.reset()
            return
        }
        // Peers that dialled each other through a relay at once each accepted a
        // relayed connection, so each starts as B: two exchanges whose dials
        // meet in one TCP 4-tuple with two handshakes. Only the exchange of the
        // peer with the smaller id goes ahead; the other's is refused and its
        // next attempt finds the direct connection.
        let yieldsToOurs = host.localPeer.bytes.lexicographicallyPrecedes(peer.bytes)
        if yieldsToOurs, state.withLock({ $0.initiating[peer] != nil }) {
            logger.debug("dcutr exchange refused: we are starting one with this peer", metadata: ["peer": "\(peer)"])
            stream.reset()
            return
        }
        let exchange = state.withLock { state -> Int? in
            guard !state.answering.contains(relayed.id) else { return nil }
            if state.answered[relayed.id] == nil, state.answered.count >= Self.maxAnsweredConnections {
                state.answered.remove(at: state.answered.startIndex)
            }
            let count = state.answered[relayed.id, default: 0] + 1
            guard count <= Self.maxExchangesPerConnection else { return nil }
            state.answered[relayed.id] = count
            state.answering.insert(relayed.id)
            return count
        }
        guard let exchange else {
            logger.debug("dcutr exchange refused: one at a time, a few per connection", metadata: ["peer": "\(peer)"])
            stream.reset()
            return
        }
        defer { _ = state.withLock { $0.answering.remove(relayed.id) } }
        let role = configuration.roles.answering(exchange: exchange)
        do {
            let dial = try await withTimeout(configuration.exchangeTimeout, "dcutr exchange") { [self] in
                var machine = HolePunchResponder()
                var reader = StreamReader(stream)
                while true {
                    let message = try await receive(&reader)
                    let addresses = ourAddresses
                    logger.debug("dcutr answer", metadata: ["peer": "\(peer)", "received": "\(message)", "addresses": "\(addresses)"])
                    switch try machine.receive(message, ourAddresses: addresses) {
                    case .reply(let message): try await send(message, on: stream)
                    case .dial(let addresses): return addresses
                    }
                }
            }
            let direct = try await dialAll(dial, peer: peer, role: role)
            emit(.succeeded(peer: peer, connection: direct, rtt: .zero, elapsed: .now - start, attempt: exchange))
            await closeRelayed(relayed)
        } catch {
            logger.debug("hole punch (answering) failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Dials every address at once with `role`; the first connection wins. A
    /// direct connection that the remote's simultaneous dial gave us (accepted
    /// by our listener) counts too, when `watchInbound`.
    private func dialAll(
        _ addresses: [Multiaddr], peer: PeerID, role: UpgradeRole, watchInbound: Bool = true
    ) async throws -> Connection {
        // A remote names up to 32 addresses: we dial a few of those our
        // transports take, not as many as it likes.
        let targets = addresses.filter { address in host.transports.contains { $0.canDial(address) } }
            .prefix(configuration.maxDialAddresses).map { $0.encapsulating(.p2p(peer.bytes)) }
        let dialed: Result<Connection, any Error> = await withTaskGroup(of: Result<Connection, any Error>.self) { group in
            for target in targets {
                // QUIC's listening part: no dial (one side must be the QUIC
                // server), datagrams that let the remote's dial in (spec, and
                // go-libp2p's QUIC hole punch); the connection arrives inbound.
                if role == .responder, target.isQUICv1AtIP,
                    let puncher = host.transports.first(where: { $0.canDial(target) }) as? any HolePunchPacketSending
                {
                    group.addTask { [configuration] in
                        await Self.sendPunchPackets(puncher, to: target, for: configuration.dialTimeout)
                        return .failure(TimeoutError(what: "dcutr udp punch", limit: configuration.dialTimeout))
                    }
                    continue
                }
                group.addTask { [host, configuration] in
                    do {
                        return .success(
                            try await withTimeout(configuration.dialTimeout, "dcutr dial") {
                                try await host.dial(target, role: role)
                            })
                    } catch {
                        return .failure(error)
                    }
                }
            }
            // The remote's simultaneous dial may reach our listener first.
            if watchInbound { group.addTask { [host, configuration] in
                let deadline = ContinuousClock.now + configuration.dialTimeout
                while ContinuousClock.now < deadline {
                    if let direct = Self.directConnection(host, to: peer) { return .success(direct) }
                    do {
                        try await Task.sleep(for: .milliseconds(20))
                    } catch {
                        break
                    }
                }
                return .failure(TimeoutError(what: "dcutr dial", limit: configuration.dialTimeout))
            } }
            var last: Result<Connection, any Error> = .failure(HolePunchError.noAddresses)
            for await result in group {
                if case .success(let connection) = result {
                    if case .success(let winner) = last {
                        if connection !== winner { await connection.close() }
                    } else {
                        last = result
                        group.cancelAll()
                    }
                } else if case .failure = last {
                    last = result
                }
            }
            return last
        }
        if case .success(let connection) = dialed { return connection }
        if let direct = Self.directConnection(host, to: peer) { return direct }
        return try dialed.get()
    }

    /// Datagrams of random bytes to `target` at random intervals of 10 to
    /// 200 ms (the spec's), until `limit` or cancellation (a connection came).
    private static func sendPunchPackets(_ puncher: any HolePunchPacketSending, to target: Multiaddr, for limit: Duration) async {
        let deadline = ContinuousClock.now + limit
        while ContinuousClock.now < deadline, !Task.isCancelled {
            try? await puncher.sendHolePunchPacket(to: target)
            try? await Task.sleep(for: .milliseconds(Int.random(in: 10...200)))
        }
    }

    private func closeRelayed(_ relayed: Connection) async {
        try? await Task.sleep(for: configuration.closeRelayedAfter)
        await relayed.close()
    }

    private static func directConnection(_ host: Libp2pHost, to peer: PeerID) -> Connection? {
        host.connections.first { $0.remotePeer == peer && $0.isActive && !$0.isRelayed }
    }

    private func send(_ message: HolePunchMessage, on stream: MuxedStream) async throws {
        var buffer = ByteBuffer()
        buffer.writeLengthPrefixed(message.encoded())
        try await stream.write(buffer)
    }

    private func receive(_ reader: inout StreamReader) async throws -> HolePunchMessage {
        guard let bytes = try await reader.readLengthPrefixed(maxLength: HolePunchMessage.maxSize) else {
            throw HolePunchError.malformed("stream ended before the message")
        }
        return try HolePunchMessage(bytes: bytes.readableBytesView)
    }
}
