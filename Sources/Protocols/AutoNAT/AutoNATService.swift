import EventBroadcast
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

/// AutoNAT v1 (`/libp2p/autonat/1.0.0`) on a host. The server dials a
/// requester back, on a fresh connection, only at the requester's own IP and
/// within its rate limits. The client asks peers that serve AutoNAT to dial
/// it back and tracks its reachability from their answers.
public final class AutoNATService: Sendable {
    public static let protocolID = "/libp2p/autonat/1.0.0"

    /// What the service serves and asks, how often, and its time-outs.
    public struct Configuration: Sendable {
        /// Answer other peers' requests.
        public var serve = true
        /// Ask peers periodically (`probe` can always be called).
        public var probe = true
        /// Between rounds of questions once the reachability is known;
        /// unknown, we ask every `retryInterval`.
        public var probeInterval: Duration = .seconds(300)
        public var retryInterval: Duration = .seconds(2)
        /// A dial back, and a whole request.
        public var dialTimeout: Duration = .seconds(10)
        public var requestTimeout: Duration = .seconds(30)
        /// Agreeing servers needed to decide (1 when one server is all there is).
        public var threshold = 2
        public var serverLimits = AutoNATServerPolicy.Limits()
        /// Transports of our own for dial-backs, with sockets that are not our
        /// listeners' (as go-libp2p dials back from a host of its own): a dial
        /// from a listening socket may be the reverse of a flow the requester's
        /// NAT already maps, and get through (a false "public"). TCP is dialled
        /// from a fresh socket when none is given; a transport whose dials leave
        /// from its listeners' sockets (QUIC) dials back only from here.
        public var dialBackTransports: [any Transport] = []

        public init() {}
    }

    public let host: Libp2pHost
    public let configuration: Configuration
    private let logger: Logger

    private struct State {
        var policy: AutoNATServerPolicy
        var tracker: ReachabilityTracker
        var prober: Task<Void, Never>?
    }
    private let state: Mutex<State>
    private let changes = EventBroadcaster<Reachability>(bufferingNewest: 16)

    public init(host: Libp2pHost, configuration: Configuration = .init(), logger: Logger = Logger(label: "p2p.autonat")) {
        self.host = host
        self.configuration = configuration
        self.logger = logger
        state = Mutex(
            State(
                policy: AutoNATServerPolicy(limits: configuration.serverLimits),
                tracker: ReachabilityTracker(threshold: configuration.threshold)))
    }

    public var reachability: Reachability { state.withLock { $0.tracker.reachability } }
    /// The address a server last reached us at.
    public var publicAddress: Multiaddr? { state.withLock { $0.tracker.publicAddress } }

    /// Every change of reachability from now on (ends at `stop`).
    public func reachabilityChanges() -> AsyncStream<Reachability> { changes.subscribe() }

    public func start() {
        if configuration.serve {
            host.setStreamHandler(Self.protocolID) { [self] stream in
                await self.serve(stream)
            }
        }
        guard configuration.probe else { return }
        // The service's: `stop` cancels it (without awaiting: `stop` is synchronous).
        let prober = Task { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                let known = await self.probe() != .unknown
                let wait = known ? self.configuration.probeInterval : self.configuration.retryInterval
                do {
                    try await Task.sleep(for: wait)
                } catch {
                    return
                }
            }
        }
        state.withLock { $0.prober = prober }
    }

    /// Stops serving and asking; returns once the prober it started has ended.
    public func stop() async {
        let prober = state.withLock { state in
            defer { state.prober = nil }
            return state.prober
        }
        if configuration.serve { host.removeStreamHandler(Self.protocolID) }
        prober?.cancel()
        await prober?.value
        changes.finish()
    }

    // MARK: Client

    /// The addresses we ask to be dialled at: our TCP and QUIC listen addresses.
    private var dialBackAddresses: [Multiaddr] {
        host.listenAddresses.filter(AutoNATServerPolicy.isDialBackAddress)
    }

    /// Asks every connected peer that serves AutoNAT (known from identify)
    /// once, records the answers, and returns the reachability.
    @discardableResult
    public func probe() async -> Reachability {
        let servers = Set(
            host.connections.filter { !$0.isRelayed }.map(\.remotePeer).filter {
                host.peerStore.info($0)?.protocols.contains(Self.protocolID) ?? false
            })
        await withTaskGroup(of: Void.self) { group in
            for server in servers {
                group.addTask {
                    do {
                        _ = try await self.ask(server)
                    } catch {
                        self.logger.debug("autonat request failed", metadata: ["server": "\(server)", "error": "\(error)"])
                    }
                }
            }
        }
        return reachability
    }

    /// Asks one server to dial us back; records and returns its answer.
    public func ask(_ server: PeerID) async throws -> (AutoNATStatus, Multiaddr?) {
        let request = AutoNATMessage.dial(peer: host.localPeer, addresses: dialBackAddresses)
        let answer: AutoNATMessage
        let serverAddress: Multiaddr
        do {
            (answer, serverAddress) = try await withTimeout(configuration.requestTimeout, "autonat request") { [host] in
                let stream = try await host.newStream(to: server, protocols: [Self.protocolID])
                defer { stream.reset() }
                var buffer = ByteBuffer()
                buffer.writeLengthPrefixed(request.encoded())
                try await stream.write(buffer)
                var reader = StreamReader(stream)
                guard let bytes = try await reader.readLengthPrefixed(maxLength: AutoNATMessage.maxSize) else {
                    throw AutoNATError.malformed("stream ended before the response")
                }
                return (try AutoNATMessage(bytes: bytes.readableBytesView), stream.connection.remoteAddress)
            }
        } catch {
            throw AutoNATError.requestFailed(server: server, underlying: error)
        }
        guard case .dialResponse(let status, _, let address) = answer else {
            throw AutoNATError.unexpected("expected DIAL_RESPONSE, got \(answer)")
        }
        let changed = state.withLock { state in
            let changed = state.tracker.record(server: server, at: serverAddress, status: status, address: address)
            // Under the lock: concurrent answers reach subscribers in the order the tracker saw them.
            if let changed { changes.yield(changed) }
            return changed
        }
        logger.debug("autonat answer", metadata: ["server": "\(server)", "status": "\(status)"])
        if let changed {
            logger.info("reachability changed", metadata: ["reachability": "\(changed.rawValue)"])
        }
        return (status, address)
    }

    // MARK: Server

    private func serve(_ stream: MuxedStream) async {
        let answer: AutoNATMessage
        do {
            let bytes = try await withTimeout(configuration.requestTimeout, "autonat request") {
                var reader = StreamReader(stream)
                return try await reader.readLengthPrefixed(maxLength: AutoNATMessage.maxSize)
            }
            guard let bytes else { return }
            answer = await respond(to: try AutoNATMessage(bytes: bytes.readableBytesView), on: stream.connection)
        } catch {
            answer = .dialResponse(.badRequest, text: "\(error)", address: nil)
        }
        var buffer = ByteBuffer()
        buffer.writeLengthPrefixed(answer.encoded())
        try? await stream.write(buffer)
    }

    private func respond(to request: AutoNATMessage, on connection: Connection) async -> AutoNATMessage {
        guard case .dial(let peer, let addresses) = request else {
            return .dialResponse(.badRequest, text: "expected DIAL", address: nil)
        }
        let decision = state.withLock {
            $0.policy.decide(
                requester: connection.remotePeer, claimedPeer: peer, addresses: addresses,
                observed: connection.remoteAddress, relayed: connection.isRelayed, now: .now)
        }
        let candidates: [Multiaddr]
        switch decision {
        case .success(let list): candidates = list
        case .failure(let refusal): return .dialResponse(refusal.status, text: refusal.text, address: nil)
        }
        for candidate in candidates {
            if await dialBack(peer, at: candidate) {
                return .dialResponse(.ok, text: nil, address: candidate)
            }
        }
        return .dialResponse(.dialError, text: "dial back failed", address: nil)
    }

    /// A fresh connection (never the one the request came on) to `peer` at `address`.
    private func dialBack(_ peer: PeerID, at address: Multiaddr) async -> Bool {
        let target = address.encapsulating(.p2p(peer.bytes))
        // Never from our listening port (a port-reusing TCP transport, or
        // QUIC, would): that four-tuple may be the reverse of a connection the
        // requester's NAT already maps, which would let the dial through (a
        // false "public") and disturb that connection.
        let transport: any Transport
        if let own = configuration.dialBackTransports.first(where: { $0.canDial(target) }) {
            transport = own
        } else if let found = host.transports.first(where: { $0.canDial(target) }), !(found is any HolePunchPacketSending) {
            transport = found is TCPTransport ? TCPTransport(group: host.group) : found
        } else {
            return false
        }
        do {
            let connection = try await withTimeout(configuration.dialTimeout, "autonat dial back") { [host] in
                try await transport.dial(target, upgrader: host.upgrader)
            }
            await connection.close()
            return true
        } catch {
            logger.debug("dial back failed", metadata: ["address": "\(target)", "error": "\(error)"])
            return false
        }
    }
}
