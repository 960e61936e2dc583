import Host
import Multistream
import NIOCore
import NIOPosix
import Noise
import Ping
import TestSupport
import Transport
import XCTest

/// A peer that completes the handshake, makes us send (echo streams with
/// windows it grants) and then never reads its socket, while asking for
/// nothing that a control-frame bound would catch: once our socket takes
/// nothing for `writeStallTimeout`, the connection is closed and counted.
final class WriteStallTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func testPeerThatStopsReadingIsClosedAfterTheStallTimeout() async throws {
        var configuration = TransportConfiguration()
        configuration.writeStallTimeout = .seconds(1)
        let (server, address) = try await makeTestHost(group: group, configuration: configuration)
        let streams: UInt32 = 40
        let started = ContinuousClock.now
        try await withDeadline(30) {
            try await RawYamuxPeer.run(to: address, group: MultiThreadedEventLoopGroup.singleton) { _, outbound, transport in
                // From here on nothing is read.
                var plain = ByteBuffer()
                // Echo streams, each granting the server 64 MiB to send and
                // sending it a whole initial window (256 KiB) to echo back.
                var hello = ByteBuffer()
                var negotiation = MultistreamNegotiation.initiator(protocols: [echoProtocol])
                negotiation.start(into: &hello)
                let payload = [UInt8](repeating: 0x42, count: 256 * 1024 - hello.readableBytes)
                for index in 0..<streams {
                    let id = 1 + 2 * index
                    plain.writeBytes(RawYamuxPeer.header(type: 1, flags: 1, stream: id, length: 64 << 20))
                    plain.writeBytes(RawYamuxPeer.header(type: 0, flags: 0, stream: id, length: UInt32(hello.readableBytes)))
                    plain.writeImmutableBuffer(hello)
                    for start in stride(from: 0, to: payload.count, by: 64 * 1024) {
                        let piece = payload[start..<min(start + 64 * 1024, payload.count)]
                        plain.writeBytes(RawYamuxPeer.header(type: 0, flags: 0, stream: id, length: UInt32(piece.count)))
                        plain.writeBytes(piece)
                    }
                }
                var cipher = ByteBuffer()
                try transport.encrypt(&plain, into: &cipher)
                try? await outbound.write(cipher)
                // Wait (reading nothing) until the server has the connection
                // (its side of the upgrade may finish after ours), then until it hangs up.
                let deadline = ContinuousClock.now + .seconds(20)
                while server.connections.isEmpty && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(10))
                }
                XCTAssertFalse(server.connections.isEmpty, "the server never registered the connection")
                while !server.connections.isEmpty && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        }
        let elapsed = ContinuousClock.now - started
        XCTAssertTrue(server.connections.isEmpty, "the server kept a connection that reads nothing")
        XCTAssertEqual(server.limitCounters.transport[.writeStall(milliseconds: 1000)], 1)
        XCTAssertGreaterThanOrEqual(elapsed, .seconds(1))
        // Still serving an honest peer.
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        let data = patternBytes(count: 300_000, seed: 8)
        let echoed = try await echo(data, over: connection)
        XCTAssertEqual(echoed, data)
        await client.close()
        await server.close()
    }
}
