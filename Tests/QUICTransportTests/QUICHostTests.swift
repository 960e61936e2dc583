import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import QUICTransport
import TestSupport
import Transport
import XCTest

/// Two hosts over `/quic-v1` on loopback: the QUIC transport under the
/// Transport seam, with identify, ping and streams on top unchanged.
final class QUICHostTests: XCTestCase {
    private func quicHost(_ group: EventLoopGroup, address: String = "/ip4/127.0.0.1/udp/0/quic-v1") async throws -> (Libp2pHost, Multiaddr) {
        try await makeTestHost(group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr(address))
    }

    func testHostsConnectPingIdentifyAndEchoOverQUIC() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let (listener, address) = try await quicHost(group)
        let (dialer, _) = try await quicHost(group)
        try await withDeadline(60) {
            XCTAssertTrue(address.description.contains("/udp/"), "\(address)")
            XCTAssertTrue(address.description.contains("/quic-v1/p2p/"), "\(address)")
            let connection = try await dialer.connect(address)
            XCTAssertEqual(connection.remotePeer, listener.localPeer)
            XCTAssertEqual(connection.transport, "quic-v1")
            XCTAssertTrue(connection.remoteAddress.description.hasSuffix("/quic-v1"), "\(connection.remoteAddress)")
            let rtts = try await PingService.ping(connection, count: 3)
            XCTAssertEqual(rtts.count, 3)
            // Several streams at once, each larger than the stream and connection windows: flow control both ways.
            try await withThrowingTaskGroup(of: Void.self) { tasks in
                for seed in 1...4 {
                    tasks.addTask {
                        let data = patternBytes(count: 2 << 20, seed: UInt64(seed))
                        let back = try await echo(data, over: connection)
                        XCTAssertEqual(back.count, data.count)
                        XCTAssertTrue(back == data, "stream \(seed) came back intact")
                    }
                }
                try await tasks.waitForAll()
            }
            // The listener saw the same connection and knows the dialer by its certificate.
            try await waitUntil("the listener lists the dialer") { listener.connection(to: dialer.localPeer) != nil }
            XCTAssertEqual(listener.connection(to: dialer.localPeer)?.transport, "quic-v1")
        }
        await dialer.close()
        await listener.close()
    }

    /// Every byte a reader took goes back to the connection's window, also the
    /// tail its reader never reported before the end: 60 streams of 48 KiB
    /// each (less than a report) would otherwise shrink a 768 KiB window to nothing.
    func testManyShortStreamsDoNotUseUpTheConnectionWindow() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let (listener, address) = try await quicHost(group)
        let (dialer, _) = try await quicHost(group)
        try await withDeadline(60) {
            let connection = try await dialer.connect(address)
            for index in 0..<60 {
                let data = patternBytes(count: 48 * 1024, seed: UInt64(index))
                let back = try await echo(data, over: connection)
                XCTAssertTrue(back == data, "stream \(index)")
            }
        }
        await dialer.close()
        await listener.close()
    }

    func testADialToTheWrongPeerIDFails() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let (listener, address) = try await quicHost(group)
        let (dialer, _) = try await quicHost(group)
        let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let wrong = address.withoutP2P.encapsulating(.p2p(impostor.bytes))
        try await withDeadline(30) {
            do {
                _ = try await dialer.connect(wrong)
                XCTFail("a dial to \(wrong) reached \(listener.localPeer)")
            } catch {
                XCTAssertNil(dialer.connection(to: listener.localPeer), "no connection to the real peer either")
            }
        }
        await dialer.close()
        await listener.close()
    }

    func testClosingAConnectionEndsItOnBothSides() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let (listener, address) = try await quicHost(group)
        let (dialer, _) = try await quicHost(group)
        try await withDeadline(30) {
            let connection = try await dialer.connect(address)
            try await waitUntil("the listener has the connection") { listener.connection(to: dialer.localPeer) != nil }
            let remoteSide = try XCTUnwrap(listener.connection(to: dialer.localPeer))
            await connection.close()
            try await remoteSide.closeFuture.get()
            XCTAssertFalse(remoteSide.isActive)
            // A new dial works after the close.
            let again = try await dialer.connect(address)
            _ = try await PingService.ping(again)
        }
        await dialer.close()
        await listener.close()
    }
}
