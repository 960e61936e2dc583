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
        let started = ContinuousClock.now
        let flooded = try await withDeadline(30) {
            try await RawYamuxPeer.run(to: address, group: MultiThreadedEventLoopGroup.singleton) { _, outbound, transport in
                // From here on nothing is read. Open and reset streams until the server hangs up.
                var id: UInt32 = 1
                var sent = 0
                while ContinuousClock.now - started < .seconds(25) {
                    var frames = ByteBuffer()
                    for _ in 0..<2000 {
                        frames.writeBytes(RawYamuxPeer.header(type: 1, flags: 1, stream: id))  // SYN
                        frames.writeBytes(RawYamuxPeer.header(type: 1, flags: 8, stream: id))  // RST
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
        try await waitUntil("the server dropped the flooding connection") { server.connections.isEmpty }
        // Still serving an honest peer.
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let echoed = try await echo(patternBytes(count: 100_000, seed: 5), over: connection)
        XCTAssertEqual(echoed, patternBytes(count: 100_000, seed: 5))
        await client.close()
        await server.close()
    }
}
