import EventBroadcast
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
        self.core = PubSubCore(
            router: router, logger: logger, memory: host.upgrader.memoryBudget,
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
        let watcher = Task { [self] in
            for connection in host.connections { await self.attach(connection) }
            for await event in events {
                switch event {
                case .connected(let connection):
                    // One stream open per new connection; ends with it (or when it is open).
                    Task {
                        // A direct connection beside the relayed one our stream runs on (a hole
                        // punch): move the stream now, before the relayed one closes.
                        if !connection.isRelayed,
                            let current = await core.outboundConnectionID(connection.remotePeer),
                            host.connections.contains(where: { $0.id == current && $0.isRelayed })
                        {
                            await self.move(connection.remotePeer, to: connection)
                        } else {
                            await self.attach(connection)
                        }
                    }
                case .disconnected(let connection):
                    let peer = connection.remotePeer
                    if let remaining = host.connection(to: peer) {
                        // Another connection to the peer remains (both dialled at once): move our
                        // stream there if it was on the one that closed.
                        if await core.removePeer(peer, ifOutboundOn: connection.id) {
                            // As for a new connection: one stream open, bounded by the connection.
                            Task { await self.attach(remaining) }
                        }
                    } else {
                        await core.removePeer(peer)
                    }
                default:
                    break
                }
            }
            await core.stop()
        }
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
        for task in tasks.withLock({ tasks in defer { tasks = [] }; return tasks }) { task.cancel() }
        await core.stop()
    }

    /// Opens our outbound pubsub stream to the peer of `connection`, once per peer.
    func attach(_ connection: Connection) async {
        let peer = connection.remotePeer
        guard await core.claimOutbound(peer) else { return }
        do {
            let stream = try await connection.newStream(protocols: protocols)
            await core.addPeer(
                peer, protocolID: stream.protocolID, outbound: connection.direction == .outbound,
                ip: Self.ipAddress(of: connection.remoteAddress), stream: stream)
            logger.debug("pubsub peer", metadata: ["peer": "\(peer)", "protocol": "\(stream.protocolID)"])
        } catch {
            await core.releaseOutbound(peer)
            logger.debug("peer speaks no pubsub", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Moves our outbound stream to `peer` onto `connection`, keeping what the
    /// router knows of the peer (subscriptions, mesh, score): nothing is lost.
    func move(_ peer: PeerID, to connection: Connection) async {
        do {
            let stream = try await connection.newStream(protocols: protocols)
            guard await core.replaceOutbound(peer, stream: stream, ip: Self.ipAddress(of: connection.remoteAddress)) else {
                // The peer was dropped meanwhile: start afresh.
                stream.reset()
                await attach(connection)
                return
            }
            logger.debug("pubsub peer moved", metadata: ["peer": "\(peer)", "conn": "\(connection.id)"])
        } catch {
            logger.debug("pubsub move failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
        }
    }

    /// Reads length-prefixed RPCs from a peer's inbound stream until it ends.
    ///
    /// A peer has one inbound stream (a newer one replaces the older, as in go
    /// and rust). Between RPCs the stream may idle; once an RPC's first byte
    /// is here, the RPC must arrive whole within `rpcCompletionTimeout` and
    /// its announced length must fit the budget for RPCs in transit.
    func readLoop(_ stream: MuxedStream) async {
        let peer = stream.remotePeer
        guard let slot = await core.adoptInbound(stream) else {
            stream.reset()
            return
        }
        let maxSize = configuration.maxRPCSize
        let ip = Self.ipAddress(of: stream.connection.remoteAddress)
        var reader = StreamReader(stream)
        do {
            while true {
                if let first = try reader.takeBufferedLengthPrefixed(maxLength: maxSize) {
                    try await handle(first, &reader, from: peer, protocolID: stream.protocolID, ip: ip)
                    continue
                }
                if reader.bufferedBytes == 0 {
                    guard try await reader.readMore() else { break }
                    continue
                }
                // Part of an RPC is here: the rest must follow in time and fit the budget.
                await core.rpcStarted(slot, peer: peer)
                var announced = try reader.bufferedLengthPrefix(maxLength: maxSize)
                while announced == nil {
                    guard try await reader.readMore() else {
                        throw StreamReader.ReadError.endOfStream(wanted: reader.bufferedBytes + 1, had: reader.bufferedBytes)
                    }
                    announced = try reader.bufferedLengthPrefix(maxLength: maxSize)
                }
                try await core.reserve(announced ?? 0, slot, peer: peer)
                guard let first = try await reader.readLengthPrefixed(maxLength: maxSize) else { break }
                await core.rpcFinished(slot, peer: peer)
                try await handle(first, &reader, from: peer, protocolID: stream.protocolID, ip: ip)
            }
            await core.releaseInbound(slot, peer: peer)
        } catch {
            // A stream replaced by the peer's newer one ends without blame.
            if await core.releaseInbound(slot, peer: peer) {
                logger.debug("pubsub stream ended", metadata: ["peer": "\(peer)", "error": "\(error)"])
                await core.malformed(from: peer)
            }
            stream.reset()
        }
    }

    /// Hands `first` and the RPCs buffered behind it (those that arrived
    /// together) to the router in one call.
    private func handle(
        _ first: ByteBuffer, _ reader: inout StreamReader, from peer: PeerID, protocolID: String, ip: String?
    ) async throws {
        var frames = [first]
        while frames.count < 64, let more = try reader.takeBufferedLengthPrefixed(maxLength: configuration.maxRPCSize) {
            frames.append(more)
        }
        var rpcs: [PubSubRPC] = []
        var malformed = 0
        for frame in frames {
            if let rpc = try? PubSubCodec.decode(Array(frame.readableBytesView), limits: codecLimits) {
                rpcs.append(rpc)
            } else {
                // A malformed RPC closes nothing; it counts against the sender.
                malformed += 1
            }
        }
        await core.handle(rpcs, malformed: malformed, from: peer, protocolID: protocolID, ip: ip)
    }

    /// The IP address of a connection's remote end, in text (for the IP colocation score).
    static func ipAddress(of address: Multiaddr) -> String? { address.ipAddressText }

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
    public func inboundUsage() async -> (streams: Int, pendingRPCBytes: Int) { await core.inboundUsage() }

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

/// The router and its I/O: subscriber streams and bounded per-peer send queues.
actor PubSubCore {
    private var router: any PubSubRouter
    private let logger: Logger
    private var subscribers: [String: [UUID: AsyncStream<PubSubMessage>.Continuation]] = [:]
    private let eventBroadcaster = EventBroadcaster<PubSubEvent>(bufferingNewest: 4096)
    private var outbound: [PeerID: RPCOutbox] = [:]
    private var claimed: Set<PeerID> = []
    /// The connection each peer's outbound stream runs on.
    private var outboundConnection: [PeerID: UInt64] = [:]
    private(set) var isStopped = false
    private var metrics = PubSubMetrics()
    private let clock = ContinuousClock()
    /// Each peer's inbound stream (one per peer) and the RPC arriving on it.
    private var inbound: [PeerID: InboundStream] = [:]
    /// The inbound stream a newer one replaced, still read until it ends or
    /// its drain time passes (one per peer: a third stream resets it).
    private var draining: [PeerID: InboundStream] = [:]
    private var nextInboundSlot: UInt64 = 0
    /// Bytes reserved by RPCs in transit, all peers together.
    private var pendingRPCBytes = 0
    /// The host's memory budget: RPCs in transit reserve there too (their
    /// bytes left the stream's window when the reader took them).
    private let memory: MemoryBudget?
    private var inboundCounters = PubSubCounters()
    private let connect: @Sendable (PeerID, PeerRecord?, [UInt8]?) -> Void
    private let disconnect: @Sendable (PeerID) -> Void
    private let meshChanged: @Sendable (_ joined: Set<PeerID>, _ left: Set<PeerID>) -> Void
    /// Since when each peer has been graylisted; nil when graylisted peers stay
    /// connected (`graylistDisconnectAfter` nil).
    private var graylist: GraylistTracker<PeerID>?
    /// Peers in any of our meshes at the last heartbeat.
    private var meshMembers: Set<PeerID> = []
    static let meshTag = "pubsub-mesh"

    init(
        router: any PubSubRouter, logger: Logger, memory: MemoryBudget? = nil,
        connect: @escaping @Sendable (PeerID, PeerRecord?, [UInt8]?) -> Void = { _, _, _ in },
        disconnect: @escaping @Sendable (PeerID) -> Void = { _ in },
        meshChanged: @escaping @Sendable (_ joined: Set<PeerID>, _ left: Set<PeerID>) -> Void = { _, _ in }
    ) {
        self.router = router
        self.logger = logger
        self.memory = memory
        self.graylist = router.configuration.graylistDisconnectAfter.map { GraylistTracker(after: $0) }
        self.connect = connect
        self.disconnect = disconnect
        self.meshChanged = meshChanged
    }

    func claimOutbound(_ peer: PeerID) -> Bool {
        guard !isStopped else { return false }
        return claimed.insert(peer).inserted
    }

    func releaseOutbound(_ peer: PeerID) {
        claimed.remove(peer)
    }

    func addPeer(_ peer: PeerID, protocolID: String, outbound isOutbound: Bool, ip: String?, stream: MuxedStream) {
        startOutbound(peer, stream: stream)
        perform(router.addPeer(peer, protocolID: protocolID, outbound: isOutbound, ip: ip))
    }

    /// The connection the peer's outbound stream runs on.
    func outboundConnectionID(_ peer: PeerID) -> UInt64? {
        outboundConnection[peer]
    }

    /// Sends to the peer on `stream` from now on (the router's state of the
    /// peer stays); the old stream is closed once its queue is drained. Our
    /// subscriptions are announced again on the new stream, in case the peer
    /// dropped its state of us when the old connection went.
    func replaceOutbound(_ peer: PeerID, stream: MuxedStream, ip: String?) -> Bool {
        guard let old = outbound[peer] else { return false }
        startOutbound(peer, stream: stream)
        old.finish()
        perform(router.addPeer(peer, protocolID: stream.protocolID, outbound: stream.connection.direction == .outbound, ip: ip))
        return true
    }

    private func startOutbound(_ peer: PeerID, stream: MuxedStream) {
        let queue = RPCOutbox(limit: router.configuration.maxQueuedRPCsPerPeer)
        outbound[peer] = queue
        outboundConnection[peer] = stream.connection.id
        // Ends when the queue finishes (`stop`, a replaced stream or a removed peer) or a write fails.
        Task { [logger] in
            do {
                // Everything queued goes out in one write (each RPC keeps its own length prefix).
                while let batch = await queue.next() {
                    var frames = ByteBuffer()
                    for rpc in batch {
                        frames.writeLengthPrefixed(PubSubCodec.encode(rpc))
                    }
                    let size = frames.readableBytes
                    try await stream.write(frames)
                    self.countSent(size)
                }
                // Finished (stopped, or moved to another stream): the remote reads a clean end.
                await stream.close()
            } catch {
                logger.debug("pubsub send failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                stream.reset()
            }
            // Only if this queue is still the peer's: the peer may have moved to another connection.
            self.removePeer(peer, ifQueue: queue)
        }
    }

    func removePeer(_ peer: PeerID, ifQueue queue: RPCOutbox) {
        guard outbound[peer] === queue else { return }
        removePeer(peer)
    }

    /// Removes the peer if its outbound stream runs on connection `id`; whether it did.
    func removePeer(_ peer: PeerID, ifOutboundOn id: UInt64) -> Bool {
        guard outboundConnection[peer] == id else { return false }
        removePeer(peer)
        return true
    }

    func removePeer(_ peer: PeerID) {
        claimed.remove(peer)
        outboundConnection.removeValue(forKey: peer)
        outbound.removeValue(forKey: peer)?.finish()
        perform(router.removePeer(peer, now: clock.now))
    }

    func handle(_ rpcs: [PubSubRPC], malformed: Int, from peer: PeerID, protocolID: String, ip: String?) {
        router.notePeer(peer, protocolID: protocolID, ip: ip)
        for _ in 0..<malformed { router.malformedRPC(from: peer) }
        let now = clock.now
        for rpc in rpcs {
            let actions = router.handle(rpc, from: peer, now: now)
            logger.trace(
                "rpc", metadata: ["peer": "\(peer)", "messages": "\(rpc.messages.count)", "actions": "\(actions.count)"])
            perform(actions)
        }
        metrics.follow(router.counters)
    }

    /// A peer's inbound stream and its RPC in transit, if any.
    struct InboundStream {
        let slot: UInt64
        let stream: MuxedStream
        /// When the RPC in transit started arriving.
        var rpcStarted: ContinuousClock.Instant?
        /// Bytes the RPC in transit announced (reserved from the shared budget).
        var reserved = 0
        var timedOut = false
        /// Set once a newer stream replaced this one: read until then.
        var drainUntil: ContinuousClock.Instant?
    }

    /// Makes `stream` its peer's inbound stream; the one it replaces drains
    /// (the peer may have sent on it just before moving to another connection),
    /// and one already draining is reset. Returns the stream's slot, or nil once stopped.
    func adoptInbound(_ stream: MuxedStream) -> UInt64? {
        guard !isStopped else { return nil }
        let peer = stream.remotePeer
        nextInboundSlot += 1
        if var previous = inbound[peer] {
            if let older = draining.removeValue(forKey: peer) {
                unreserve(older.reserved, peer: peer)
                older.stream.reset()
            }
            previous.drainUntil = clock.now + router.configuration.replacedStreamDrainTime
            draining[peer] = previous
            inboundCounters.replacedInboundStreams += 1
            logger.debug("newer inbound pubsub stream replaces the older", metadata: ["peer": "\(peer)"])
        }
        inbound[peer] = InboundStream(slot: nextInboundSlot, stream: stream)
        expireDrainedStreams()
        return nextInboundSlot
    }

    /// The stream of `slot` ended; true if it was still the peer's current
    /// one (not replaced, nor draining).
    @discardableResult
    func releaseInbound(_ slot: UInt64, peer: PeerID) -> Bool {
        if let entry = inbound[peer], entry.slot == slot {
            unreserve(entry.reserved, peer: peer)
            inbound[peer] = nil
            return true
        }
        if let entry = draining[peer], entry.slot == slot {
            unreserve(entry.reserved, peer: peer)
            draining[peer] = nil
        }
        return false
    }

    /// Changes the entry of `slot`, current or draining (nothing if it is gone).
    private func updateInbound<Failure: Error>(
        _ slot: UInt64, peer: PeerID, _ change: (inout InboundStream) throws(Failure) -> Void
    ) throws(Failure) {
        if var entry = inbound[peer], entry.slot == slot {
            try change(&entry)
            inbound[peer] = entry
        } else if var entry = draining[peer], entry.slot == slot {
            try change(&entry)
            draining[peer] = entry
        }
    }

    func rpcStarted(_ slot: UInt64, peer: PeerID) {
        let now = clock.now
        updateInbound(slot, peer: peer) { $0.rpcStarted = now }
    }

    /// Reserves an arriving RPC's announced length from the shared budget; throws when it does not fit.
    func reserve(_ bytes: Int, _ slot: UInt64, peer: PeerID) throws(PubSubError) {
        try updateInbound(slot, peer: peer) { (entry) throws(PubSubError) in try reserve(bytes, in: &entry, peer: peer) }
    }

    private func reserve(_ bytes: Int, in entry: inout InboundStream, peer: PeerID) throws(PubSubError) {
        let available = router.configuration.maxPendingRPCBytes - pendingRPCBytes
        guard bytes <= available else {
            inboundCounters.refusedOverRPCBudget += 1
            throw .rpcBudgetExceeded(announced: bytes, available: available)
        }
        guard memory?.reserve(bytes, for: peer, priority: MemoryBudget.always) == nil else {
            // The host's memory budget has no room for it (for this peer or in all).
            inboundCounters.refusedOverRPCBudget += 1
            throw .rpcBudgetExceeded(announced: bytes, available: 0)
        }
        pendingRPCBytes += bytes
        entry.reserved = bytes
    }

    /// Gives back what an RPC in transit reserved.
    private func unreserve(_ bytes: Int, peer: PeerID) {
        pendingRPCBytes -= bytes
        memory?.release(bytes, for: peer)
    }

    func rpcFinished(_ slot: UInt64, peer: PeerID) {
        updateInbound(slot, peer: peer) { entry in
            unreserve(entry.reserved, peer: peer)
            entry.reserved = 0
            entry.rpcStarted = nil
        }
    }

    /// Resets the streams whose RPC in transit is overdue (their reader then ends).
    private func expireIncompleteRPCs() {
        let cutoff = clock.now - router.configuration.rpcCompletionTimeout
        func overdue(_ entry: InboundStream) -> Bool {
            guard !entry.timedOut, let started = entry.rpcStarted else { return false }
            return started < cutoff
        }
        for (peer, var entry) in inbound where overdue(entry) {
            entry.timedOut = true
            inbound[peer] = entry
            inboundCounters.incompleteRPCTimeouts += 1
            logger.debug("pubsub RPC not finished in time", metadata: ["peer": "\(peer)"])
            entry.stream.reset()
        }
        for (peer, var entry) in draining where overdue(entry) {
            entry.timedOut = true
            draining[peer] = entry
            inboundCounters.incompleteRPCTimeouts += 1
            entry.stream.reset()
        }
        expireDrainedStreams()
    }

    /// Resets the replaced streams whose drain time is over (their reader then ends).
    private func expireDrainedStreams() {
        let now = clock.now
        for (peer, entry) in draining where (entry.drainUntil ?? now) <= now {
            unreserve(entry.reserved, peer: peer)
            draining[peer] = nil
            entry.stream.reset()
        }
    }

    /// Disconnects peers graylisted for longer than `graylistDisconnectAfter`.
    private func disconnectGraylisted() {
        guard var tracker = graylist else { return }
        let now = clock.now
        let threshold = router.configuration.scoreThresholds.graylistThreshold
        let router = self.router
        let gone = tracker.check(router.knownPeers, now: now) { router.score(of: $0, now: now) < threshold }
        graylist = tracker
        for peer in gone {
            inboundCounters.graylistDisconnects += 1
            logger.debug("disconnecting graylisted peer", metadata: ["peer": "\(peer)"])
            disconnect(peer)
        }
    }

    /// Bytes reserved by RPCs in transit, and the inbound streams (for tests and status).
    func inboundUsage() -> (streams: Int, pendingRPCBytes: Int) { (inbound.count + draining.count, pendingRPCBytes) }

    func countSent(_ bytes: Int) {
        router.countSent(bytes)
    }

    func malformed(from peer: PeerID) {
        router.malformedRPC(from: peer)
    }

    func heartbeat() {
        guard !isStopped else { return }
        expireIncompleteRPCs()
        let now = clock.now
        perform(router.heartbeat(now: now))
        disconnectGraylisted()
        let members = router.meshMembers
        if members != meshMembers {
            meshChanged(members.subtracting(meshMembers), meshMembers.subtracting(members))
            meshMembers = members
        }
        metrics.follow(router.counters)
        metrics.heartbeat(
            mesh: Dictionary(uniqueKeysWithValues: router.subscriptions.map { ($0, router.meshPeers($0).count) }),
            graylisted: router.graylistedPeerCount(now: now))
    }

    func subscribe(_ topic: String) -> AsyncStream<PubSubMessage> {
        let (stream, continuation) = AsyncStream.makeStream(
            of: PubSubMessage.self, bufferingPolicy: .bufferingNewest(4096))
        let id = UUID()
        subscribers[topic, default: [:]][id] = continuation
        continuation.onTermination = { _ in
            // Only hops onto the actor to forget the subscriber.
            Task { await self.dropSubscriber(topic, id) }
        }
        perform(router.subscribe(topic, now: clock.now))
        return stream
    }

    private func dropSubscriber(_ topic: String, _ id: UUID) {
        subscribers[topic]?[id] = nil
    }

    func events() -> AsyncStream<PubSubEvent> { eventBroadcaster.subscribe() }

    func unsubscribe(_ topic: String) {
        for continuation in subscribers.removeValue(forKey: topic)?.values ?? [:].values { continuation.finish() }
        perform(router.unsubscribe(topic, now: clock.now))
    }

    func publish(_ topic: String, data: [UInt8]) throws -> Int {
        try publishMessage(topic, data: data).sentTo
    }

    func publishMessage(_ topic: String, data: [UInt8]) throws -> (message: PubSubMessage, sentTo: Int) {
        guard !isStopped else { throw PubSubError.stopped }
        let (actions, message) = try router.publishMessage(topic: topic, data: data, now: clock.now)
        perform(actions)
        let sentTo = actions.reduce(0) { count, action in if case .send = action { count + 1 } else { count } }
        return (message, sentTo)
    }

    func peers(in topic: String) -> [PeerID] { router.peers(in: topic) }
    func mesh(_ topic: String) -> [PeerID] { router.meshPeers(topic) }
    func counters() -> PubSubCounters {
        var counters = router.counters
        counters.replacedInboundStreams = inboundCounters.replacedInboundStreams
        counters.incompleteRPCTimeouts = inboundCounters.incompleteRPCTimeouts
        counters.refusedOverRPCBudget = inboundCounters.refusedOverRPCBudget
        counters.graylistDisconnects = inboundCounters.graylistDisconnects
        return counters
    }
    func score(of peer: PeerID) -> Double { router.score(of: peer, now: clock.now) }

    func pubsubPeers() -> [PeerID: String] {
        var result: [PeerID: String] = [:]
        for peer in router.knownPeers { result[peer] = router.protocolOf(peer) }
        return result
    }

    func setValidator(topic: String, _ validator: @escaping @Sendable (PubSubMessage) -> ValidationResult) {
        router.setValidator(topic: topic, validator)
    }

    func stop() {
        isStopped = true
        for continuation in subscribers.values.flatMap(\.values) { continuation.finish() }
        subscribers = [:]
        eventBroadcaster.finish()
        for queue in outbound.values { queue.finish() }
        outbound = [:]
        for entry in Array(inbound.values) + Array(draining.values) {
            unreserve(entry.reserved, peer: entry.stream.remotePeer)
            entry.stream.reset()
        }
        inbound = [:]
        draining = [:]
    }

    private func perform(_ actions: [RouterAction]) {
        for action in actions {
            switch action {
            case .send(let peer, let rpc):
                guard let queue = outbound[peer] else { continue }
                if !queue.enqueue(rpc) { router.countDroppedOutbound() }
            case .deliver(let message):
                metrics.deliveredMessage()
                for continuation in subscribers[message.topic]?.values ?? [:].values {
                    continuation.yield(message)
                }
            case .connect(let peer, let record, let envelope):
                connect(peer, record, envelope)
            case .event(let event):
                eventBroadcaster.yield(event)
            }
        }
    }
}
