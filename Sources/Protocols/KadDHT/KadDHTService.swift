import Crypto
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

/// Settings of the DHT service.
public struct KadDHTConfiguration: Sendable {
    /// A client asks only; a server also answers requests (and is announced as a DHT peer).
    public enum Mode: Sendable { case client, server }

    /// Client mode (the default) asks others and serves nobody: it does not
    /// register the protocol, so identify does not advertise it.
    public var mode: Mode = .client
    /// Requests in flight per lookup (go's Amino DHT uses 10).
    public var alpha = 3
    public var bucketSize = 20
    public var requestTimeout: Duration = .seconds(10)
    /// Buckets not looked into for this long get a lookup of a random key in them.
    public var refreshInterval: Duration = .seconds(600)
    /// How often the service checks for an empty table and due work.
    public var maintenanceInterval: Duration = .seconds(30)
    public var republishInterval: Duration = ProviderStore.republishInterval
    public var validator: NamespacedValidator = .standard

    public init(mode: Mode = .client) {
        self.mode = mode
    }
}

/// Errors of the DHT service.
public enum KadDHTError: Error, CustomStringConvertible, Sendable {
    case timeout(PeerID)
    case noResponse(PeerID)
    case badResponse(PeerID, DHTMessageError)
    case invalidRecord(RecordError)
    case noPeers
    /// Every bootstrap address failed; each failure says why.
    case bootstrapFailed([String])
    /// Every peer asked to store the record refused it or failed; each says why.
    case putRefused(key: String, [PutAttempt])

    public var description: String {
        switch self {
        case .timeout(let peer): return "DHT request to \(peer) timed out"
        case .noResponse(let peer): return "\(peer) closed the DHT stream without a response"
        case .badResponse(let peer, let error): return "bad DHT response from \(peer): \(error)"
        case .invalidRecord(let error): return "invalid record: \(error)"
        case .noPeers: return "no DHT peers known (bootstrap first)"
        case .bootstrapFailed(let attempts):
            return "no bootstrap peer reachable: \(attempts.joined(separator: "; "))"
        case .putRefused(let key, let attempts):
            let refused = attempts.filter(\.refused).count
            let what = refused == attempts.count ? "the DHT peers refused" : "no DHT peer stored"
            return "\(what) \(key) (\(refused) of \(attempts.count) refused): \(attempts.map(\.description).joined(separator: "; "))"
        }
    }
}

/// How one peer answered a PUT_VALUE that it did not store.
public struct PutAttempt: Sendable, CustomStringConvertible {
    public let peer: PeerID
    /// The peer refused the record (the request reached it); false when it could not be asked.
    public let refused: Bool
    public let reason: String

    public var description: String { "\(peer): \(reason)" }
}

/// `/ipfs/kad/1.0.0` on a host: the routing table, lookups, records and
/// providers, with the periodic work (bucket refresh, provider republish,
/// re-bootstrap when the table empties) owned here and ended by `close()`.
public final class KadDHT: Sendable {
    public static let protocolID = "/ipfs/kad/1.0.0"
    /// Time as the DHT keeps it: expiries and answers are measured on the continuous clock.
    public typealias Instant = ContinuousClock.Instant

    public let host: Libp2pHost
    public let configuration: KadDHTConfiguration
    private let logger: Logger

    private struct State {
        var table: RoutingTable
        var records: RecordStore
        var providers = ProviderStore()
        var bootstrapPeers: [Multiaddr] = []
        /// Keys we provide, and when we last announced each.
        var provided: [[UInt8]: Instant] = [:]
        var tasks: [Task<Void, Never>] = []
        var closed = false
        /// Client or server, now (starts as the configuration says; `setMode` changes it).
        var mode: KadDHTConfiguration.Mode
        /// Peers identify announced as DHT servers, being asked before they enter the table.
        var admission = AdmissionChecks()
    }
    private let state: Mutex<State>

    public init(host: Libp2pHost, configuration: KadDHTConfiguration = .init(), logger: Logger = Logger(label: "p2p.kad")) {
        self.host = host
        self.configuration = configuration
        self.logger = logger
        self.state = Mutex(
            State(
                table: RoutingTable(localPeer: host.localPeer, bucketSize: configuration.bucketSize),
                records: RecordStore(validator: configuration.validator), mode: configuration.mode))
    }

    /// Serves the protocol in server mode, and starts learning DHT servers
    /// from identify and the periodic work.
    public func start() {
        if mode == .server { serveProtocol() }
        let events = host.events()
        // This and `maintenance` are the DHT's: `close()` cancels and awaits them.
        let watcher = Task { [self] in
            // The checks are children of this task: `close()` cancelling it ends them.
            await withDiscardingTaskGroup { group in
                for await event in events {
                    // Identify says the peer serves the protocol: it enters once it answers a
                    // request (go-libp2p-kad-dht's lookup check), since a peer may advertise
                    // the protocol and never answer, and each request to it costs a lookup a timeout.
                    guard case .peerUpdated(let peer) = event,
                        host.peerStore.info(peer)?.protocols.contains(Self.protocolID) ?? false,
                        state.withLock({ $0.admission.begin(peer, known: $0.table.contains(peer)) })
                    else { continue }
                    group.addTask { [self] in
                        // Goes on with the peers that waited for a free check.
                        var next: PeerID? = peer
                        while let peer = next, !Task.isCancelled { next = await checkBeforeAdmitting(peer) }
                    }
                }
            }
        }
        let maintenance = Task { [self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: configuration.maintenanceInterval)
                guard !Task.isCancelled else { break }
                await maintain()
            }
        }
        let closed = state.withLock { state in
            state.tasks += [watcher, maintenance]
            return state.closed
        }
        if closed { watcher.cancel(); maintenance.cancel() }
    }

    /// Client or server, now.
    public var mode: KadDHTConfiguration.Mode { state.withLock { $0.mode } }

    /// Becomes a server (serving and advertising the protocol, as when AutoNAT
    /// finds us publicly reachable) or a client again. Identify pushes the
    /// change to connected peers (the host's protocol list changed).
    public func setMode(_ mode: KadDHTConfiguration.Mode) {
        let changed = state.withLock { state -> Bool in
            guard state.mode != mode, !state.closed else { return false }
            state.mode = mode
            return true
        }
        guard changed else { return }
        if mode == .server { serveProtocol() } else { host.removeStreamHandler(Self.protocolID) }
        logger.info("dht mode changed", metadata: ["mode": "\(mode)"])
    }

    private func serveProtocol() {
        host.setStreamHandler(Self.protocolID) { [self] stream in await self.serve(stream) }
    }

    /// Stops the periodic work and serving.
    public func close() async {
        let tasks = state.withLock { state in
            state.closed = true
            defer { state.tasks = [] }
            return state.tasks
        }
        if mode == .server { host.removeStreamHandler(Self.protocolID) }
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }

    /// The value we hold ourselves under `key` (no lookup).
    public func storedValue(key: [UInt8]) -> [UInt8]? {
        state.withLock { $0.records.get(key, now: .now)?.value }
    }

    /// The providers of `key` we hold ourselves (no lookup).
    public func storedProviders(of key: [UInt8]) -> [DHTPeer] {
        state.withLock { $0.providers.providers(of: key, now: .now) }
    }

    /// Provider records (and their bytes) we hold from peers at `address`'s network (see `ProviderSource`).
    public func heldProviders(from address: Multiaddr) -> (count: Int, bytes: Int) {
        state.withLock { $0.providers.held(bySource: ProviderSource(address: address)) }
    }

    public var routingTableSize: Int { state.withLock { $0.table.count } }
    public var routingTablePeers: [PeerID] { state.withLock { $0.table.peers } }

    // MARK: Serving

    private func serve(_ stream: MuxedStream) async {
        var reader = StreamReader(stream)
        do {
            while let body = try await reader.readLengthPrefixed(maxLength: DHTMessage.maxSize) {
                let request = try DHTMessage(decoding: body.readableBytesView)
                let now = Instant.now
                let store = host.peerStore
                let reply = state.withLock { state in
                    DHTServer.handle(
                        request, from: stream.remotePeer, at: stream.connection.remoteAddress, records: &state.records,
                        providers: &state.providers, table: state.table, now: now,
                        addresses: { store.info($0)?.addresses ?? [] })
                }
                switch reply {
                case .respond(let response): try await stream.write(response.framed())
                case .none: break
                case .reject(let why):
                    logger.debug("DHT request refused", metadata: ["peer": "\(stream.remotePeer)", "why": "\(why)"])
                    stream.reset()
                    return
                }
            }
        } catch {
            logger.debug("DHT stream failed", metadata: ["peer": "\(stream.remotePeer)", "error": "\(error)"])
            stream.reset()
        }
    }

    // MARK: Requests

    /// Sends one request on a new stream and reads the response (none for ADD_PROVIDER).
    public func send(_ request: DHTMessage, to peer: PeerID) async throws -> DHTMessage? {
        do {
            return try await withTimeout(configuration.requestTimeout, "DHT request to \(peer)") {
                [host] () async throws -> DHTMessage? in
                let stream = try await host.newStream(to: peer, protocols: [Self.protocolID])
                do {
                    try await stream.write(request.framed())
                    guard request.type != .addProvider else {
                        await stream.close()
                        return nil
                    }
                    var reader = StreamReader(stream)
                    guard let body = try await reader.readLengthPrefixed(maxLength: DHTMessage.maxSize) else {
                        throw KadDHTError.noResponse(peer)
                    }
                    let response: DHTMessage
                    do throws(DHTMessageError) {
                        response = try DHTMessage(decoding: body.readableBytesView)
                    } catch {
                        throw KadDHTError.badResponse(peer, error)
                    }
                    await stream.close()
                    // Never dialled: another machine's loopback, or a far network's private addresses.
                    return response.dialable(fromPeerAt: stream.connection.remoteAddress)
                } catch {
                    stream.reset()
                    throw error
                }
            }
        } catch is TimeoutError {
            throw KadDHTError.timeout(peer)
        }
    }

    /// Learns the peers of an answer: their addresses go into the peer store.
    private func learn(_ peers: [DHTPeer]) {
        for peer in peers where peer.id != host.localPeer && !peer.addresses.isEmpty {
            host.peerStore.addAddresses(peer.addresses, for: peer.id)
        }
    }

    /// One request of a lookup and how it went. A struct, not a tuple: Swift 6.3.1's
    /// release builds corrupted a task group's `(PeerID, Result<...>)` results.
    struct RequestOutcome: Sendable {
        enum Answer: Sendable {
            case response(DHTMessage?)
            case failed(any Error)
        }
        let peer: PeerID
        let answer: Answer
    }

    /// Runs an iterative lookup toward `key` sending `request` to each peer;
    /// `onResponse` sees every answer and returns true to stop early.
    @discardableResult
    func lookup(
        key: [UInt8], request: DHTMessage, extraSeeds: [PeerID] = [],
        onResponse: (PeerID, DHTMessage) -> Bool = { _, _ in false }
    ) async -> Lookup {
        let target = KadKey(hashing: key)
        let seeds = state.withLock { $0.table.closest(to: target, count: configuration.bucketSize) } + extraSeeds
        var lookup = Lookup(
            target: target, localPeer: host.localPeer, seeds: seeds, alpha: configuration.alpha,
            k: configuration.bucketSize, requestTimeout: configuration.requestTimeout)
        await withTaskGroup(of: RequestOutcome.self) { group in
            var stop = false
            while !stop {
                for peer in lookup.nextRequests(now: .now) {
                    group.addTask { [self] in
                        do { return RequestOutcome(peer: peer, answer: .response(try await send(request, to: peer))) } catch {
                            return RequestOutcome(peer: peer, answer: .failed(error))
                        }
                    }
                }
                guard let outcome = await group.next() else { break }
                let peer = outcome.peer
                let now = Instant.now
                switch outcome.answer {
                case .response(let response?):
                    learn(response.closerPeers)
                    state.withLock { _ = $0.table.peerResponded(peer, now: now) }
                    lookup.received(from: peer, closerPeers: response.closerPeers.map(\.id))
                    if onResponse(peer, response) { stop = true }
                case .response(nil), .failed:
                    if case .failed(let error) = outcome.answer {
                        logger.debug("DHT request failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
                    }
                    state.withLock { _ = $0.table.peerFailed(peer, now: now) }
                    lookup.failed(peer)
                }
                for peer in lookup.expire(now: now) { state.withLock { _ = $0.table.peerFailed(peer, now: now) } }
                if lookup.isFinished { stop = true }
            }
            group.cancelAll()
        }
        let now = Instant.now
        state.withLock { state in
            state.table.markRefreshed(bucket: state.table.bucketIndex(target), now: now)
        }
        return lookup
    }

    /// Asks `peer`, which identify says serves the protocol, for the peers closest
    /// to us; it enters the routing table only if it answers. Returns the next peer to check.
    private func checkBeforeAdmitting(_ peer: PeerID) async -> PeerID? {
        let answered: Bool
        do {
            answered = try await send(DHTMessage(type: .findNode, key: host.localPeer.bytes), to: peer) != nil
        } catch {
            logger.debug("DHT peer did not answer its admission check", metadata: ["peer": "\(peer)", "error": "\(error)"])
            answered = false
        }
        let now = Instant.now
        return state.withLock { state in
            if answered { state.table.peerResponded(peer, now: now) }
            var next = state.admission.end(peer)
            // One that entered meanwhile (it answered a lookup) needs no check.
            while let peer = next, state.table.contains(peer) { next = state.admission.end(peer) }
            return next
        }
    }

    // MARK: Public operations

    /// Connects to the bootstrap peers, looks ourselves up and fills the table;
    /// done again by the service whenever the table runs empty. Returns the table size.
    @discardableResult
    public func bootstrap(peers: [Multiaddr]) async throws -> Int {
        state.withLock { $0.bootstrapPeers = peers }
        return try await rebootstrap()
    }

    private func rebootstrap() async throws -> Int {
        let addresses = state.withLock { $0.bootstrapPeers }
        var reached: [PeerID] = []
        var attempts: [String] = []
        // One after the other: there are few, and each dial is bounded by the transport's timeouts.
        for address in addresses {
            do {
                reached.append(try await host.connect(address).remotePeer)
            } catch {
                attempts.append("\(address): \(ErrorText.reason(of: error))")
            }
        }
        guard !reached.isEmpty || addresses.isEmpty else { throw KadDHTError.bootstrapFailed(attempts) }
        await lookup(key: host.localPeer.bytes, request: DHTMessage(type: .findNode, key: host.localPeer.bytes), extraSeeds: reached)
        await refreshBuckets(force: true)
        return routingTableSize
    }

    /// What a FIND_NODE lookup found and what it cost.
    public struct LookupResult: Sendable {
        /// The closest peers that answered, closest first.
        public var peers: [PeerID]
        public var requests: Int
        public var failures: Int
    }

    /// The closest peers to `key` that answered (FIND_NODE lookup), closest first.
    public func closestPeers(to key: [UInt8]) async -> [PeerID] {
        await lookupClosest(to: key).peers
    }

    /// A FIND_NODE lookup of `key` with its cost (for measurements).
    public func lookupClosest(to key: [UInt8]) async -> LookupResult {
        let lookup = await lookup(key: key, request: DHTMessage(type: .findNode, key: key))
        return LookupResult(peers: lookup.closestAnswered, requests: lookup.requestsSent, failures: lookup.failures)
    }

    /// The addresses of `peer` found through the DHT (nil if nobody knows it).
    public func findPeer(_ peer: PeerID) async -> [Multiaddr]? {
        var found: [Multiaddr] = []
        await lookup(key: peer.bytes, request: DHTMessage(type: .findNode, key: peer.bytes)) { _, response in
            if let match = response.closerPeers.first(where: { $0.id == peer && !$0.addresses.isEmpty }) {
                found = match.addresses
                return true
            }
            return false
        }
        if found.isEmpty, host.connection(to: peer) != nil { found = host.peerStore.info(peer)?.addresses ?? [] }
        return found.isEmpty ? nil : found
    }

    /// Announces us as a provider of `key` to the closest peers (and keeps
    /// republishing it); returns how many peers took the announcement.
    @discardableResult
    public func provide(_ key: [UInt8]) async -> Int {
        let now = Instant.now
        // As many addresses as a provider record may carry (a server refuses more).
        let limits = state.withLock { $0.providers.limits }
        @Sendable func record(_ addresses: [Multiaddr]) -> DHTPeer {
            DHTPeer(id: host.localPeer, addresses: limits.carried(addresses))
        }
        let me = DHTPeer(id: host.localPeer, addresses: host.listenAddresses)
        state.withLock { state in
            state.provided[key] = now
            do { try state.providers.add(record(me.addresses), for: key, now: now) } catch {
                logger.debug("own provider record not kept", metadata: ["error": "\(error)"])
            }
        }
        let closest = await closestPeers(to: key)
        return await withTaskGroup(of: Bool.self) { group in
            for peer in closest {
                group.addTask { [self] in
                    do {
                        // Our addresses that this peer's askers can use (see `DHTServer.handle`):
                        // the addresses it can dial itself. With none, it falls back to what it knows of us.
                        let seenAt = try await host.connect(to: peer).remoteAddress
                        let announced = record(me.dialable(byPeerAt: seenAt)?.addresses ?? [])
                        _ = try await send(DHTMessage(type: .addProvider, key: key, providerPeers: [announced]), to: peer)
                        return true
                    } catch {
                        return false
                    }
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
    }

    /// Stops republishing `key` (its records elsewhere expire within 48 h).
    public func stopProviding(_ key: [UInt8]) {
        state.withLock { _ = $0.provided.removeValue(forKey: key) }
    }

    /// Providers of `key` (ours included when we provide it), up to `limit`.
    public func findProviders(_ key: [UInt8], limit: Int = 20) async -> [DHTPeer] {
        var found = state.withLock { $0.providers.providers(of: key, now: .now) }
        await lookup(key: key, request: DHTMessage(type: .getProviders, key: key)) { _, response in
            for provider in response.providerPeers {
                guard let known = found.firstIndex(where: { $0.id == provider.id }) else {
                    found.append(provider)
                    continue
                }
                // Every address a provider is known at (ours, too: another process with our key shows there).
                let new = provider.addresses.filter { !found[known].addresses.contains($0) }
                found[known].addresses += new.prefix(max(0, DHTMessage.maxAddressesPerPeer - found[known].addresses.count))
            }
            return found.count >= limit
        }
        learn(found)
        return Array(found.prefix(limit))
    }

    /// Stores a record here and at the closest peers; returns how many accepted
    /// it. Throws `invalidRecord` when our validator refuses it (nothing is
    /// sent: peers apply the same rules), `noPeers` when there is nobody to
    /// ask, and `putRefused` with each peer's answer when none stored it.
    @discardableResult
    public func putValue(key: [UInt8], value: [UInt8]) async throws -> Int {
        let record = DHTRecord(key: key, value: value)
        do {
            try state.withLock { state throws(RecordError) in try state.records.put(record, now: .now) }
        } catch .notBetter {
            // Ours is not the best known locally; still offer it to the network.
        } catch {
            throw KadDHTError.invalidRecord(error)
        }
        let closest = await closestPeers(to: key)
        guard !closest.isEmpty else { throw KadDHTError.noPeers }
        let request = DHTMessage(type: .putValue, key: key, record: record)
        let refusals = await withTaskGroup(of: PutAttempt?.self) { group in
            for peer in closest {
                group.addTask { [self] in
                    do {
                        // An answer (the spec's is the request itself) means stored.
                        _ = try await send(request, to: peer)
                        return nil
                    } catch let error as KadDHTError {
                        guard case .noResponse = error else {
                            return PutAttempt(peer: peer, refused: false, reason: "\(error)")
                        }
                        return Self.refusedByReset(peer)
                    } catch TransportError.streamReset {
                        return Self.refusedByReset(peer)
                    } catch {
                        return PutAttempt(peer: peer, refused: false, reason: "\(error)")
                    }
                }
            }
            return await group.reduce(into: [PutAttempt]()) { if let refusal = $1 { $0.append(refusal) } }
        }
        let stored = closest.count - refusals.count
        guard stored > 0 else {
            throw KadDHTError.putRefused(key: String(decoding: key, as: UTF8.self), refusals)
        }
        return stored
    }

    /// A server that refuses a record resets the stream without a word (the spec's rule on errors).
    private static func refusedByReset(_ peer: PeerID) -> PutAttempt {
        PutAttempt(peer: peer, refused: true, reason: "reset the stream instead of storing it (its validator refused the record)")
    }

    /// The best valid value of `key` found here and at the closest peers.
    public func getValue(key: [UInt8]) async -> [UInt8]? {
        let validator = configuration.validator
        var values: [[UInt8]] = state.withLock { $0.records.get(key, now: .now).map { [$0.value] } ?? [] }
        await lookup(key: key, request: DHTMessage(type: .getValue, key: key)) { _, response in
            if let record = response.record, record.key == key, (try? validator.validate(record)) != nil,
                !values.contains(record.value)
            {
                values.append(record.value)
            }
            return false
        }
        guard !values.isEmpty, let best = try? validator.select(key: key, values: values) else { return nil }
        return values[best]
    }

    // MARK: Periodic work

    private func maintain() async {
        let (empty, hasBootstrap) = state.withLock { ($0.table.isEmpty, !$0.bootstrapPeers.isEmpty) }
        if empty && hasBootstrap {
            logger.debug("routing table empty: bootstrapping again")
            _ = try? await rebootstrap()
        } else {
            await refreshBuckets(force: false)
        }
        let now = Instant.now
        let due = state.withLock { state -> [[UInt8]] in
            state.records.expire(now: now)
            state.providers.expire(now: now)
            return state.provided.filter { now - $0.value >= configuration.republishInterval }.map(\.key)
        }
        for key in due { await provide(key) }
    }

    /// Looks up a random key in every bucket not refreshed lately (all of them when forced).
    private func refreshBuckets(force: Bool) async {
        let buckets = state.withLock { state in
            state.table.bucketsNeedingRefresh(now: .now, interval: force ? .zero : configuration.refreshInterval)
        }
        for index in buckets {
            guard !Task.isCancelled else { return }
            let key = Self.randomPeerKey(inBucket: index, of: KadKey(hashing: host.localPeer.bytes))
            await lookup(key: key, request: DHTMessage(type: .findNode, key: key))
        }
    }

    /// A peer-id-shaped key (a sha2-256 multihash) whose Kademlia key shares
    /// exactly `index` leading bits with `local` (found by trying: 2^index tries
    /// on average, so buckets beyond 15 are not refreshed, as in go-libp2p).
    static func randomPeerKey(inBucket index: Int, of local: KadKey) -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        while true {
            let digest = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            let bytes = Multihash(code: Multihash.sha2_256, digest: digest).bytes
            if min(KadKey(hashing: bytes).commonPrefixLength(with: local), 255) == index { return bytes }
        }
    }
}
