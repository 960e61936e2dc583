import NIOCore
import Synchronization
import Transport

/// An RPC on its way to one peer or several. The router sends one RPC value to
/// every peer a message goes to; the core wraps it once, so it is encoded once,
/// by the first sender that writes it (off the core's actor), and every peer's
/// stream gets the same bytes.
final class OutboundRPC: Sendable {
    let rpc: PubSubRPC
    /// The length-prefixed encoding, made on first use.
    private let frame = Mutex<ByteBuffer?>(nil)
    private let encodings: RPCEncodingCounter?

    init(_ rpc: PubSubRPC, encodings: RPCEncodingCounter? = nil) {
        self.rpc = rpc
        self.encodings = encodings
    }

    /// The RPC with its length prefix, as written on a stream. Encoded under
    /// the lock: a second sender waits for these bytes rather than encoding again.
    var lengthPrefixed: ByteBuffer {
        frame.withLock { frame in
            if let frame { return frame }
            var encoded = ByteBuffer()
            encoded.writeLengthPrefixed(PubSubCodec.encode(rpc))
            encodings?.add()
            frame = encoded
            return encoded
        }
    }
}

/// How many RPCs a service encoded (what the encode-once test counts).
final class RPCEncodingCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add() { count.add(1, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}
