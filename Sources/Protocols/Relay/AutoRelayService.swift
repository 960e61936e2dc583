import EventBroadcast
import Host
import Identity
import Logging
import Multiformats
import Synchronization
import Transport

/// AutoRelay on a host: runs `AutoRelay`'s decisions with the circuit
/// transport. A reservation is a `/p2p-circuit` listener of the host, so its
/// address is advertised like any other (identify, the DHT's provider records)
/// and released by closing that listener.
///
/// Candidates come from `addCandidate` (named relays, bootstrap peers) and
/// from identify: any peer whose protocols include the hop protocol.
public final class AutoRelayService: Sendable {
    /// What happened to our reservations.
    public enum Event: Sendable {
        /// Reserved on `relay`; the host now listens (and advertises) at `addresses`.
        case reserved(relay: PeerID, addresses: [Multiaddr])
        /// Given up: we are reachable, or the relay was replaced.
        case released(relay: PeerID)
        /// A reservation could not be made or kept; another candidate is tried.
        case failed(relay: PeerID, reason: String)
    }

    private enum Input: Sendable {
        case reachability(AutoRelay.Reachability)
        case candidate(PeerID, AutoRelay.Source, offersHop: Bool?)
        case reserved(PeerID, [Multiaddr])
        case failed(PeerID, String)
        case tick
    }

    public let host: Libp2pHost
    public let circuit: CircuitTransport
    private let logger: Logger
    private let machine: Mutex<AutoRelay>
    private let broadcaster = EventBroadcaster<Event>(bufferingNewest: 64)
    private let inputs: AsyncStream<Input>
    private let feed: AsyncStream<Input>.Continuation

    private struct Held: Sendable {
        /// Where to reach each candidate we were told of (others: their connection or peer store).
        var addresses: [PeerID: Multiaddr] = [:]
        /// The listener addresses of each reservation.
        var listening: [PeerID: [Multiaddr]] = [:]
        /// Reservations being made.
        var reserving: [PeerID: Task<Void, Never>] = [:]
    }
    private let held = Mutex(Held())

    public init(
        host: Libp2pHost, circuit: CircuitTransport, configuration: AutoRelay.Configuration = .init(),
        logger: Logger = Logger(label: "p2p.autorelay")
    ) {
        self.host = host
        self.circuit = circuit
        self.logger = logger
        self.machine = Mutex(AutoRelay(configuration: configuration, now: .now))
        (inputs, feed) = AsyncStream.makeStream(of: Input.self, bufferingPolicy: .bufferingNewest(1024))
    }

    /// Reservation news from now on (ends when `run` returns).
    public func events() -> AsyncStream<Event> { broadcaster.subscribe() }

    /// The relays reserved on.
    public var reservedRelays: [PeerID] {
        machine.withLock { $0.active.filter(\.value).map(\.key) }
    }

    /// A relay to consider, at `address` (which ends in its `/p2p/<id>`).
    public func addCandidate(_ address: Multiaddr, source: AutoRelay.Source) {
        guard let peer = address.peerID else { return }
        held.withLock { $0.addresses[peer] = address.withoutP2P }
        feed.yield(.candidate(peer, source, offersHop: nil))
    }

    /// Makes, keeps and releases reservations following `reachability` until
    /// cancelled (or until the host closes); then releases them all.
    public func run(reachability: AsyncStream<AutoRelay.Reachability>) async {
        let hostEvents = host.events()
        let reservations = circuit.reservationEvents()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { [feed] in
                for await change in reachability { feed.yield(.reachability(change)) }
            }
            group.addTask { [feed, host] in
                for await event in hostEvents {
                    guard case .peerUpdated(let peer) = event, let info = host.peerStore.info(peer) else { continue }
                    let offersHop = info.protocols.contains(CircuitProtocol.hop)
                    feed.yield(.candidate(peer, .discovered, offersHop: offersHop))
                }
                // The host closed: nothing more to do.
                feed.finish()
            }
            group.addTask { [feed] in
                for await event in reservations {
                    if case .lost(let relay, let reason) = event { feed.yield(.failed(relay, "lost: \(reason)")) }
                }
            }
            // Grace periods and backoffs end with time, not with an input.
            group.addTask { [feed] in
                while !Task.isCancelled {
                    do { try await Task.sleep(for: .seconds(1)) } catch { return }
                    feed.yield(.tick)
                }
            }
            for await input in inputs {
                await handle(input)
            }
            group.cancelAll()
        }
        await releaseAll()
        broadcaster.finish()
    }

    private func handle(_ input: Input) async {
        let now = ContinuousClock.now
        let publicKnown = host.listenAddresses.contains { Self.isPublic($0) }
        let actions = machine.withLock { machine -> [AutoRelay.Action] in
            var actions = machine.setPublicAddressKnown(publicKnown, now: now)
            switch input {
            case .reachability(let reachability):
                actions += machine.setReachability(reachability, now: now)
            case .candidate(let peer, let source, let offersHop):
                // Only peers that offer hop are discovered candidates; others are news for known ones only.
                if source != .discovered || offersHop == true || machine.isCandidate(peer) {
                    actions += machine.addCandidate(peer, source: source, offersHop: offersHop, now: now)
                }
            case .reserved(let peer, _):
                actions += machine.reserved(peer, now: now)
            case .failed(let peer, _):
                actions += machine.reservationFailed(peer, now: now)
            case .tick:
                actions += machine.tick(now: now)
            }
            return actions
        }
        switch input {
        case .reserved(let peer, let addresses):
            held.withLock { state in
                state.reserving[peer] = nil
                state.listening[peer] = addresses
            }
            if !actions.contains(.release(peer)) {
                logger.info("reserved", metadata: ["relay": "\(peer)"])
                broadcaster.yield(.reserved(relay: peer, addresses: addresses))
            }
        case .failed(let peer, let reason):
            held.withLock { $0.reserving[peer] = nil }
            logger.debug("reservation failed", metadata: ["relay": "\(peer)", "reason": "\(reason)"])
            broadcaster.yield(.failed(relay: peer, reason: reason))
        default:
            break
        }
        for action in actions {
            switch action {
            case .reserve(let peer): startReserving(peer)
            case .release(let peer): await release(peer)
            }
        }
    }

    private func startReserving(_ peer: PeerID) {
        guard let relayAddress = address(of: peer) else {
            feed.yield(.failed(peer, "no known address"))
            return
        }
        let listenAddress = relayAddress.encapsulating(.p2p(peer.bytes)).encapsulating(.p2pCircuit)
        // Owned by `held.reserving` until it reports back; cancelled by `release`.
        let task = Task { [host, feed] in
            do {
                let bound = try await host.listen(on: [listenAddress])
                feed.yield(.reserved(peer, bound))
            } catch {
                feed.yield(.failed(peer, "\(error)"))
            }
        }
        held.withLock { $0.reserving[peer] = task }
    }

    /// Where to reach `peer`: the address we were given, else its direct connection's, else the peer store's.
    private func address(of peer: PeerID) -> Multiaddr? {
        if let given = held.withLock({ $0.addresses[peer] }), !given.components.isEmpty { return given }
        if let direct = host.connections.first(where: { $0.remotePeer == peer && !$0.isRelayed }) {
            return direct.remoteAddress
        }
        return host.peerStore.info(peer)?.addresses.first { !$0.components.contains(.p2pCircuit) }
    }

    private func release(_ peer: PeerID) async {
        let (task, addresses) = held.withLock { state in
            (state.reserving.removeValue(forKey: peer), state.listening.removeValue(forKey: peer))
        }
        task?.cancel()
        if let addresses {
            await host.stopListening(on: addresses)
            logger.info("released", metadata: ["relay": "\(peer)"])
            broadcaster.yield(.released(relay: peer))
        }
    }

    private func releaseAll() async {
        let peers = held.withLock { Array($0.listening.keys) + Array($0.reserving.keys) }
        for peer in peers { await release(peer) }
    }

    /// An address at a public IP, not through a relay.
    static func isPublic(_ address: Multiaddr) -> Bool {
        address.scope == .public && !address.components.contains(.p2pCircuit)
    }
}
