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
    case failed(peer: PeerID, error: HolePunchError)
}

/// DCUtR (`/libp2p/dcutr`) on a host: upgrades relayed connections to direct
/// ones by TCP simultaneous open. The peer that accepted a relayed connection
/// starts it (CONNECT, CONNECT, SYNC); both then dial each other's observed
/// addresses at the same moment, from their listening port (a TCP transport
/// with `reusePort`), with the security roles the protocol fixes (the
/// relayed connection's dialer is the initiator). Once a direct connection
/// works, the relayed one is closed.
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
    }
    private let state = Mutex(State())
    private let broadcaster = EventBroadcaster<HolePunchEvent>(bufferingNewest: 64)

    public init(host: Libp2pHost, configuration: Configuration = .init(), logger: Logger = Logger(label: "p2p.dcutr")) {
        self.host = host
        self.configuration = configuration
        self.logger = logger
    }

    /// Hole punch outcomes from now on (ends at `stop`).
    public func events() -> AsyncStream<HolePunchEvent> { broadcaster.subscribe() }

    private func emit(_ event: HolePunchEvent) { broadcaster.yield(event) }

    public func start() {
        host.setStreamHandler(Self.protocolID) { [self] stream in
            await self.answer(stream)
        }
        guard configuration.automatic else { return }
        let events = host.events()
        let watcher = Task { [weak self] in
            for await event in events {
                guard case .connected(let connection) = event, connection.transport == "p2p-circuit",
                    connection.direction == .inbound, let self
                else { continue }
                self.punchInBackground(connection)
            }
        }
        state.withLock { $0.watcher = watcher }
    }

    public func stop() {
        let (watcher, punches) = state.withLock { state in
            defer {
                state.watcher = nil
                state.punches = [:]
            }
            return (state.watcher, Array(state.punches.values))
        }
        watcher?.cancel()
        for punch in punches { punch.cancel() }
        broadcaster.finish()
        host.removeStreamHandler(Self.protocolID)
    }

    /// Runs `holePunch` in a task the service owns (cancelled by `stop`).
    private func punchInBackground(_ relayed: Connection) {
        let id = relayed.id
        let delay = configuration.startDelay
        let task = Task { [weak self] in
            if delay > .zero { try? await Task.sleep(for: delay) }
            _ = try? await self?.holePunch(relayed)
            _ = self?.state.withLock { $0.punches.removeValue(forKey: id) }
        }
        state.withLock { $0.punches[id] = task }
    }

    /// The addresses we offer: what peers observed us at (identify) and our
    /// listen addresses that are neither loopback nor private, TCP only.
    public var ourAddresses: [Multiaddr] {
        var result: [Multiaddr] = []
        let listenPorts = Set(host.listenAddresses.compactMap { address -> UInt16? in
            guard address.components.count == 2, case .tcp(let port) = address.components[1] else { return nil }
            return port
        })
        for connection in host.connections where connection.transport != "p2p-circuit" {
            guard let observed = host.peerStore.info(connection.remotePeer)?.observedAddress else { continue }
            result.append(observed)
            // Our listening port at the observed IP: where a port-preserving NAT
            // maps the dials we make from that port (a connection that left from
            // another port was observed at another one).
            if let ip = observed.components.first, observed.components.count == 2, case .tcp = observed.components[1] {
                result += listenPorts.sorted().map { Multiaddr([ip, .tcp($0)]) }
            }
        }
        result += host.listenAddresses.filter { $0.scope == .public }
        var unique: [Multiaddr] = []
        for address in HolePunchMessage.dialable(result) where !unique.contains(address) { unique.append(address) }
        return unique
    }

    /// The starting side ("B", which accepted `relayed`): up to `maxAttempts`
    /// exchanges, each followed by the simultaneous dial; returns the direct
    /// connection and closes the relayed one.
    @discardableResult
    public func holePunch(_ relayed: Connection) async throws -> Connection {
        let peer = relayed.remotePeer
        let start = ContinuousClock.now
        var lastError: any Error = HolePunchError.noAddresses
        for attempt in 1...configuration.maxAttempts {
            if attempt > 1 { try await Task.sleep(for: configuration.retryDelay * (attempt - 1)) }
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
                let direct = try await dialAll(exchange.dial, peer: peer, role: .responder)
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
            let direct = try await dialAll(dial, peer: peer, role: .initiator)
            emit(.succeeded(peer: peer, connection: direct, rtt: .zero, elapsed: .now - start, attempt: 1))
            await closeRelayed(relayed)
        } catch {
            logger.debug("hole punch (answering) failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Dials every address at once with `role`; the first connection wins. A
    /// direct connection that the remote's simultaneous dial gave us (accepted
    /// by our listener) counts too.
    private func dialAll(_ addresses: [Multiaddr], peer: PeerID, role: SecurityRole) async throws -> Connection {
        let targets = addresses.map { $0.encapsulating(.p2p(peer.bytes)) }
        let dialed: Result<Connection, any Error> = await withTaskGroup(of: Result<Connection, any Error>.self) { group in
            for target in targets {
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
            group.addTask { [host, configuration] in
                let deadline = ContinuousClock.now + configuration.dialTimeout
                while ContinuousClock.now < deadline {
                    if let direct = Self.directConnection(host, to: peer) { return .success(direct) }
                    do {
                        try await Task.sleep(for: .milliseconds(20))
                    } catch {
                        break
                    }
                }
                return .failure(TimeoutError(what: "dcutr dial", seconds: Double(configuration.dialTimeout.components.seconds) + Double(configuration.dialTimeout.components.attoseconds) / 1e18))
            }
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

    private func closeRelayed(_ relayed: Connection) async {
        try? await Task.sleep(for: configuration.closeRelayedAfter)
        await relayed.close()
    }

    private static func directConnection(_ host: Libp2pHost, to peer: PeerID) -> Connection? {
        host.connections.first { $0.remotePeer == peer && $0.isActive && $0.transport != "p2p-circuit" }
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
