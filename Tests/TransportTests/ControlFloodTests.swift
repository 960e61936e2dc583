import Host
import Identity
import Multiformats
import Multistream
import NIOCore
import NIOPosix
import Noise
import TestSupport
import Transport
import XCTest

/// Found 2 of issue 14 over a real socket: after a real handshake, a peer
/// stops reading and makes us answer (opens and resets streams) as fast as it
/// can. The node closes the connection instead of queueing the answers.
final class ControlFloodTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func testPeerThatDoesNotReadItsRepliesIsDisconnected() async throws {
        let (server, address) = try await makeTestHost(group: group)
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not a TCP address: \(address)") }
        // A small receive buffer and no reads: our replies back up at once.
        let channel = try await ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.so_rcvbuf), value: 4096)
            .connect(host: "127.0.0.1", port: Int(port)) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let started = ContinuousClock.now
        let flooded = try await withDeadline(30) {
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                var transport = try await Self.handshake(&iterator, outbound)
                var plain = ByteBuffer()
                var muxer = MultistreamNegotiation.initiator(protocols: ["/yamux/1.0.0"])
                muxer.start(into: &plain)
                var cipher = ByteBuffer()
                try transport.encrypt(&plain, into: &cipher)
                try await outbound.write(cipher)
                // From here on nothing is read. Open and reset streams until the server hangs up.
                var id: UInt32 = 1
                var sent = 0
                while ContinuousClock.now - started < .seconds(25) {
                    var frames = ByteBuffer()
                    for _ in 0..<2000 {
                        frames.writeBytes(Self.header(type: 1, flags: 1, stream: id))  // SYN
                        frames.writeBytes(Self.header(type: 1, flags: 8, stream: id))  // RST
                        id &+= 2
                    }
                    var cipher = ByteBuffer()
                    try transport.encrypt(&frames, into: &cipher)
                    do {
                        try await outbound.write(cipher)
                    } catch {
                        return (sent, true)
                    }
                    sent += cipher.readableBytes
                }
                return (sent, false)
            }
        }
        let elapsed = ContinuousClock.now - started
        XCTAssertTrue(flooded.1, "still connected after \(flooded.0) bytes of open/reset frames in \(elapsed)")
        print("control flood: disconnected after \(flooded.0) bytes in \(elapsed)")
        let deadline = ContinuousClock.now + .seconds(10)
        while !server.connections.isEmpty && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        XCTAssertTrue(server.connections.isEmpty, "the server kept the connection")
        // Still serving an honest peer.
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let echoed = try await echo(patternBytes(count: 100_000, seed: 5), over: connection)
        XCTAssertEqual(echoed, patternBytes(count: 100_000, seed: 5))
        await client.close()
        await server.close()
    }

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
    static func handshake(
        _ iterator: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
        _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> NoiseTransport {
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
