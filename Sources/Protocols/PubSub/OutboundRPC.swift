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
    private let counters: OutboundCounters?

    init(_ rpc: PubSubRPC, counters: OutboundCounters? = nil) {
        self.rpc = rpc
        self.counters = counters
    }

    /// The RPC with its length prefix, as written on a stream. Encoded under
    /// the lock: a second sender waits for these bytes rather than encoding again.
    var lengthPrefixed: ByteBuffer {
        frame.withLock { frame in
            if let frame { return frame }
            var encoded = ByteBuffer()
            encoded.writeLengthPrefixed(PubSubCodec.encode(rpc))
            counters?.encodedRPCs.add(1, ordering: .relaxed)
            frame = encoded
            return encoded
        }
    }
}

/// What a service's senders count as they go, off the core's actor: RPCs
/// encoded (each once, however many peers it goes to) and bytes written.
final class OutboundCounters: Sendable {
    let encodedRPCs = Atomic<Int>(0)
    let bytesSent = Atomic<Int>(0)
}
