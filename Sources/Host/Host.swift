import Identity
import Logging
import Multiformats
import NIOCore
import NIOPosix
import Synchronization
import Transport

/// Something that happened to the host's connections or peers.
public enum HostEvent: Sendable {
    case connected(Connection)
    case disconnected(Connection)
    /// The peer store learned something new about a peer (e.g. from identify).
    case peerUpdated(PeerID)
    /// Our listen addresses or supported protocols changed.
    case localChanged
}

/// A stream protocol handler; runs in its own task per stream. When it returns,
/// the host closes the stream (write side closed, unread input discarded).
public typealias StreamHandler = @Sendable (MuxedStream) async -> Void

/// Errors of the host.
public enum HostError: Error, CustomStringConvertible, Sendable {
    case notStarted
    case noAddresses(PeerID)
    case dialFailed(PeerID, [String])

    public var description: String {
        switch self {
        case .notStarted: return "host is not started"
        case .noAddresses(let peer): return "no known addresses for \(peer)"
        case .dialFailed(let peer, let reasons): return "could not reach \(peer): \(reasons.joined(separator: "; "))"
        }
    }
}

/// A libp2p node: listens, dials, keeps one connection per peer where it can,
/// and routes inbound streams to the registered protocol handlers.
public final class Libp2pHost: Sendable {
    public let localKey: PrivateKey
    public let localPeer: PeerID
    public let peerStore = PeerStore()
    public let group: EventLoopGroup
    private let logger: Logger

    private struct State {
        var transport: TCPTransport?
        var listeners: [Listener] = []
        var handlers: [String: StreamHandler] = [:]
        var connections: [PeerID: [Connection]] = [:]
        var subscribers: [UInt64: AsyncStream<HostEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
        var closed = false
    }
    private let state = Mutex(State())

    public init(
        key: PrivateKey, configuration: TransportConfiguration = .init(), group: EventLoopGroup? = nil,
        logger: Logger = Logger(label: "p2p.host")
    ) {
        self.localKey = key
        self.localPeer = PeerID(publicKey: key.publicKey)
        // NIO's process-wide group by default: it is never shut down, so late
        // work (a stream reset after close) always has a loop to run on.
        self.group = group ?? MultiThreadedEventLoopGroup.singleton
        self.logger = logger
        let acceptor = Acceptor(host: WeakHost(self))
        let real = TCPTransport(
            group: self.group, localKey: key, configuration: configuration, acceptor: acceptor, logger: logger,
            onInboundConnection: { [weak self] connection in self?.adopt(connection) })
        state.withLock { $0.transport = real }
    }

    private var transport: TCPTransport {
        state.withLock { $0.transport! }
    }

    // MARK: Listening

    /// Starts listening on each address (e.g. `/ip4/0.0.0.0/tcp/0`).
    @discardableResult
    public func listen(on addresses: [Multiaddr]) async throws -> [Multiaddr] {
        var bound: [Multiaddr] = []
        for address in addresses {
            let listener = try await transport.listen(on: address)
            state.withLock { $0.listeners.append(listener) }
            bound.append(listener.address)
        }
        emit(.localChanged)
        return bound
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
            guard parts.count == 2, case .tcp(let port) = parts[1] else {
                result.append(address)
                continue
            }
            switch parts[0] {
            case .ip4(let ip) where ip == [0, 0, 0, 0]:
                for device in interfaces {
                    guard let socket = device.address, case .v4 = socket,
                        var expanded = try? Multiaddr(socketAddress: socket)
                    else { continue }
                    expanded = Multiaddr([expanded.components[0], .tcp(port)])
                    if !result.contains(expanded) { result.append(expanded) }
                }
            case .ip6(let ip) where ip.allSatisfy({ $0 == 0 }):
                for device in interfaces {
                    guard let socket = device.address, case .v6(let v6) = socket,
                        v6.address.sin6_scope_id == 0,  // skip link-local: needs a zone
                        var expanded = try? Multiaddr(socketAddress: socket)
                    else { continue }
                    expanded = Multiaddr([expanded.components[0], .tcp(port)])
                    if !result.contains(expanded) { result.append(expanded) }
                }
            default:
                if !result.contains(address) { result.append(address) }
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

    fileprivate func handler(for protocolID: String) -> StreamHandler? {
        state.withLock { $0.handlers[protocolID] }
    }

    // MARK: Connections

    /// Dials an address (reusing a live connection when the address names a known peer).
    public func connect(_ address: Multiaddr) async throws -> Connection {
        if let peer = address.peerID, let existing = connection(to: peer) {
            return existing
        }
        let connection = try await transport.dial(address)
        adopt(connection)
        return connection
    }

    /// A live connection to the peer, if any.
    public func connection(to peer: PeerID) -> Connection? {
        state.withLock { $0.connections[peer]?.first(where: { $0.isActive }) }
    }

    public var connectedPeers: [PeerID] {
        state.withLock { $0.connections.compactMap { $0.value.isEmpty ? nil : $0.key } }
    }

    public var connections: [Connection] {
        state.withLock { $0.connections.values.flatMap { $0 } }
    }

    /// A connection to the peer: the live one, or a new one to a known address.
    public func connect(to peer: PeerID) async throws -> Connection {
        if let existing = connection(to: peer) { return existing }
        let addresses = peerStore.info(peer)?.addresses ?? []
        guard !addresses.isEmpty else { throw HostError.noAddresses(peer) }
        var reasons: [String] = []
        for address in addresses {
            do {
                let full = address.peerID == nil ? address.encapsulating(.p2p(peer.bytes)) : address
                return try await connect(full)
            } catch {
                reasons.append("\(address): \(error)")
            }
        }
        throw HostError.dialFailed(peer, reasons)
    }

    /// Opens a stream to a peer for the first of `protocols` it supports.
    public func newStream(to peer: PeerID, protocols: [String]) async throws -> MuxedStream {
        let connection = try await connect(to: peer)
        return try await connection.newStream(protocols: protocols)
    }

    private func adopt(_ connection: Connection) {
        let accepted = state.withLock { state -> Bool in
            guard !state.closed else { return false }
            state.connections[connection.remotePeer, default: []].append(connection)
            return true
        }
        guard accepted else {
            Task { await connection.close() }
            return
        }
        if connection.direction == .outbound {
            peerStore.addAddresses([connection.remoteAddress], for: connection.remotePeer)
        }
        peerStore.update(connection.remotePeer) { $0.publicKey = connection.remotePublicKey }
        logger.debug("connected", metadata: ["peer": "\(connection.remotePeer)", "conn": "\(connection.id)"])
        emit(.connected(connection))
        connection.closeFuture.whenComplete { [weak self] _ in
            self?.forget(connection)
        }
    }

    private func forget(_ connection: Connection) {
        let removed = state.withLock { state -> Bool in
            guard var list = state.connections[connection.remotePeer],
                let index = list.firstIndex(where: { $0 === connection })
            else { return false }
            list.remove(at: index)
            state.connections[connection.remotePeer] = list.isEmpty ? nil : list
            return true
        }
        if removed {
            logger.debug("disconnected", metadata: ["peer": "\(connection.remotePeer)", "conn": "\(connection.id)"])
            emit(.disconnected(connection))
        }
    }

    // MARK: Events

    /// A new subscription to host events, from now on. Bounded: a subscriber that
    /// does not keep up loses the oldest events.
    public func events(bufferingNewest limit: Int = 1024) -> AsyncStream<HostEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: HostEvent.self, bufferingPolicy: .bufferingNewest(limit))
        let id = state.withLock { state -> UInt64 in
            state.nextSubscriber += 1
            state.subscribers[state.nextSubscriber] = continuation
            return state.nextSubscriber
        }
        continuation.onTermination = { [weak self] _ in
            self?.state.withLock { _ = $0.subscribers.removeValue(forKey: id) }
        }
        return stream
    }

    /// Publishes an event to every subscriber (used by protocols such as identify too).
    public func emit(_ event: HostEvent) {
        let subscribers = state.withLock { Array($0.subscribers.values) }
        for subscriber in subscribers { subscriber.yield(event) }
    }

    // MARK: Shutdown

    /// Closes every connection and listener; the host cannot be used afterwards.
    public func close() async {
        let (listeners, connections, subscribers) = state.withLock { state in
            state.closed = true
            let result = (state.listeners, state.connections.values.flatMap { $0 }, Array(state.subscribers.values))
            state.listeners = []
            return result
        }
        for listener in listeners { await listener.close() }
        await withTaskGroup(of: Void.self) { group in
            for connection in connections {
                group.addTask { await connection.close() }
            }
        }
        for subscriber in subscribers { subscriber.finish() }
    }
}

/// A weak reference to the host, so the transport's acceptor does not keep it alive.
private final class WeakHost: Sendable {
    private let reference: Mutex<WeakBox>
    private struct WeakBox: @unchecked Sendable {
        // Safe: only read and written under the enclosing Mutex.
        weak var host: Libp2pHost?
    }

    init(_ host: Libp2pHost? = nil) {
        reference = Mutex(WeakBox(host: host))
    }

    var host: Libp2pHost? { reference.withLock { $0.host } }
}

/// Routes negotiated inbound streams to the host's handlers, each in its own task.
private struct Acceptor: InboundStreamAcceptor {
    let host: WeakHost

    func supports(protocolID: String) -> Bool {
        host.host?.handler(for: protocolID) != nil
    }

    func accept(_ stream: MuxedStream) {
        guard let handler = host.host?.handler(for: stream.protocolID) else {
            stream.reset()
            return
        }
        Task {
            await handler(stream)
            await stream.close()
        }
    }
}
