import Multiformats
import Multistream
import NIOCore
import NIOPosix
import Noise
import Transport

/// A hand-driven peer for tests of how a node treats a peer that misbehaves
/// below the muxer: it connects over TCP with a 4 KiB receive buffer (what it
/// does not read backs up at once), runs multistream `/noise` and the Noise XX
/// handshake as initiator, proposes `/yamux/1.0.0`, and then hands `body` the
/// socket and the Noise transport, to send Yamux frames (`header`) as it likes.
enum RawYamuxPeer {
    typealias Inbound = NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    typealias Outbound = NIOAsyncChannelOutboundWriter<ByteBuffer>

    static func run<T: Sendable>(
        to address: Multiaddr, group: EventLoopGroup,
        _ body: (inout Inbound, Outbound, inout NoiseTransport) async throws -> T
    ) async throws -> T {
        guard case .tcp(let port) = address.components[1] else { throw TransportError.unsupportedAddress("\(address)") }
        let channel = try await ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4096)
            .connect(host: "127.0.0.1", port: Int(port)) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        return try await channel.executeThenClose { inbound, outbound in
            var iterator = inbound.makeAsyncIterator()
            var transport = try await handshake(&iterator, outbound)
            var plain = ByteBuffer()
            var muxer = MultistreamNegotiation.initiator(protocols: ["/yamux/1.0.0"])
            muxer.start(into: &plain)
            var cipher = ByteBuffer()
            try transport.encrypt(&plain, into: &cipher)
            try await outbound.write(cipher)
            return try await body(&iterator, outbound, &transport)
        }
    }

    /// A Yamux frame header (type, flags, stream id, length), big-endian.
    static func header(type: UInt8, flags: UInt16, stream: UInt32, length: UInt32 = 0) -> [UInt8] {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(type)
        buffer.writeInteger(flags)
        buffer.writeInteger(stream)
        buffer.writeInteger(length)
        return Array(buffer.readableBytesView)
    }

    /// Multistream /noise and the Noise XX handshake as initiator, raw.
    static func handshake(_ iterator: inout Inbound, _ outbound: Outbound) async throws -> NoiseTransport {
        var leftover = try await BadPeerTests.negotiateNoise(&iterator, outbound)
        var handshake = NoiseHandshake(initiator: true, identity: .generateEd25519())
        var out = ByteBuffer()
        handshake.start(into: &out)
        try await outbound.write(out)
        while true {
            var toSend = ByteBuffer()
            let result = try handshake.receive(&leftover, output: &toSend)
            if toSend.readableBytes > 0 { try await outbound.write(toSend) }
            if let result { return result.transport }
            guard let next = try await iterator.next() else { throw TransportError.connectionClosed }
            leftover = next
        }
    }
}
