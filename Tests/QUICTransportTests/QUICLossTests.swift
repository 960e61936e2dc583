import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import QUICTransport
import TestSupport
import Transport
import XCTest

/// A UDP forwarder between one client and a server that drops and reorders
/// datagrams (seeded), both ways.
final class LossyForwarder: ChannelInboundHandler, @unchecked Sendable {
    // @unchecked Sendable: every field is touched only on the forwarder channel's event loop (channelRead and its scheduled tasks).
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    private var server: SocketAddress
    /// Servers replaced by `redirect`: what they send is dropped.
    private var retired: [SocketAddress] = []
    private let loss: Double
    private let reorder: Double
    private var random: SplitMix
    private var client: SocketAddress?
    let dropped = Counter()
    let forwarded = Counter()

    init(server: SocketAddress, loss: Double, reorder: Double, seed: UInt64) {
        self.server = server
        self.loss = loss
        self.reorder = reorder
        self.random = SplitMix(seed: seed)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let destination: SocketAddress
        if retired.contains(envelope.remoteAddress) { return }
        if envelope.remoteAddress == server {
            guard let client else { return }
            destination = client
        } else {
            client = envelope.remoteAddress
            destination = server
        }
        if Double.random(in: 0..<1, using: &random) < loss {
            dropped.add(1)
            return
        }
        forwarded.add(1)
        let out = AddressedEnvelope(remoteAddress: destination, data: envelope.data)
        let channel = context.channel
        if Double.random(in: 0..<1, using: &random) < reorder {
            // Held back a few milliseconds: later datagrams overtake it.
            context.eventLoop.scheduleTask(in: .milliseconds(Int64.random(in: 1...5, using: &random))) {
                channel.writeAndFlush(out, promise: nil)
            }
        } else {
            channel.writeAndFlush(out, promise: nil)
        }
    }

    /// From now on the client's datagrams go to `newServer`, and the old
    /// server is cut off: to the client, the server restarted at the same address.
    func redirect(to newServer: SocketAddress, on channel: Channel) async throws {
        try await channel.eventLoop.submit {
            self.retired.append(self.server)
            self.server = newServer
        }.get()
    }

    /// A forwarder on 127.0.0.1 to `server`; its address is where the client dials.
    static func start(to server: SocketAddress, loss: Double, reorder: Double, seed: UInt64) async throws -> (Channel, LossyForwarder) {
        let forwarder = LossyForwarder(server: server, loss: loss, reorder: reorder, seed: seed)
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(forwarder) } }
            .bind(host: "127.0.0.1", port: 0).get()
        return (channel, forwarder)
    }
}

/// Transfers over QUIC through loss and reordering complete byte for byte.
final class QUICLossTests: XCTestCase {
    func testEchoesSurviveLossAndReordering() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let (listener, address) = try await makeTestHost(
            group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
        guard case .udp(let port) = address.components[1] else { return XCTFail("\(address)") }
        let server = try SocketAddress(ipAddress: "127.0.0.1", port: Int(port))
        for (index, loss) in [0.01, 0.05, 0.10].enumerated() {
            let (channel, forwarder) = try await LossyForwarder.start(to: server, loss: loss, reorder: 0.05, seed: UInt64(index + 1))
            let forwarderPort = try XCTUnwrap(channel.localAddress?.port)
            let through = try Multiaddr("/ip4/127.0.0.1/udp/\(forwarderPort)/quic-v1").encapsulating(.p2p(listener.localPeer.bytes))
            let (dialer, _) = try await makeTestHost(
                group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
            let data = patternBytes(count: 256 * 1024, seed: UInt64(index + 7))
            try await withDeadline(90) {
                let connection = try await dialer.connect(through)
                let back = try await echo(data, over: connection)
                XCTAssertTrue(back == data, "\(Int(loss * 100))% loss: \(back.count) of \(data.count) bytes came back intact")
            }
            XCTAssertGreaterThan(forwarder.dropped.value, 0, "the forwarder dropped datagrams at \(loss)")
            await dialer.close()
            try await channel.close()
        }
        await listener.close()
    }

    /// A peer that restarted (same identity at the same address, none of the
    /// connection's state) answers our next packet with a stateless reset,
    /// whose token it derives again from its identity: our connection ends
    /// with that reason at once, not after the probe timeouts or the idle timeout.
    func testARestartedPeerResetsOurConnection() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let identity = PrivateKey.generateEd25519()
        @Sendable func peer(_ key: PrivateKey) async throws -> (Libp2pHost, SocketAddress) {
            let host = try Libp2pHost(key: key, group: group, transports: [QUICTransport(group: group)], security: [NoiseSecurity()])
            PingService(host: host).start()
            let bound = try await host.listen(on: [try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")])
            guard case .udp(let port) = bound[0].components[1] else { throw TransportError.unsupportedAddress("\(bound)") }
            return (host, try SocketAddress(ipAddress: "127.0.0.1", port: Int(port)))
        }
        let (before, beforeAddress) = try await peer(identity)
        let (channel, forwarder) = try await LossyForwarder.start(to: beforeAddress, loss: 0, reorder: 0, seed: 1)
        let forwarderPort = try XCTUnwrap(channel.localAddress?.port)
        let (dialer, _) = try await makeTestHost(
            group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
        try await withDeadline(60) {
            let connection = try await dialer.connect(
                try Multiaddr("/ip4/127.0.0.1/udp/\(forwarderPort)/quic-v1").encapsulating(.p2p(before.localPeer.bytes)))
            _ = try await PingService.ping(connection, count: 1)
            let (after, afterAddress) = try await peer(identity)
            try await forwarder.redirect(to: afterAddress, on: channel)
            do {
                _ = try await PingService.ping(connection, count: 1)
                XCTFail("a ping crossed to a peer that lost the connection")
            } catch {
                XCTAssertTrue(String(describing: error).contains("statelessReset"), "\(error)")
            }
            try await waitUntil("the connection ended") { !connection.isActive }
            await after.close()
        }
        await dialer.close()
        await before.close()
        try await channel.close()
    }
}
