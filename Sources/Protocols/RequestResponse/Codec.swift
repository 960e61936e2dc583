import NIOCore
import SwiftProtobuf

/// How one request-response protocol turns its requests and responses into
/// the bytes of one message, and back. Framing (an unsigned-varint length
/// prefix) and size limits are the service's, not the codec's.
public protocol RequestResponseCodec: Sendable {
    associatedtype Request: Sendable
    associatedtype Response: Sendable

    func encode(request: Request) throws -> [UInt8]
    func decode(request bytes: ByteBuffer) throws -> Request
    func encode(response: Response) throws -> [UInt8]
    func decode(response bytes: ByteBuffer) throws -> Response
}

/// Requests and responses are plain bytes (py-libp2p's `BytesCodec`).
public struct BytesCodec: RequestResponseCodec {
    public init() {}

    public func encode(request: [UInt8]) -> [UInt8] { request }
    public func decode(request bytes: ByteBuffer) -> [UInt8] { Array(bytes.readableBytesView) }
    public func encode(response: [UInt8]) -> [UInt8] { response }
    public func decode(response bytes: ByteBuffer) -> [UInt8] { Array(bytes.readableBytesView) }
}

/// Requests and responses are protobuf messages.
public struct ProtobufCodec<Request: SwiftProtobuf.Message & Sendable, Response: SwiftProtobuf.Message & Sendable>:
    RequestResponseCodec
{
    public init() {}

    public func encode(request: Request) throws -> [UInt8] { try request.serializedBytes() }
    public func decode(request bytes: ByteBuffer) throws -> Request {
        try Request(serializedBytes: Array(bytes.readableBytesView))
    }
    public func encode(response: Response) throws -> [UInt8] { try response.serializedBytes() }
    public func decode(response bytes: ByteBuffer) throws -> Response {
        try Response(serializedBytes: Array(bytes.readableBytesView))
    }
}
