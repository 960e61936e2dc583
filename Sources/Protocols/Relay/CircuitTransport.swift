import EventBroadcast
import Host
import Identity
import LibP2PSecurity
import Logging
import Multiformats
import Synchronization
import Transport

/// The `/p2p-circuit` transport (the client side of circuit relay v2).
///
/// Dialing `<relay address>/p2p/<relay>/p2p-circuit/p2p/<target>` connects
/// to the relay, asks it (hop CONNECT) for a circuit to the target and, once
/// it says OK, runs the hop stream's bytes through the normal upgrade
/// (security, muxer). Listening on `<relay address>/p2p/<relay>/p2p-circuit`
/// reserves a slot on the relay (refreshed until the listener closes); the
/// relay's STOP CONNECT streams are upgraded as inbound connections.
///
/// A transport is made before its host: `attach` it to the host that lists it.
public final class CircuitTransport: Transport {
    public static let transportName = Connection.relayedTransport
    public var name: String { Self.transportName }

    private struct State {
        var host = WeakReference<Libp2pHost>()
        /// Live reservations by relay.
        var reservations: [PeerID: ReservationGrant] = [:]
        /// Our circuit listeners per relay: only those relays may send us STOP.
        var listeners: [PeerID: Int] = [:]
    }
    private let state = Mutex(State())
    private let logger: Logger
    private let reservationBroadcaster = EventBroadcaster<ReservationEvent>(bufferingNewest: 64)

    /// What happens to the reservations of our listeners.
    public enum ReservationEvent: Sendable {
        /// Made or renewed.
        case reserved(relay: PeerID, grant: ReservationGrant)
        /// Could not be renewed (the relay went away or refused): the listener
        /// keeps trying every `retryDelay` until it is closed.
        case lost(relay: PeerID, reason: String)
    }

    /// Reservation news from now on.
    public func reservationEvents() -> AsyncStream<ReservationEvent> { reservationBroadcaster.subscribe() }

    /// When a refresh fails, the next try comes this much later.
    static let retryDelay: Duration = .seconds(5)

    public init(logger: Logger = Logger(label: "p2p.circuit")) {
        self.logger = logger
    }

    /// Binds the transport to its host and serves the stop protocol on it.
    public func attach(_ host: Libp2pHost) {
        state.withLock { $0.host = WeakReference(host) }
        host.setStreamHandler(CircuitProtocol.stop) { [weak self] stream in
            await self?.accept(stream)
        }
    }

    /// The reservations we hold, by relay.
    public var reservations: [PeerID: ReservationGrant] {
        state.withLock { $0.reservations }
    }

    public func canDial(_ address: Multiaddr) -> Bool {
        CircuitAddress(address)?.target != nil
    }

    public func canListen(_ address: Multiaddr) -> Bool {
        guard let circuit = CircuitAddress(address) else { return false }
        return circuit.target == nil
    }

    private func host() throws -> Libp2pHost {
        guard let host = state.withLock({ $0.host.value }) else {
            throw RelayError.badAddress("the circuit transport is not attached to a live host")
        }
        return host
    }

    /// A direct connection to the relay.
    private func connectToRelay(_ circuit: CircuitAddress, host: Libp2pHost) async throws -> Connection {
        if let existing = host.connections.first(where: {
            $0.remotePeer == circuit.relay && $0.isActive && !$0.isRelayed
        }) {
            return existing
        }
        // One dial per peer, shared with the host's other callers.
        if circuit.relayAddress.components.count > 1 {
            host.peerStore.addAddresses([circuit.relayAddress.withoutP2P], for: circuit.relay)
        }
        let connection = try await host.connect(to: circuit.relay)
        guard !connection.isRelayed else {
            throw RelayError.badAddress("the relay \(circuit.relay) is itself reached through a relay")
        }
        return connection
    }

    /// `<relay's address>/p2p/<relay>/p2p-circuit` as seen over `relay`.
    private static func circuitAddress(over relay: Connection) -> Multiaddr {
        Multiaddr(relay.remoteAddress.components + [.p2p(relay.remotePeer.bytes), .p2pCircuit])
    }

    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection {
        guard let circuit = CircuitAddress(address), let target = circuit.target else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        do {
            let relay = try await connectToRelay(circuit, host: try host())
            let stream = try await relay.newStream(protocols: [CircuitProtocol.hop])
            do {
                try await writeRelayMessage(HopMessage.connect(target).encoded(), to: stream)
                let answer = try await readRelayMessage(stream, "CONNECT answer") { try HopMessage(bytes: $0.readableBytesView) }
                _ = try RelayClientProtocol.circuit(from: answer)
            } catch {
                stream.reset()
                throw error
            }
            return try await upgrader.upgrade(
                stream: stream, direction: .outbound, role: role, expectedRemotePeer: target, transport: name,
                localAddress: nil, remoteAddress: Self.circuitAddress(over: relay))
        } catch let error as TransportError {
            throw error
        } catch {
            throw TransportError.dialFailed(address: "\(address)", underlying: error)
        }
    }

    /// Reserves a slot on the relay of `address` and keeps it until the
    /// listener closes; the listener's address is the circuit address to advertise.
    public func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener {
        guard let circuit = CircuitAddress(address), circuit.target == nil else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        let host = try host()
        let (relay, grant) = try await reserve(circuit, host: host)
        state.withLock { $0.listeners[circuit.relay, default: 0] += 1 }
        let advertised = Self.circuitAddress(over: relay)
        // Owned by the listener: closing it cancels the refresher.
        let refresher = Task { [weak self] in
            var expire = grant.expire
            var carrier = relay
            while !Task.isCancelled {
                let now = unixNow()
                // Refresh halfway to the expiry (at least a second apart), or at
                // once when the connection to the relay is lost (the relay then
                // drops the reservation).
                let wait = expire > now ? max(1, (expire - now) / 2) : 1
                let lost = await Self.sleep(.seconds(Int(wait)), orUntilClosed: carrier)
                guard !Task.isCancelled, let self else { return }
                if lost { self.state.withLock { _ = $0.reservations.removeValue(forKey: circuit.relay) } }
                do {
                    let (connection, renewed) = try await self.reserve(circuit, host: host)
                    carrier = connection
                    expire = renewed.expire
                } catch {
                    self.logger.debug("reservation refresh failed", metadata: ["relay": "\(circuit.relay)", "error": "\(error)"])
                    self.state.withLock { _ = $0.reservations.removeValue(forKey: circuit.relay) }
                    self.reservationBroadcaster.yield(.lost(relay: circuit.relay, reason: "\(error)"))
                    try? await Task.sleep(for: Self.retryDelay)
                }
            }
        }
        return Listener(address: advertised) { [weak self] in
            refresher.cancel()
            self?.state.withLock { state in
                state.reservations.removeValue(forKey: circuit.relay)
                state.listeners[circuit.relay, default: 1] -= 1
                if state.listeners[circuit.relay] == 0 { state.listeners.removeValue(forKey: circuit.relay) }
            }
        }
    }

    /// Sleeps for `duration` or until `connection` closes (checked every
    /// second); whether it closed.
    private static func sleep(_ duration: Duration, orUntilClosed connection: Connection) async -> Bool {
        let deadline = ContinuousClock.now + duration
        while ContinuousClock.now < deadline {
            guard connection.isActive else { return true }
            do {
                try await Task.sleep(for: min(.seconds(1), deadline - ContinuousClock.now))
            } catch {
                return false
            }
        }
        return !connection.isActive
    }

    /// One RESERVE on the relay.
    private func reserve(_ circuit: CircuitAddress, host: Libp2pHost) async throws -> (Connection, ReservationGrant) {
        let relay = try await connectToRelay(circuit, host: host)
        let stream = try await relay.newStream(protocols: [CircuitProtocol.hop])
        defer { stream.reset() }
        try await writeRelayMessage(HopMessage.reserve.encoded(), to: stream)
        let answer = try await readRelayMessage(stream, "RESERVE answer") { try HopMessage(bytes: $0.readableBytesView) }
        let grant = try RelayClientProtocol.reservation(
            from: answer, relay: circuit.relay, local: host.localPeer, now: unixNow())
        state.withLock { $0.reservations[circuit.relay] = grant }
        reservationBroadcaster.yield(.reserved(relay: circuit.relay, grant: grant))
        logger.debug("reserved", metadata: ["relay": "\(circuit.relay)", "expire": "\(grant.expire)"])
        return (relay, grant)
    }

    /// A STOP CONNECT from a relay: answer OK and upgrade the stream as an
    /// inbound connection from the source; runs as long as that connection.
    private func accept(_ stream: MuxedStream) async {
        guard let host = try? host() else {
            stream.reset()
            return
        }
        // STOP only from a relay we listen through, over a direct connection to
        // it: anyone else could make us run handshakes (and DCUtR) for nothing,
        // and circuits inside circuits would nest without end.
        let relay = stream.connection
        let listening = state.withLock { $0.listeners[relay.remotePeer] != nil }
        guard listening, !relay.isRelayed else {
            logger.debug(
                "STOP refused", metadata: ["from": "\(relay.remotePeer)", "relayed": "\(relay.isRelayed)"])
            // The host closes the stream when this returns.
            try? await writeRelayMessage(StopMessage.status(.permissionDenied).encoded(), to: stream)
            return
        }
        let source: PeerID
        do {
            let request = try await readRelayMessage(stream, "stop request") { try StopMessage(bytes: $0.readableBytesView) }
            source = try RelayClientProtocol.incoming(request).source
            try await writeRelayMessage(StopMessage.status(.ok).encoded(), to: stream)
        } catch {
            let status = (error as? RelayError)?.status ?? .malformedMessage
            try? await writeRelayMessage(StopMessage.status(status).encoded(), to: stream)
            return
        }
        do {
            let connection = try await host.upgrader.upgrade(
                stream: stream, direction: .inbound, expectedRemotePeer: source, transport: name,
                localAddress: nil, remoteAddress: Self.circuitAddress(over: stream.connection))
            try? await connection.closeFuture.get()
        } catch {
            logger.debug("relayed connection failed", metadata: ["from": "\(source)", "error": "\(error)"])
        }
    }
}

/// A weak reference that can be kept in a `Mutex` (the transport must not keep its host alive).
struct WeakReference<T: AnyObject & Sendable>: @unchecked Sendable {
    // Safe: the referent is Sendable and the box is only read or replaced
    // whole, under the Mutex that holds it.
    weak var value: T?

    init(_ value: T? = nil) {
        self.value = value
    }
}
