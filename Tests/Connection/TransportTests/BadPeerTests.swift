import Host
import Identity
import Multiformats
import Multistream
import NIOCore
import NIOPosix
import Noise
import Ping
import TestSupport
import Transport
import XCTest

/// Peers that misbehave at each layer are disconnected, and the node keeps serving others.
final class BadPeerTests: XCTestCase {
    // The process-wide group, as the host uses by default: it is never shut down,
    // so tasks that outlive a test (identify, handlers) never find a dead loop.
    let group = MultiThreadedEventLoopGroup.singleton

    /// Connects a raw TCP socket, lets `script` talk, and returns whether the
    /// server closed the connection (read reached the end) within the deadline.
    func rawSession(
        to address: Multiaddr,
        _ script: @escaping @Sendable (
            inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator, NIOAsyncChannelOutboundWriter<ByteBuffer>
        ) async throws -> Void
    ) async throws -> Bool {
        guard case .tcp(let port) = address.components[1] else { throw TransportError.unsupportedAddress("\(address)") }
        let channel = try await ClientBootstrap(group: group).connect(host: "127.0.0.1", port: Int(port)) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
        return try await withDeadline(10) {
            try await channel.executeThenClose { inbound, outbound in
                var iterator = inbound.makeAsyncIterator()
                try await script(&iterator, outbound)
                // Drain until the server hangs up.
                do {
                    while try await iterator.next() != nil {}
                } catch {
                    // A reset is a hang-up too.
                }
                return true
            }
        }
    }

    func assertStillServing(_ address: Multiaddr) async throws {
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
    }

    func testGarbageDuringMultistreamIsDisconnected() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let closed = try await rawSession(to: address) { _, outbound in
            try await outbound.write(ByteBuffer(bytes: [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]))
        }
        XCTAssertTrue(closed)
        let closed2 = try await rawSession(to: address) { _, outbound in
            var hello = ByteBuffer()
            MultistreamNegotiation.writeMessage("/multistream/1.0.0", into: &hello)
            MultistreamNegotiation.writeMessage("/tls/1.0.0", into: &hello)  // unsupported: "na"
            for _ in 0..<40 { MultistreamNegotiation.writeMessage("/x", into: &hello) }  // too many rounds
            try await outbound.write(hello)
        }
        XCTAssertTrue(closed2)
        try await assertStillServing(address)
        await server.close()
    }

    /// Negotiates /noise as a raw initiator; returns leftover inbound bytes.
    static func negotiateNoise(
        _ iterator: inout NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator,
        _ outbound: NIOAsyncChannelOutboundWriter<ByteBuffer>
    ) async throws -> ByteBuffer {
        var negotiation = MultistreamNegotiation.initiator(protocols: ["/noise"])
        var out = ByteBuffer()
        negotiation.start(into: &out)
        try await outbound.write(out)
        while var chunk = try await iterator.next() {
            var reply = ByteBuffer()
            if try negotiation.receive(&chunk, output: &reply) != nil { return chunk }
        }
        throw TransportError.connectionClosed
    }

    func testGarbageMidNoiseHandshakeIsDisconnected() async throws {
        let (server, address) = try await makeTestHost(group: group)
        // An all-zero ephemeral key (low order) must be refused.
        let closed = try await rawSession(to: address) { iterator, outbound in
            _ = try await Self.negotiateNoise(&iterator, outbound)
            var frame = ByteBuffer()
            frame.writeInteger(UInt16(32))
            frame.writeBytes([UInt8](repeating: 0, count: 32))
            try await outbound.write(frame)
        }
        XCTAssertTrue(closed)
        // A valid first message followed by a garbage third message.
        let closed2 = try await rawSession(to: address) { iterator, outbound in
            _ = try await Self.negotiateNoise(&iterator, outbound)
            var handshake = NoiseHandshake(initiator: true, identity: .generateEd25519())
            var out = ByteBuffer()
            handshake.start(into: &out)
            try await outbound.write(out)
            _ = try await iterator.next()  // message 2
            var garbage = ByteBuffer()
            garbage.writeInteger(UInt16(200))
            garbage.writeBytes(patternBytes(count: 200, seed: 3))
            try await outbound.write(garbage)
        }
        XCTAssertTrue(closed2)
        try await assertStillServing(address)
        await server.close()
    }

    func testGarbageYamuxFramesAreDisconnected() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let closed = try await rawSession(to: address) { iterator, outbound in
            var leftover = try await Self.negotiateNoise(&iterator, outbound)
            var handshake = NoiseHandshake(initiator: true, identity: .generateEd25519())
            var out = ByteBuffer()
            handshake.start(into: &out)
            try await outbound.write(out)
            var result: NoiseHandshake.Result?
            while result == nil {
                var toSend = ByteBuffer()
                result = try handshake.receive(&leftover, output: &toSend)
                if toSend.readableBytes > 0 { try await outbound.write(toSend) }
                if result == nil {
                    guard let next = try await iterator.next() else { throw TransportError.connectionClosed }
                    leftover = next
                }
            }
            var transport = result!.transport
            // Muxer negotiation, then a frame with yamux version 7.
            var plain = ByteBuffer()
            var muxer = MultistreamNegotiation.initiator(protocols: ["/yamux/1.0.0"])
            muxer.start(into: &plain)
            plain.writeBytes([7, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0])
            var cipher = ByteBuffer()
            try transport.encrypt(&plain, into: &cipher)
            try await outbound.write(cipher)
        }
        XCTAssertTrue(closed)
        try await assertStillServing(address)
        await server.close()
    }
}
