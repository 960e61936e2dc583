import Host
import Identity
import Logging
import Multistream
import NIOCore
import Synchronization
import Transport

/// Limits of a request-response protocol, on both sides.
public struct RequestResponseConfiguration: Sendable {
    /// For a whole exchange: from dialing to the response (requester), from the
    /// stream's arrival to the response sent (responder).
    public var timeout: Duration = .seconds(10)
    /// Largest request, in bytes, we send or accept.
    public var maxRequestSize = 1024 * 1024
    /// Largest response, in bytes, we send or accept.
    public var maxResponseSize = 10 * 1024 * 1024
    /// Inbound requests served at once for one peer; more are refused.
    public var maxConcurrentInboundPerPeer = 16
    /// Inbound requests served at once in total (py-libp2p's default); more are refused.
    public var maxConcurrentInbound = 128

    public init() {}
}

/// Who sent an inbound request, and on which protocol.
public struct RequestContext: Sendable {
    public let peer: PeerID
    public let protocolID: String
    public let connection: Connection
}

/// Why a request got no response.
public enum RequestResponseError: Error, CustomStringConvertible, Sendable {
    /// No connection to the peer could be made.
    case dialFailed(PeerID, underlying: any Error)
    /// The peer speaks none of the protocols.
    case unsupportedProtocols([String], underlying: any Error)
    /// The exchange did not finish in time.
    case timeout(seconds: Double)
    /// Our request is larger than the limit (it was not sent).
    case requestTooLarge(size: Int, limit: Int)
    /// The peer's response announced more bytes than the limit.
    case responseTooLarge(size: UInt64, limit: Int)
    /// The peer reset the stream (a refusal, a failed handler, or a limit hit).
    case reset
    /// The peer closed the stream without a response.
    case noResponse
    /// The response could not be decoded.
    case malformedResponse(underlying: any Error)
    /// The request could not be encoded.
    case encodingFailed(underlying: any Error)
    /// The stream or connection failed.
    case transport(underlying: any Error)

    public var underlying: (any Error)? {
        switch self {
        case .dialFailed(_, let error), .unsupportedProtocols(_, let error), .malformedResponse(let error),
            .encodingFailed(let error), .transport(let error):
            return error
        default:
            return nil
        }
    }

    public var description: String {
        switch self {
        case .dialFailed(let peer, let error): return "request: cannot reach \(peer): \(error)"
        case .unsupportedProtocols(let protocols, _): return "request: the peer speaks none of \(protocols.joined(separator: ", "))"
        case .timeout(let seconds): return "request: no response within \(seconds) s"
        case .requestTooLarge(let size, let limit): return "request of \(size) bytes exceeds the limit of \(limit)"
        case .responseTooLarge(let size, let limit): return "response of \(size) bytes exceeds the limit of \(limit)"
        case .reset: return "request: the peer reset the stream"
        case .noResponse: return "request: the peer closed the stream without a response"
        case .malformedResponse(let error): return "request: malformed response: \(error)"
        case .encodingFailed(let error): return "request: cannot encode the request: \(error)"
        case .transport(let error): return "request: \(error)"
        }
    }
}

/// A request-response protocol on a host (as rust-libp2p's `request-response`):
/// each request on a stream of its own, one unsigned-varint length-prefixed
/// message each way. The requester half-closes after its request; the
/// responder answers and closes. Wire-compatible with py-libp2p's
/// `RequestResponse` and rust-libp2p's length-prefixed codecs.
public final class RequestResponse<Codec: RequestResponseCodec>: Sendable {
    /// Answers one request (throwing resets the stream: the requester sees `.reset`).
    public typealias Handler = @Sendable (Codec.Request, RequestContext) async throws -> Codec.Response

    public let host: Libp2pHost
    /// Offered in order when requesting; all served when serving.
    public let protocols: [String]
    public let codec: Codec
    public let configuration: RequestResponseConfiguration
    private let admission: Mutex<InboundAdmission>
    private let refusals = Atomic<Int>(0)
    private let logger = Logger(label: "p2pchat.request-response")
    /// The inbound requests being answered, ended by `stop`.
    let tasks = ServiceTasks()

    public init(host: Libp2pHost, protocols: [String], codec: Codec, configuration: RequestResponseConfiguration = .init()) {
        precondition(!protocols.isEmpty, "a request-response service needs a protocol id")
        self.host = host
        self.protocols = protocols
        self.codec = codec
        self.configuration = configuration
        admission = Mutex(
            InboundAdmission(perPeer: configuration.maxConcurrentInboundPerPeer, total: configuration.maxConcurrentInbound))
    }

    /// Inbound requests refused so far because a concurrency limit was reached.
    public var refusedInbound: Int { refusals.load(ordering: .relaxed) }

    // MARK: Requester

    /// Sends `request` to `peer` (connecting if needed) and waits for its response.
    public func send(_ request: Codec.Request, to peer: PeerID) async throws(RequestResponseError) -> Codec.Response {
        let payload: [UInt8]
        do {
            payload = try codec.encode(request: request)
        } catch {
            throw .encodingFailed(underlying: error)
        }
        guard payload.count <= configuration.maxRequestSize else {
            throw .requestTooLarge(size: payload.count, limit: configuration.maxRequestSize)
        }
        let opened = Mutex<MuxedStream?>(nil)
        do {
            let response = try await withTimeout(configuration.timeout, "request to \(peer)") {
                [host, protocols, configuration] in
                let connection: Connection
                do {
                    connection = try await host.connect(to: peer)
                } catch {
                    throw RequestResponseError.dialFailed(peer, underlying: error)
                }
                let stream = try await Self.openStream(on: connection, protocols: protocols)
                opened.withLock { $0 = stream }
                var message = ByteBuffer()
                message.writeLengthPrefixed(payload)
                try await stream.write(message)
                try await stream.closeWrite()
                var reader = StreamReader(stream)
                guard let response = try await reader.readLengthPrefixed(maxLength: configuration.maxResponseSize) else {
                    throw RequestResponseError.noResponse
                }
                await stream.close()
                return response
            }
            do {
                return try codec.decode(response: response)
            } catch {
                throw RequestResponseError.malformedResponse(underlying: error)
            }
        } catch {
            opened.withLock { $0 }?.reset()
            throw Self.requesterError(error, limit: configuration.maxResponseSize)
        }
    }

    private static func openStream(on connection: Connection, protocols: [String]) async throws -> MuxedStream {
        do {
            return try await connection.newStream(protocols: protocols)
        } catch TransportError.negotiationFailed(_, let underlying) where underlying is MultistreamError {
            throw RequestResponseError.unsupportedProtocols(protocols, underlying: underlying)
        }
    }

    private static func requesterError(_ error: any Error, limit: Int) -> RequestResponseError {
        switch error {
        case let error as RequestResponseError: return error
        case let error as TimeoutError: return .timeout(seconds: error.seconds)
        case StreamReader.ReadError.messageTooLarge(let length, _): return .responseTooLarge(size: length, limit: limit)
        case StreamReader.ReadError.endOfStream: return .noResponse
        case TransportError.streamReset: return .reset
        default: return .transport(underlying: error)
        }
    }

    // MARK: Responder

    /// Serves every protocol of the service with `handler` (the service's
    /// start; `stop` ends it). A request that fails to decode, a handler that
    /// throws, a response over the limit or a concurrency limit reached resets
    /// the stream (the requester sees `.reset`).
    public func serve(_ handler: @escaping Handler) {
        for protocolID in protocols {
            host.setStreamHandler(protocolID) { [self] stream in
                await tasks.serve(stream) { stream in await self.respond(on: stream, handler: handler) }
            }
        }
    }

    /// Stops serving: later inbound streams for the protocols are refused at
    /// negotiation; requests being answered are reset and their handlers
    /// cancelled. Returns once every one has ended. Our own requests (`send`)
    /// run in their callers' tasks and are not affected.
    public func stop() async {
        for protocolID in protocols { host.removeStreamHandler(protocolID) }
        await tasks.stop()
    }

    private func respond(on stream: MuxedStream, handler: @escaping Handler) async {
        let peer = stream.remotePeer
        if let refusal = admission.withLock({ $0.admit(peer) }) {
            refusals.add(1, ordering: .relaxed)
            logger.debug("request refused", metadata: ["peer": "\(peer)", "protocol": "\(stream.protocolID)", "why": "\(refusal)"])
            stream.reset()
            return
        }
        defer { admission.withLock { $0.release(peer) } }
        let context = RequestContext(peer: peer, protocolID: stream.protocolID, connection: stream.connection)
        do {
            try await withTimeout(configuration.timeout, "request from \(peer)") { [codec, configuration] in
                var reader = StreamReader(stream)
                guard let bytes = try await reader.readLengthPrefixed(maxLength: configuration.maxRequestSize) else {
                    throw StreamReader.ReadError.endOfStream(wanted: 1, had: 0)
                }
                let response = try codec.encode(response: try await handler(try codec.decode(request: bytes), context))
                guard response.count <= configuration.maxResponseSize else {
                    throw RequestResponseError.requestTooLarge(size: response.count, limit: configuration.maxResponseSize)
                }
                var message = ByteBuffer()
                message.writeLengthPrefixed(response)
                try await stream.write(message)
                await stream.close()
            }
        } catch {
            logger.debug("request failed", metadata: ["peer": "\(peer)", "protocol": "\(stream.protocolID)", "error": "\(error)"])
            stream.reset()
        }
    }
}
