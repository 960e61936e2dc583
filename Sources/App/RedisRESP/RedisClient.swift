import NIOCore
import NIOPosix

/// Errors of the Redis client.
public enum RedisError: Error, Sendable, CustomStringConvertible {
    /// `host:port` could not be parsed.
    case badAddress(String)
    /// The TCP connection could not be made.
    case connectFailed(String, underlying: String)
    /// The connection closed (or failed) before the reply came.
    case connectionClosed
    /// The server's bytes are not RESP2 within our limits.
    case protocolViolation(RESPError)
    /// The server answered with an error reply.
    case server(String)
    /// A reply of a shape the command never has.
    case unexpectedReply(command: String, RESPValue)

    public var description: String {
        switch self {
        case .badAddress(let text): return "bad redis address \"\(text)\" (want host:port)"
        case .connectFailed(let address, let why): return "cannot connect to redis at \(address): \(why)"
        case .connectionClosed: return "the redis connection closed before the reply"
        case .protocolViolation(let error): return "redis: \(error)"
        case .server(let message): return "redis answered: \(message)"
        case .unexpectedReply(let command, let value): return "redis: unexpected reply to \(command): \(value)"
        }
    }
}

/// Where a Redis server listens: `host:port`, `[v6]:port`, or `host` (port 6379).
public struct RedisAddress: Sendable, Equatable, CustomStringConvertible {
    public let host: String
    public let port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    public init(parsing text: String) throws(RedisError) {
        var rest = Substring(text)
        if rest.hasPrefix("redis://") { rest = rest.dropFirst("redis://".count) }
        if rest.hasSuffix("/") { rest = rest.dropLast() }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else { throw .badAddress(text) }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw .badAddress(text) }
                portText = after.dropFirst()
            }
        } else if let colon = rest.lastIndex(of: ":"), rest.firstIndex(of: ":") == colon {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest  // a bare host, or a bare IPv6 literal
        }
        var port = 6379
        if let portText {
            guard let parsed = Int(portText), (1...65535).contains(parsed) else { throw .badAddress(text) }
            port = parsed
        }
        guard !host.isEmpty else { throw .badAddress(text) }
        self.host = String(host)
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A minimal Redis client on SwiftNIO: one connection, commands answered in order.
/// Only what the transport-interop contract needs (PING, DEL, RPUSH, BLPOP).
public final class RedisClient: Sendable {
    private let channel: any Channel
    public let address: RedisAddress

    private init(channel: any Channel, address: RedisAddress) {
        self.channel = channel
        self.address = address
    }

    /// Connects (names are resolved by getaddrinfo), giving up after `connectTimeout`.
    public static func connect(
        to address: RedisAddress, group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        connectTimeout: TimeAmount = .seconds(5), decoder: RESPDecoder = .init()
    ) async throws(RedisError) -> RedisClient {
        let bootstrap = ClientBootstrap(group: group)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(RESPFrameDecoder(decoder: decoder)))
                    try channel.pipeline.syncOperations.addHandler(RESPReplyHandler())
                }
            }
        do {
            let channel = try await bootstrap.connect(host: address.host, port: address.port).get()
            return RedisClient(channel: channel, address: address)
        } catch {
            throw .connectFailed(address.description, underlying: "\(error)")
        }
    }

    /// Sends a command; its reply. An error reply throws `RedisError.server`.
    public func send(_ arguments: [String]) async throws(RedisError) -> RESPValue {
        let promise = channel.eventLoop.makePromise(of: RESPValue.self)
        let request = RESPRequest(bytes: RESPEncoder.command(arguments), reply: promise)
        // A write that fails (the channel closed) never reaches the reply handler: fail the reply
        // here too (completing a completed promise again does nothing).
        let written = channel.eventLoop.makePromise(of: Void.self)
        written.futureResult.whenFailure { _ in promise.fail(RedisError.connectionClosed) }
        channel.writeAndFlush(request, promise: written)
        let reply: RESPValue
        do {
            reply = try await promise.futureResult.get()
        } catch let error as RedisError {
            throw error
        } catch {
            throw .connectionClosed
        }
        if case .error(let message) = reply { throw .server(message) }
        return reply
    }

    /// PING: true on PONG.
    public func ping() async throws(RedisError) {
        let reply = try await send(["PING"])
        guard reply.text == "PONG" else { throw .unexpectedReply(command: "PING", reply) }
    }

    /// DEL key: how many keys were removed.
    @discardableResult
    public func delete(_ key: String) async throws(RedisError) -> Int64 {
        let reply = try await send(["DEL", key])
        guard case .integer(let count) = reply else { throw .unexpectedReply(command: "DEL", reply) }
        return count
    }

    /// RPUSH key value: the list's length after the push.
    @discardableResult
    public func rpush(_ key: String, _ value: String) async throws(RedisError) -> Int64 {
        let reply = try await send(["RPUSH", key, value])
        guard case .integer(let length) = reply else { throw .unexpectedReply(command: "RPUSH", reply) }
        return length
    }

    /// BLPOP key timeout: the popped value, or nil when `timeoutSeconds` passed
    /// first (0 waits for ever, as in Redis).
    public func blpop(_ key: String, timeoutSeconds: Int) async throws(RedisError) -> String? {
        let reply = try await send(["BLPOP", key, String(timeoutSeconds)])
        switch reply {
        case .array(nil), .bulkString(nil): return nil
        case .array(let elements?) where elements.count == 2:
            guard let value = elements[1].text else { throw .unexpectedReply(command: "BLPOP", reply) }
            return value
        default:
            throw .unexpectedReply(command: "BLPOP", reply)
        }
    }

    public func close() async {
        try? await channel.close()
    }
}

/// A command's bytes and the promise its reply fulfils.
struct RESPRequest: Sendable {
    let bytes: [UInt8]
    let reply: EventLoopPromise<RESPValue>
}

/// Cuts the inbound bytes into RESP values.
struct RESPFrameDecoder: ByteToMessageDecoder {
    typealias InboundOut = RESPValue
    let decoder: RESPDecoder

    mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        let result = try buffer.withUnsafeReadableBytes { bytes throws(RESPError) in try decoder.decode(bytes) }
        guard let (value, consumed) = result else { return .needMoreData }
        buffer.moveReaderIndex(forwardBy: consumed)
        context.fireChannelRead(wrapInboundOut(value))
        return .continue
    }

    mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }
}

/// Matches replies to requests in order; fails every pending request when the
/// connection ends or the decoder finds garbage (the connection is then closed).
final class RESPReplyHandler: ChannelDuplexHandler {
    typealias InboundIn = RESPValue
    typealias OutboundIn = RESPRequest
    typealias OutboundOut = ByteBuffer

    private var pending: [EventLoopPromise<RESPValue>] = []
    private var failure: RedisError?

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let request = unwrapOutboundIn(data)
        if let failure {
            request.reply.fail(failure)
            promise?.fail(failure)
            return
        }
        pending.append(request.reply)
        context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: request.bytes)), promise: promise)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let value = unwrapInboundIn(data)
        guard !pending.isEmpty else {
            // A reply nobody asked for: the stream is out of step; stop here.
            failAll(.unexpectedReply(command: "(none)", value), context: context)
            return
        }
        pending.removeFirst().succeed(value)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if let decoding = error as? RESPError {
            failAll(.protocolViolation(decoding), context: context)
        } else {
            failAll(.connectionClosed, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        failAll(.connectionClosed, context: nil)
        context.fireChannelInactive()
    }

    private func failAll(_ error: RedisError, context: ChannelHandlerContext?) {
        if failure == nil { failure = error }
        let waiting = pending
        pending.removeAll()
        for promise in waiting { promise.fail(error) }
        context?.close(promise: nil)
    }
}
