import NIOCore
import NIOPosix
import Noise

// What a secured stream could reach at best: raw TCP, TCP with Noise sealing, ChaChaPoly alone.

// MARK: Raw NIO TCP (the ceiling)

/// Counts received bytes (opening Noise frames first when given a transport);
/// completes the promise when `expected` have arrived.
final class SinkHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    let expected: Int
    let done: EventLoopPromise<Void>
    var transport: NoiseTransport?
    var received = 0
    var plaintexts: [ByteBuffer] = []
    init(expected: Int, done: EventLoopPromise<Void>, transport: NoiseTransport? = nil) {
        self.expected = expected
        self.done = done
        self.transport = transport
    }
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if transport != nil {
            plaintexts.removeAll(keepingCapacity: true)
            try! transport!.decrypt(&bytes, into: &plaintexts)
            for plain in plaintexts { received += plain.readableBytes }
        } else {
            received += bytes.readableBytes
        }
        if received >= expected { done.succeed(()) }
    }
}

/// Writes `total` bytes as fast as the socket takes them, sealed in Noise
/// frames when given a transport.
final class SourceHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer
    let total: Int
    var sent = 0
    let payload: ByteBuffer
    var transport: NoiseTransport?
    init(total: Int, transport: NoiseTransport? = nil) {
        self.total = total
        self.transport = transport
        payload = ByteBuffer(repeating: 0x5a, count: chunk)
    }
    func channelActive(context: ChannelHandlerContext) { pump(context: context) }
    func channelWritabilityChanged(context: ChannelHandlerContext) { pump(context: context) }
    func pump(context: ChannelHandlerContext) {
        while context.channel.isWritable && sent < total {
            let size = min(chunk, total - sent)
            var out = payload.getSlice(at: 0, length: size)!
            if transport != nil {
                var frames = context.channel.allocator.buffer(capacity: size + 1024)
                try! transport!.encrypt(pieces: [out], into: &frames)
                out = frames
            }
            context.write(wrapOutboundOut(out), promise: nil)
            sent += size
        }
        context.flush()
    }
}

/// One TCP connection between the two loops moving `totalBytes`; with
/// `sealed`, the sender seals and the receiver opens Noise frames (no Yamux,
/// no streams, no tasks: what a secured stream could reach here at best, with
/// both ends' encryption and the kernel's work sharing this machine's cores).
func tcpThroughput(sealed: Bool) async throws -> Double {
    // Each transport is handed to its end's handler once and used only there, on that end's loop.
    nonisolated(unsafe) let (sealer, opener) = try transportPair()
    let done = serverLoop.makePromise(of: Void.self)
    let server = try await ServerBootstrap(group: serverLoop)
        .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
        .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 65536, maximum: 262_144))
        .childChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    SinkHandler(expected: totalBytes, done: done, transport: sealed ? opener : nil))
            }
        }
        .bind(host: "127.0.0.1", port: 0).get()
    let start = clock.now
    let client = try await ClientBootstrap(group: clientLoop)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .channelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(
                    SourceHandler(total: totalBytes, transport: sealed ? sealer : nil))
            }
        }
        .connect(to: server.localAddress!).get()
    try await done.futureResult.get()
    let elapsed = seconds(clock.now - start)
    try await client.close()
    try await server.close()
    return Double(totalBytes) / elapsed / 1e6
}


// MARK: ChaChaPoly alone (through our Noise transport framing)

/// ChaChaPoly through our Noise framing, one direction at a time: the ceiling
/// of one secured stream (the sender encrypts, the receiver decrypts).
func chachaThroughput() throws -> (encrypt: Double, decrypt: Double) {
    let total = min(totalBytes, 128 * 1024 * 1024)
    let plain = ByteBuffer(repeating: 0x5a, count: chunk)
    // Encryption into one reused buffer, as a connection's output buffer is.
    var (sender, _) = try transportPair()
    var out = ByteBuffer()
    out.reserveCapacity(chunk + 1024)
    var start = clock.now
    var done = 0
    while done < total {
        var piece = plain
        out.clear()
        try sender.encrypt(&piece, into: &out)
        done += chunk
    }
    let encrypt = Double(done) / seconds(clock.now - start) / 1e6
    // Decryption of a run of frames sealed beforehand (untimed).
    var (sealer, receiver) = try transportPair()
    let count = min(total, 32 * 1024 * 1024) / chunk
    var sealed: [ByteBuffer] = []
    for _ in 0..<count {
        var piece = plain
        var frames = ByteBuffer()
        try sealer.encrypt(&piece, into: &frames)
        sealed.append(frames)
    }
    var plaintexts: [ByteBuffer] = []
    start = clock.now
    for var frames in sealed {
        plaintexts.removeAll(keepingCapacity: true)
        try receiver.decrypt(&frames, into: &plaintexts)
    }
    let decrypt = Double(count * chunk) / seconds(clock.now - start) / 1e6
    return (encrypt, decrypt)
}

/// The two ends of a fresh Noise session (initiator's, responder's transport).
func transportPair() throws -> (NoiseTransport, NoiseTransport) {
    var initiator = NoiseHandshake(initiator: true, identity: .generateEd25519())
    var responder = NoiseHandshake(initiator: false, identity: .generateEd25519())
    var toResponder = ByteBuffer()
    initiator.start(into: &toResponder)
    var toInitiator = ByteBuffer()
    _ = try responder.receive(&toResponder, output: &toInitiator)
    var message3 = ByteBuffer()
    let sender = try initiator.receive(&toInitiator, output: &message3)!.transport
    let receiver = try responder.receive(&message3, output: &toInitiator)!.transport
    return (sender, receiver)
}
