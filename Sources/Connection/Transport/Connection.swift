import Identity
import Multiformats
import NIOCore
import Synchronization

/// Which side opened a connection.
public enum ConnectionDirection: String, Sendable {
    case inbound
    case outbound
}

/// Receives the streams a remote peer opens once they are negotiated.
///
/// Called on the connection's event loop: implementations must not block.
public protocol InboundStreamAcceptor: Sendable {
    /// Whether a stream protocol is served (asked during multistream-select).
    func supports(protocolID: String) -> Bool
    /// A negotiated inbound stream, ready for the protocol handler.
    func accept(_ stream: MuxedStream)
}

/// What a connection and its streams ask of the engine that runs them: the
/// Yamux driver over a secured byte stream, or QUIC's over datagrams. Called
/// on the connection's event loop only.
package protocol StreamMuxerDriver: AnyObject {
    /// Streams open now (negotiating or negotiated).
    var trackedStreamCount: Int { get }
    /// Opens a stream and negotiates the first of `protocols` the remote supports.
    func openStream(protocols: [String]) -> EventLoopFuture<MuxedStream>
    /// Closes the connection; pending and later operations fail with `error`.
    func closeGracefully(_ error: TransportError) -> EventLoopFuture<Void>
    /// The reader took `bytes` of the stream's data: the remote may send more.
    func consumed(streamID: UInt32, bytes: Int)
    /// The reader reached the end of the stream.
    func endOfStreamRead(streamID: UInt32)
    /// Takes a write counted in `credit`; a failure goes to the credit.
    func write(streamID: UInt32, data: ByteBuffer, credit: StreamWriteCredit)
    func closeWrite(streamID: UInt32) -> EventLoopFuture<Void>
    func reset(streamID: UInt32)
    func discardInbound(streamID: UInt32)
}

/// A secured, multiplexed connection to one remote peer, whatever carries it
/// (TCP, WebSocket, in-memory) and whichever security protocol and muxer were
/// negotiated.
public final class Connection: Sendable, CustomStringConvertible {
    public let localPeer: PeerID
    public let remotePeer: PeerID
    public let remotePublicKey: PublicKey
    public let direction: ConnectionDirection
    /// The remote's address as we see it, transport included (`/ip4/.../tcp/N`,
    /// `/ip4/.../tcp/N/ws`, `/memory/N`), without `/p2p`.
    public let remoteAddress: Multiaddr
    public let localAddress: Multiaddr?
    /// The transport's name (`tcp`, `ws`, `memory`).
    public let transport: String
    /// Whether the connection runs through a relay (`/p2p-circuit`), as rust's
    /// `ConnectedPoint::is_relayed` and go's `Stat().Limited` tell.
    public var isRelayed: Bool { transport == Self.relayedTransport }
    /// The transport name of relayed connections (the circuit transport's).
    public static let relayedTransport = "p2p-circuit"
    /// The negotiated security protocol (`/noise`, `/tls/1.0.0`).
    public let security: String
    /// The negotiated muxer (`/yamux/1.0.0`).
    public let muxer: String
    public let id: UInt64

    let driver: NIOLoopBound<any StreamMuxerDriver>
    public let eventLoop: EventLoop
    /// Completes when the connection has closed, for whatever reason.
    public let closeFuture: EventLoopFuture<Void>
    private let active = Atomic<Bool>(true)
    /// The channel under a channel-based transport (for tests of socket behaviour).
    let channel: Channel?

    package init(
        id: UInt64, localPeer: PeerID, remotePeer: PeerID, remotePublicKey: PublicKey,
        direction: ConnectionDirection, remoteAddress: Multiaddr, localAddress: Multiaddr?,
        transport: String, security: String, muxer: String,
        driver: NIOLoopBound<any StreamMuxerDriver>, closeFuture: EventLoopFuture<Void>, channel: Channel?
    ) {
        self.channel = channel
        self.id = id
        self.localPeer = localPeer
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.direction = direction
        self.remoteAddress = remoteAddress
        self.localAddress = localAddress
        self.transport = transport
        self.security = security
        self.muxer = muxer
        self.driver = driver
        self.eventLoop = closeFuture.eventLoop
        self.closeFuture = closeFuture
    }

    public var isActive: Bool { active.load(ordering: .acquiring) }

    package func markClosed() {
        active.store(false, ordering: .releasing)
    }

    /// How many streams the connection still tracks (finished ones are dropped).
    func trackedStreamCount() async throws -> Int {
        let driver = self.driver
        return try await eventLoop.submit { driver.value.trackedStreamCount }.get()
    }

    /// Streams open now (negotiating or negotiated), for idleness checks.
    public func streamCount() async throws -> Int {
        try await trackedStreamCount()
    }

    /// Opens a stream and negotiates the first of `protocols` the remote supports.
    public func newStream(protocols: [String]) async throws -> MuxedStream {
        let driver = self.driver
        return try await eventLoop.flatSubmit {
            driver.value.openStream(protocols: protocols)
        }.get()
    }

    /// Closes the connection (the muxer's go-away, then the byte stream);
    /// pending and later operations fail with `reason`.
    public func close(reason: TransportError = .connectionClosed) async {
        let driver = self.driver
        try? await eventLoop.flatSubmit {
            driver.value.closeGracefully(reason)
        }.get()
    }

    public var description: String {
        "connection #\(id) \(direction.rawValue) \(remotePeer) at \(remoteAddress) (\(security), \(muxer))"
    }
}

/// One stream of a connection with its negotiated protocol.
///
/// Reads return data in the order it arrived and nil once the remote closed its
/// write side; writes wait while the remote's receive window is full (flow control).
public final class MuxedStream: Sendable, CustomStringConvertible {
    public let streamID: UInt32
    public let protocolID: String
    public let connection: Connection
    package let inbox: StreamInbox
    package let credit: StreamWriteCredit

    package init(streamID: UInt32, protocolID: String, connection: Connection, inbox: StreamInbox, credit: StreamWriteCredit) {
        self.streamID = streamID
        self.protocolID = protocolID
        self.connection = connection
        self.inbox = inbox
        self.credit = credit
    }

    public var remotePeer: PeerID { connection.remotePeer }

    /// The next chunk of data, or nil at the end of the stream.
    public func read() async throws -> ByteBuffer? {
        let (chunk, report) = try await inbox.next()
        let driver = connection.driver
        let id = streamID
        if chunk == nil {
            connection.eventLoop.execute { driver.value.endOfStreamRead(streamID: id) }
        } else if report > 0 {
            connection.eventLoop.execute { driver.value.consumed(streamID: id, bytes: report) }
        }
        return chunk
    }

    /// Writes data; suspends while the stream's send queue is full. The data is
    /// handed to the connection without waiting for it to be sent; an error
    /// (reset, closed connection) is thrown by this write, the next one or `closeWrite`.
    public func write(_ data: ByteBuffer) async throws {
        try await credit.acquire(data.readableBytes)
        let driver = connection.driver
        let id = streamID
        let credit = self.credit
        connection.eventLoop.execute {
            driver.value.write(streamID: id, data: data, credit: credit)
        }
    }

    public func write(_ bytes: [UInt8]) async throws {
        try await write(ByteBuffer(bytes: bytes))
    }

    /// Half-closes: we send no more data, the remote may still write. Throws
    /// the error of an earlier write that failed after it was handed over.
    public func closeWrite() async throws {
        try throwWriteFailure()
        let driver = connection.driver
        let id = streamID
        try await connection.eventLoop.flatSubmit {
            driver.value.closeWrite(streamID: id)
        }.get()
        try throwWriteFailure()
    }

    /// A write failure other than our own half-close.
    private func throwWriteFailure() throws {
        guard let error = credit.error else { return }
        if case .streamClosedForWriting = error { return }
        throw error
    }

    /// Abruptly ends both directions.
    public func reset() {
        let driver = connection.driver
        let id = streamID
        connection.eventLoop.execute {
            driver.value.reset(streamID: id)
        }
    }

    /// Closes the write side and discards whatever the remote still sends.
    public func close() async {
        try? await closeWrite()
        let driver = connection.driver
        let id = streamID
        connection.eventLoop.execute {
            driver.value.discardInbound(streamID: id)
        }
    }

    public var description: String {
        "stream \(streamID) \(protocolID) with \(connection.remotePeer)"
    }
}
