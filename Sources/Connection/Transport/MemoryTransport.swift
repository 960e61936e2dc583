import Identity
import Multiformats
import NIOCore
import LibP2PSecurity
import Synchronization

/// In-process connections (`/memory/<n>`), as rust-libp2p's memory transport:
/// a byte pipe between two drivers on event loops, through the same upgrade
/// as TCP (multistream-select, security, muxer), with no sockets. For tests of
/// the host and the protocols above it.
public struct MemoryTransport: Transport {
    public let group: EventLoopGroup
    public let network: MemoryNetwork
    public var name: String { "memory" }

    /// Transports that share a `network` reach each other's listeners.
    public init(group: EventLoopGroup, network: MemoryNetwork = .shared) {
        self.group = group
        self.network = network
    }

    public func canDial(_ address: Multiaddr) -> Bool { Self.port(address) != nil }

    /// `/memory/<n>` exactly (no `/p2p`).
    public func canListen(_ address: Multiaddr) -> Bool {
        guard address.components.count == 1, case .memory = address.components[0] else { return false }
        return true
    }

    /// Listens on `/memory/<n>`; `/memory/0` picks a free number.
    public func listen(on address: Multiaddr, upgrader: Upgrader) async throws -> Listener {
        guard canListen(address), let requested = Self.port(address) else {
            throw TransportError.unsupportedAddress("\(address)")
        }
        let port = try network.bind(requested, MemoryNetwork.Endpoint(upgrader: upgrader, group: group))
        let network = self.network
        return Listener(address: Multiaddr([.memory(port)])) { network.unbind(port) }
    }

    public func dial(_ address: Multiaddr, upgrader: Upgrader, role: UpgradeRole) async throws -> Connection {
        guard let port = Self.port(address) else { throw TransportError.unsupportedAddress("\(address)") }
        guard let listener = network.endpoint(port) else {
            throw TransportError.dialFailed(
                address: "\(address)", underlying: DescribedError(description: "nothing listens on /memory/\(port)"))
        }
        let localPort = network.ephemeralPort()
        let clientLoop = group.next()
        let serverLoop = listener.group.next()
        let established = clientLoop.makePromise(of: Connection.self)
        let accepted = serverLoop.makePromise(of: Connection.self)
        let expected = address.peerID
        let client = try await clientLoop.submit {
            NIOLoopBound(
                upgrader.makeDriver(
                    direction: .outbound, role: role, expectedRemotePeer: expected, transport: "memory",
                    addresses: .fixed(local: Multiaddr([.memory(localPort)]), remote: Multiaddr([.memory(port)])),
                    promise: established),
                eventLoop: clientLoop)
        }.get()
        let server = try await serverLoop.submit {
            NIOLoopBound(
                listener.upgrader.makeDriver(
                    direction: .inbound, role: nil, expectedRemotePeer: nil, transport: "memory",
                    addresses: .fixed(local: Multiaddr([.memory(port)]), remote: Multiaddr([.memory(localPort)])),
                    promise: accepted),
                eventLoop: serverLoop)
        }.get()
        serverLoop.execute { server.value.start(sink: MemoryPipeEnd(local: server, remote: client)) }
        clientLoop.execute { client.value.start(sink: MemoryPipeEnd(local: client, remote: server)) }
        return try await established.futureResult.get()
    }

    static func port(_ address: Multiaddr) -> UInt64? {
        let components = address.withoutP2P.components
        guard components.count == 1, case .memory(let port) = components[0] else { return nil }
        return port
    }
}

/// The listeners of in-process transports, by number.
public final class MemoryNetwork: Sendable {
    /// The process-wide network `MemoryTransport` uses by default.
    public static let shared = MemoryNetwork()

    struct Endpoint: Sendable {
        let upgrader: Upgrader
        let group: EventLoopGroup
    }

    private struct State {
        var listeners: [UInt64: Endpoint] = [:]
        var next: UInt64 = 1
    }
    private let state = Mutex(State())

    public init() {}

    func bind(_ requested: UInt64, _ endpoint: Endpoint) throws -> UInt64 {
        try state.withLock { state throws(TransportError) -> UInt64 in
            var port = requested
            if port == 0 {
                while state.listeners[state.next] != nil { state.next &+= 1 }
                port = state.next
                state.next &+= 1
            } else if state.listeners[port] != nil {
                throw .listenFailed(address: "/memory/\(port)", underlying: DescribedError(description: "address in use"))
            }
            state.listeners[port] = endpoint
            return port
        }
    }

    func unbind(_ port: UInt64) {
        state.withLock { _ = $0.listeners.removeValue(forKey: port) }
    }

    func endpoint(_ port: UInt64) -> Endpoint? {
        state.withLock { $0.listeners[port] }
    }

    /// A number for the dialling side's address (not listened on).
    func ephemeralPort() -> UInt64 {
        state.withLock { state in
            defer { state.next &+= 1 }
            return state.next | (1 << 63)
        }
    }
}

/// One end of an in-memory byte pipe: writes go to the other driver on its
/// loop; the writer counts bytes in flight and stops being writable past a
/// bound, so backpressure works as over a socket.
private final class MemoryPipeEnd: ByteSink {
    static let highWater = 1 << 20

    private let local: NIOLoopBound<ConnectionDriver>
    private let remote: NIOLoopBound<ConnectionDriver>
    private var inFlight = 0
    private var closed = false

    init(local: NIOLoopBound<ConnectionDriver>, remote: NIOLoopBound<ConnectionDriver>) {
        self.local = local
        self.remote = remote
    }

    var isWritable: Bool { !closed && inFlight < Self.highWater }

    func write(_ bytes: ByteBuffer) {
        guard !closed else { return }
        let count = bytes.readableBytes
        inFlight += count
        let remote = self.remote
        let local = self.local
        let me = NIOLoopBound(self, eventLoop: local.eventLoop)
        remote.eventLoop.execute {
            var bytes = bytes
            remote.value.receive(&bytes)
            remote.value.readComplete()
            local.eventLoop.execute { me.value.delivered(count) }
        }
    }

    private func delivered(_ count: Int) {
        let wasWritable = isWritable
        inFlight -= count
        if !wasWritable && isWritable { local.value.writabilityChanged() }
    }

    func close() {
        guard !closed else { return }
        closed = true
        let remote = self.remote
        let local = self.local
        // After the bytes already on their way (same loop order).
        remote.eventLoop.execute { remote.value.transportClosed() }
        local.eventLoop.execute { local.value.transportClosed() }
    }
}
