import Host
import Relay
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import LibP2PSecurity
import Transport
// The dependency-free helpers (polling, deadlines, seeded randomness, hex) come with this kit.
@_exported import TestKit
import XCTest

#if canImport(Glibc)
import Glibc
#endif

public let echoProtocol = "/p2pchat/echo/1.0.0"

/// What test hosts offer unless a test says otherwise (the host has no default of its own).
public let testSecurity: [any SecurityProtocol] = [NoiseSecurity()]

/// Helpers shared by the network tests.

/// A host that serves identify, ping and echo, listening on 127.0.0.1 (TCP)
/// unless `listen` says otherwise; `transports` and `security` as the host's.
public func makeTestHost(
    group: EventLoopGroup, configuration: TransportConfiguration = .init(), transports: [any Transport]? = nil,
    security: [any SecurityProtocol]? = nil, listen: Multiaddr? = nil, limits: HostLimits = .init()
) async throws -> (Libp2pHost, Multiaddr) {
    let host = try Libp2pHost(
        key: .generateEd25519(), configuration: configuration, group: group, transports: transports,
        security: security ?? testSecurity, limits: limits)
    IdentifyService(host: host, agentVersion: "p2pchat-test/0").start()
    PingService(host: host).start()
    host.setStreamHandler(echoProtocol) { stream in
        do {
            while let chunk = try await stream.read() {
                try await stream.write(chunk)
            }
            try await stream.closeWrite()
        } catch {
            stream.reset()
        }
    }
    let bound = try await host.listen(on: [listen ?? Multiaddr("/ip4/127.0.0.1/tcp/0")])
    return (host, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
}

/// Sends `data` through the echo protocol and returns what came back.
public func echo(_ data: [UInt8], over connection: Connection, chunk: Int = 64 * 1024) async throws -> [UInt8] {
    let stream = try await connection.newStream(protocols: [echoProtocol])
    async let received: [UInt8] = {
        var all: [UInt8] = []
        all.reserveCapacity(data.count)
        while let piece = try await stream.read() {
            all.append(contentsOf: piece.readableBytesView)
        }
        return all
    }()
    var offset = 0
    while offset < data.count {
        let end = min(offset + chunk, data.count)
        try await stream.write(ByteBuffer(bytes: data[offset..<end]))
        offset = end
    }
    try await stream.closeWrite()
    return try await received
}

/// Echoes `streams` streams at once over `connection`: stream `index` carries
/// `bytes + index` pattern bytes seeded `seed + index`, written in `chunk`s.
/// Returns how many came back intact.
public func echoConcurrently(
    _ streams: Int, over connection: Connection, bytes: Int, seed: UInt64, chunk: Int = 64 * 1024
) async throws -> Int {
    try await withThrowingTaskGroup(of: Bool.self) { tasks in
        for index in 0..<streams {
            tasks.addTask {
                let data = patternBytes(count: bytes + index, seed: seed + UInt64(index))
                return try await echo(data, over: connection, chunk: chunk) == data
            }
        }
        var intact = 0
        for try await result in tasks where result { intact += 1 }
        return intact
    }
}

/// A transport with an upgrader of its own, for tests at transport level
/// (no host): `dial` and `listen` as the transport's, with our key and acceptor.
public struct TransportNode: Sendable {
    public let transport: any Transport
    public let upgrader: Upgrader
    public var peer: PeerID { upgrader.localPeer }

    public init(
        transport: any Transport, key: PrivateKey = .generateEd25519(), acceptor: any InboundStreamAcceptor,
        security: [any SecurityProtocol] = [NoiseSecurity()], configuration: TransportConfiguration = .init(),
        onInboundConnection: @escaping @Sendable (Connection) -> Void = { _ in }
    ) {
        self.transport = transport
        self.upgrader = Upgrader(
            localKey: key, security: security, configuration: configuration, acceptor: acceptor,
            onInboundConnection: onInboundConnection)
    }

    public func dial(_ address: Multiaddr) async throws -> Connection {
        try await transport.dial(address, upgrader: upgrader)
    }

    public func listen(on address: Multiaddr) async throws -> Listener {
        try await transport.listen(on: address, upgrader: upgrader)
    }
}

/// Serves echo and ping straight on the transport (no Host).
public struct EchoPingAcceptor: InboundStreamAcceptor {
    public init() {}

    public func supports(protocolID: String) -> Bool {
        protocolID == echoProtocol || protocolID == PingService.protocolID
    }

    public func accept(_ stream: MuxedStream) {
        Task {
            do {
                if stream.protocolID == PingService.protocolID {
                    var reader = StreamReader(stream)
                    while true {
                        try await stream.write(try await reader.readExactly(PingService.payloadSize))
                    }
                } else {
                    while let chunk = try await stream.read() {
                        try await stream.write(chunk)
                    }
                    try await stream.closeWrite()
                }
            } catch {
                // The end of a ping stream, or a failure: either way this stream is done.
            }
            await stream.close()
        }
    }
}

/// Two test hosts on one in-memory network, the second connected to the first.
public func makeConnectedMemoryHosts(group: EventLoopGroup) async throws -> (listener: Libp2pHost, dialer: Libp2pHost) {
    let network = MemoryNetwork()
    let (listener, address) = try await makeTestHost(
        group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
    let (dialer, _) = try await makeTestHost(
        group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
    _ = try await dialer.connect(address)
    return (listener, dialer)
}

// MARK: Raw sockets (peers that never finish a handshake)

/// A blocking TCP connect to 127.0.0.1:`port`; the descriptor, or -1.
public func rawConnect(port: Int) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    guard connectSocket(fd, port: port) else {
        close(fd)
        return -1
    }
    return fd
}

/// A blocking TCP connect to 127.0.0.1:`port` from the loopback address
/// `source` (e.g. "127.0.0.2": another address of the loopback /8); the descriptor, or -1.
public func rawConnect(port: Int, from source: String) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var local = sockaddr_in()
    local.sin_family = sa_family_t(AF_INET)
    local.sin_addr.s_addr = inet_addr(source)
    let bound = withUnsafePointer(to: &local) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    guard bound, connectSocket(fd, port: port) else {
        close(fd)
        return -1
    }
    return fd
}

/// Connects an existing socket to 127.0.0.1:`port` (blocking).
public func connectSocket(_ fd: Int32, port: Int) -> Bool {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
            connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
        }
    }
}

/// Whether the server closes `fd` within `seconds` (a read sees the end).
public func closedByServer(_ fd: Int32, within seconds: Int) -> Bool {
    var timeout = timeval(tv_sec: seconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var byte: UInt8 = 0
    // Skip what the server says first (its multistream header), until the end.
    while true {
        let n = read(fd, &byte, 1)
        if n == 0 { return true }
        if n < 0 { return errno == ECONNRESET }
    }
}

/// A test host (identify, ping, echo) with TCP (reusing its listening port
/// for dials when `reusePort`, as hole punching needs) and the circuit transport.
public func makeCircuitHost(group: EventLoopGroup, reusePort: Bool = false) async throws -> Libp2pHost {
    let circuit = CircuitTransport()
    let (host, _) = try await makeTestHost(group: group, transports: [TCPTransport(group: group, reusePort: reusePort), circuit])
    circuit.attach(host)
    return host
}

/// A circuit host that serves the relay (with `limits`), and its `/p2p/` address.
public func makeRelayHost(group: EventLoopGroup, limits: RelayLimits = .init()) async throws -> (Libp2pHost, Multiaddr) {
    let host = try await makeCircuitHost(group: group)
    RelayService(host: host, limits: limits).start()
    return (host, host.listenAddresses[0].encapsulating(.p2p(host.localPeer.bytes)))
}

