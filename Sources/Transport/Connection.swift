import Identity
import Multiformats
import NIOCore

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

/// A secured (Noise), multiplexed (Yamux) connection to one remote peer.
public final class Connection: Sendable, CustomStringConvertible {
    public let localPeer: PeerID
    public let remotePeer: PeerID
    public let remotePublicKey: PublicKey
    public let direction: ConnectionDirection
    /// The remote's TCP address as we see it (no `/p2p` part).
    public let remoteAddress: Multiaddr
    public let localAddress: Multiaddr?
    public let id: UInt64

    let handler: NIOLoopBound<ConnectionHandler>
    let channel: Channel

    init(
        id: UInt64, localPeer: PeerID, remotePeer: PeerID, remotePublicKey: PublicKey,
        direction: ConnectionDirection, remoteAddress: Multiaddr, localAddress: Multiaddr?,
        handler: NIOLoopBound<ConnectionHandler>, channel: Channel
    ) {
        self.id = id
        self.localPeer = localPeer
        self.remotePeer = remotePeer
        self.remotePublicKey = remotePublicKey
        self.direction = direction
        self.remoteAddress = remoteAddress
        self.localAddress = localAddress
        self.handler = handler
        self.channel = channel
    }

    public var eventLoop: EventLoop { channel.eventLoop }

    /// Completes when the connection has closed, for whatever reason.
    public var closeFuture: EventLoopFuture<Void> { channel.closeFuture }

    public var isActive: Bool { channel.isActive }

    /// How many streams the connection still tracks (finished ones are dropped).
    public func trackedStreamCount() async throws -> Int {
        let handler = self.handler
        return try await eventLoop.submit { handler.value.trackedStreamCount }.get()
    }

    /// Opens a stream and negotiates the first of `protocols` the remote supports.
    public func newStream(protocols: [String]) async throws -> MuxedStream {
        let handler = self.handler
        return try await eventLoop.flatSubmit {
            handler.value.openStream(protocols: protocols)
        }.get()
    }

    /// Closes the connection: Yamux go-away, then TCP close.
    public func close() async {
        let handler = self.handler
        try? await eventLoop.flatSubmit {
            handler.value.closeGracefully()
        }.get()
    }

    public var description: String {
        "connection #\(id) \(direction.rawValue) \(remotePeer) at \(remoteAddress)"
    }
}

/// One Yamux stream with its negotiated protocol.
///
/// Reads return data in the order it arrived and nil once the remote closed its
/// write side; writes wait while the remote's receive window is full (flow control).
public final class MuxedStream: Sendable, CustomStringConvertible {
    public let streamID: UInt32
    public let protocolID: String
    public let connection: Connection
    let inbox: StreamInbox
    let credit: StreamWriteCredit

    init(streamID: UInt32, protocolID: String, connection: Connection, inbox: StreamInbox, credit: StreamWriteCredit) {
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
        let handler = connection.handler
        let id = streamID
        if chunk == nil {
            connection.eventLoop.execute { handler.value.endOfStreamRead(streamID: id) }
        } else if report > 0 {
            connection.eventLoop.execute { handler.value.consumed(streamID: id, bytes: report) }
        }
        return chunk
    }

    /// Writes data; suspends while the stream's send queue is full. The data is
    /// handed to the connection without waiting for it to be sent; an error
    /// (reset, closed connection) is thrown by this write, the next one or `closeWrite`.
    public func write(_ data: ByteBuffer) async throws {
        try await credit.acquire(data.readableBytes)
        let handler = connection.handler
        let id = streamID
        let credit = self.credit
        connection.eventLoop.execute {
            handler.value.write(streamID: id, data: data, credit: credit)
        }
    }

    public func write(_ bytes: [UInt8]) async throws {
        try await write(ByteBuffer(bytes: bytes))
    }

    /// Half-closes: we send no more data, the remote may still write. Throws
    /// the error of an earlier write that failed after it was handed over.
    public func closeWrite() async throws {
        try throwWriteFailure()
        let handler = connection.handler
        let id = streamID
        try await connection.eventLoop.flatSubmit {
            handler.value.closeWrite(streamID: id)
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
        let handler = connection.handler
        let id = streamID
        connection.eventLoop.execute {
            handler.value.reset(streamID: id)
        }
    }

    /// Closes the write side and discards whatever the remote still sends.
    public func close() async {
        try? await closeWrite()
        let handler = connection.handler
        let id = streamID
        connection.eventLoop.execute {
            handler.value.discardInbound(streamID: id)
        }
    }

    public var description: String {
        "stream \(streamID) \(protocolID) with \(connection.remotePeer)"
    }
}
