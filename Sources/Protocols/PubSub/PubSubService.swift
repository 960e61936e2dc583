import Foundation
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

/// Pubsub on a host: floodsub or gossipsub (which also talks floodsub to
/// floodsub-only peers). Subscribe to get a topic's messages as an async
/// sequence; publish data to a topic.
public final class PubSubService: Sendable {
    public let host: Libp2pHost
    public let configuration: PubSubConfiguration
    /// Bounds on what one decoded RPC may hold.
    let codecLimits: PubSubCodec.Limits
    let core: PubSubCore
    /// Inbound streams and the RPCs in transit on them (the read loops account here, off the actor).
    let inbound: InboundRPCBudget
    let logger: Logger
    /// The event watcher and the heartbeat, cancelled by `stop`.
    private let tasks = Mutex<[Task<Void, Never>]>([])

    /// Throws when the configuration breaks one of its constraints (`PubSubConfiguration.validate()`).
    public init(
        host: Libp2pHost, configuration: PubSubConfiguration = .init(), logger: Logger = Logger(label: "p2p.pubsub")
    ) throws(PubSubConfigurationError) {
        try configuration.validate()
        self.host = host
        self.configuration = configuration
        self.codecLimits = PubSubCodec.Limits(configuration)
        self.logger = logger
        var router = makeRouter(localKey: host.localKey, configuration: configuration)
        router.signedRecord = { [host] peer in host.peerStore.info(peer)?.signedPeerRecord }
        // Peer-exchange dials in flight, bounded: a trusted peer's PRUNEs cannot make us dial without end.
        let pendingDials = DialBudget(limit: configuration.prunePeers)
        let inbound = InboundRPCBudget(configuration: configuration, memory: host.upgrader.memoryBudget)
        self.inbound = inbound
        self.core = PubSubCore(
            router: router, logger: logger, inbound: inbound,
            connect: { [host, logger] peer, record, envelope in
                // Peer exchange: a verified record's addresses join the peer store; dial
                // if we know any address of the peer.
                if let record, let envelope { host.peerStore.addSignedRecord(record, envelope: envelope) }
                guard host.connection(to: peer) == nil, !(host.peerStore.info(peer)?.addresses.isEmpty ?? true) else { return }
                guard pendingDials.take() else { return }
                // Outlives this call on purpose: a dial bounded by the host's dial timeout and `pendingDials`.
                Task {
                    defer { pendingDials.give() }
                    do {
                        _ = try await host.connect(to: peer)
                    } catch {
                        logger.debug("peer exchange dial failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                    }
                }
            },
            disconnect: { [host] peer in
                for connection in host.connections where connection.remotePeer == peer {
                    // Closing is bounded by the connection's own close timeout.
                    Task { await connection.close(reason: .limitReached(.graylisted)) }
                }
            },
            meshChanged: { [host] joined, left in
                // Mesh peers are kept when the host trims connections.
                for peer in joined { host.protect(peer, tag: PubSubCore.meshTag) }
                for peer in left { host.unprotect(peer, tag: PubSubCore.meshTag) }
            })
    }

    /// The protocols we serve and propose, best first.
    public var protocols: [String] {
        configuration.router == .gossipsub ? PubSubProtocol.gossipsubPreference : PubSubProtocol.floodsubPreference
    }

    /// Registers the stream handlers, attaches to every connection (now and
    /// later) and starts the heartbeat.
    public func start() {
        for protocolID in protocols {
            host.setStreamHandler(protocolID) { [self] stream in
                await self.readLoop(stream)
            }
        }
        let events = host.events()
        let core = self.core
        let interval = configuration.heartbeatInterval
        // Ends when the host's events end; cancelled by `stop`.
        let watcher = Task { [self] in await self.watchConnections(events) }
        // Owned by the service: `stop` cancels and awaits it.
        let heartbeat = Task {
            while !Task.isCancelled, !(await core.isStopped) {
                try? await Task.sleep(for: interval)
                await core.heartbeat()
            }
        }
        tasks.withLock { $0 += [watcher, heartbeat] }
    }

    /// Stops the heartbeat and ends every subscription.
    public func stop() async {
        let started = tasks.withLock { tasks in defer { tasks = [] }; return tasks }
        for task in started { task.cancel() }
        // What `start` began has ended when `stop` returns.
        for task in started { await task.value }
        await core.stop()
    }

    /// The current score of `peer` (gossipsub v1.1 peer scoring).
    public func score(of peer: PeerID) async -> Double { await core.score(of: peer) }

    /// Joins `topic`; its messages (from others) arrive on the returned sequence.
    public func subscribe(_ topic: String) async -> AsyncStream<PubSubMessage> {
        await core.subscribe(topic)
    }

    /// Leaves `topic`; its sequences end.
    public func unsubscribe(_ topic: String) async {
        await core.unsubscribe(topic)
    }

    /// Publishes `data` on `topic`; returns how many peers it was sent to (0
    /// when no peer we may publish to is on the topic: nobody got it). Our own
    /// subscribers never receive what we publish.
    @discardableResult
    public func publish(_ topic: String, data: [UInt8]) async throws -> Int {
        try await core.publish(topic, data: data)
    }

    /// Publishes `data` on `topic`; returns the message as sent (signed, with
    /// its id) and how many peers it went to.
    public func publishMessage(_ topic: String, data: [UInt8]) async throws -> (message: PubSubMessage, sentTo: Int) {
        try await core.publishMessage(topic, data: data)
    }

    /// Peers known to be subscribed to `topic`.
    public func peers(in topic: String) async -> [PeerID] { await core.peers(in: topic) }

    /// Peers joining and leaving topics, from now on (`peers(in:)` tells who is
    /// there already). The sequence ends when the service stops.
    public func events() async -> AsyncStream<PubSubEvent> { await core.events() }

    /// Returns true once `peer` is subscribed to `topic` (at once if it already is);
    /// false if the service stops or the task is cancelled first.
    public func waitUntilSubscribed(_ peer: PeerID, to topic: String) async -> Bool {
        // Listen first, then look: a subscription between the two is not missed.
        let events = await core.events()
        if await core.peers(in: topic).contains(peer) { return true }
        for await event in events where event == .subscribed(peer: peer, topic: topic) { return true }
        return false
    }

    /// Our gossipsub mesh for `topic`.
    public func mesh(_ topic: String) async -> [PeerID] { await core.mesh(topic) }

    /// Peers with a pubsub stream, and the protocol each speaks.
    public func pubsubPeers() async -> [PeerID: String] { await core.pubsubPeers() }

    /// What was dropped and why.
    public func counters() async -> PubSubCounters { await core.counters() }

    /// Inbound pubsub streams (one per peer at most) and the bytes reserved by RPCs still arriving.
    public func inboundUsage() async -> (streams: Int, pendingRPCBytes: Int) { inbound.usage }

    /// RPCs encoded for sending so far: each once, however many peers it went to.
    var encodedRPCCount: Int { core.sent.encodedRPCs.load(ordering: .relaxed) }

    /// Sets the validator of `topic`.
    public func setValidator(topic: String, _ validator: @escaping @Sendable (PubSubMessage) -> ValidationResult) async {
        await core.setValidator(topic: topic, validator)
    }
}

/// How many peer-exchange dials may be in flight at once.
final class DialBudget: Sendable {
    private let inFlight = Mutex(0)
    let limit: Int

    init(limit: Int) {
        self.limit = limit
    }

    /// Takes a slot; false when all are taken.
    func take() -> Bool {
        inFlight.withLock { count in
            guard count < limit else { return false }
            count += 1
            return true
        }
    }

    func give() {
        inFlight.withLock { $0 -= 1 }
    }
}

