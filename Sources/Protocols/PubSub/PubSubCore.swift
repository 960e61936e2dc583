import EventBroadcast
import Foundation
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

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
    /// The inbound streams and their RPCs in transit (the read loops account there
    /// themselves; the heartbeat expires what is overdue).
    private let inbound: InboundRPCBudget
    private var graylistDisconnects = 0
    private let connect: @Sendable (PeerID, PeerRecord?, [UInt8]?) -> Void
    private let disconnect: @Sendable (PeerID) -> Void
    private let meshChanged: @Sendable (_ joined: Set<PeerID>, _ left: Set<PeerID>) -> Void
    /// Since when each peer has been graylisted; nil when graylisted peers stay
    /// connected (`graylistDisconnectAfter` nil).
    private var graylist: GraylistTracker<PeerID>?
    /// Peers in any of our meshes at the last heartbeat.
    private var meshMembers: Set<PeerID> = []
    static let meshTag = "pubsub-mesh"
    /// Counted by the senders, off the actor.
    let sent = OutboundCounters()

    init(
        router: any PubSubRouter, logger: Logger, inbound: InboundRPCBudget,
        connect: @escaping @Sendable (PeerID, PeerRecord?, [UInt8]?) -> Void = { _, _, _ in },
        disconnect: @escaping @Sendable (PeerID) -> Void = { _ in },
        meshChanged: @escaping @Sendable (_ joined: Set<PeerID>, _ left: Set<PeerID>) -> Void = { _, _ in }
    ) {
        self.router = router
        self.logger = logger
        self.inbound = inbound
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
        Task { [logger, sent] in await Self.send(queue, to: stream, peer: peer, core: self, counters: sent, logger: logger) }
    }

    /// Writes what `queue` holds to `stream` until the queue finishes or a
    /// write fails, then removes the peer if the queue is still its own. Runs
    /// off the actor: the RPCs are encoded here, once each however many peers
    /// they go to.
    private nonisolated static func send(
        _ queue: RPCOutbox, to stream: MuxedStream, peer: PeerID, core: PubSubCore, counters: OutboundCounters,
        logger: Logger
    ) async {
        do {
            while let batch = await queue.next() {
                // Everything queued goes out in one write (each RPC keeps its own length prefix).
                var frames = batch[0].lengthPrefixed
                for rpc in batch.dropFirst() {
                    var frame = rpc.lengthPrefixed
                    frames.writeBuffer(&frame)
                }
                let size = frames.readableBytes
                try await stream.write(frames)
                counters.bytesSent.add(size, ordering: .relaxed)
            }
            // Finished (stopped, or moved to another stream): the remote reads a clean end.
            await stream.close()
        } catch {
            logger.debug("pubsub send failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            stream.reset()
        }
        // Only if this queue is still the peer's: the peer may have moved to another connection.
        await core.removePeer(peer, ifQueue: queue)
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

    /// Disconnects peers graylisted for longer than `graylistDisconnectAfter`.
    private func disconnectGraylisted() {
        guard var tracker = graylist else { return }
        let now = clock.now
        let threshold = router.configuration.scoreThresholds.graylistThreshold
        let router = self.router
        let gone = tracker.check(router.knownPeers, now: now) { router.score(of: $0, now: now) < threshold }
        graylist = tracker
        for peer in gone {
            graylistDisconnects += 1
            logger.debug("disconnecting graylisted peer", metadata: ["peer": "\(peer)"])
            disconnect(peer)
        }
    }

    /// Bytes reserved by RPCs in transit, and the inbound streams (for tests and status).

    func malformed(from peer: PeerID) {
        router.malformedRPC(from: peer)
    }

    func heartbeat() {
        guard !isStopped else { return }
        for peer in inbound.expire() {
            logger.debug("pubsub RPC not finished in time", metadata: ["peer": "\(peer)"])
        }
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
        let inboundCounts = inbound.counts
        counters.replacedInboundStreams = inboundCounts.replaced
        counters.incompleteRPCTimeouts = inboundCounts.incompleteTimeouts
        counters.refusedOverRPCBudget = inboundCounts.refusedOverBudget
        counters.graylistDisconnects = graylistDisconnects
        counters.bytesSent = sent.bytesSent.load(ordering: .relaxed)
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
        inbound.stop()
    }

    private func perform(_ actions: [RouterAction]) {
        var previous: OutboundRPC?
        for action in actions {
            switch action {
            case .send(let peer, let rpc):
                guard let queue = outbound[peer] else { continue }
                // The router sends one RPC value to each peer a message goes to, one
                // after the other: those peers share one `OutboundRPC`, encoded once.
                // (Equal arrays sharing storage compare in constant time.)
                let outgoing: OutboundRPC
                if let previous, previous.rpc == rpc {
                    outgoing = previous
                } else {
                    outgoing = OutboundRPC(rpc, counters: sent)
                    previous = outgoing
                }
                if !queue.enqueue(outgoing) { router.countDroppedOutbound() }
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
