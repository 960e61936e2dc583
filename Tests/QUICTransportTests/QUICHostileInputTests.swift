import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import QUIC
@testable import QUICTransport
import TestSupport
import Transport
import XCTest

/// What a hostile or broken sender can do to a QUIC listener: garbage, packets
/// for connections that do not exist, Initials that do not decrypt, unknown
/// versions. None of it may take a handshake slot or stop others connecting;
/// a listener that retries makes clients prove their address first.
final class QUICHostileInputTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    private func quicHost(retry: QUICRetryPolicy) async throws -> (Libp2pHost, QUICTransport, Multiaddr) {
        let transport = QUICTransport(group: group, retry: retry)
        let (host, address) = try await makeTestHost(
            group: group, transports: [transport], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
        return (host, transport, address)
    }

    /// A UDP socket that collects what it receives.
    private final class Collector: ChannelInboundHandler, Sendable {
        typealias InboundIn = AddressedEnvelope<ByteBuffer>
        let received = Counter()
        /// Answers in a long header with version 0: Version Negotiation.
        let versionNegotiations = Counter()
        /// Answers in a short header's form of at most 43 bytes: stateless resets.
        let statelessResets = Counter()
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            received.add(1)
            let bytes = unwrapInboundIn(data).data.readableBytesView
            guard let first = bytes.first else { return }
            if first & 0x80 != 0, bytes.count >= 5, bytes.dropFirst().prefix(4).allSatisfy({ $0 == 0 }) {
                versionNegotiations.add(1)
            } else if first & 0xC0 == 0x40, bytes.count <= 43 {
                statelessResets.add(1)
            }
        }
    }

    func testGarbageUnknownConnectionsAndForgedInitialsTakeNoSlot() async throws {
        let (listener, _, address) = try await quicHost(retry: .never)
        guard case .udp(let port) = address.components[1] else { return XCTFail("\(address)") }
        let collector = Collector()
        let sender = try await DatagramBootstrap(group: group)
            .channelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(collector) } }
            .bind(host: "127.0.0.1", port: 0).get()
        let target = try SocketAddress(ipAddress: "127.0.0.1", port: Int(port))
        var random = SplitMix(seed: 2026)
        func bytes(_ count: Int) -> [UInt8] { (0..<count).map { _ in UInt8.random(in: 0...255, using: &random) } }
        var datagrams: [[UInt8]] = []
        for _ in 0..<1000 { datagrams.append(bytes(Int.random(in: 0...1500, using: &random))) }
        // Initials in form (long header, version 1, 8-byte IDs, 1200 bytes) whose protection is garbage.
        for _ in 0..<500 { datagrams.append([0xC3, 0, 0, 0, 1, 8] + bytes(8) + [8] + bytes(8) + [0] + bytes(1200 - 24)) }
        // Short headers for connections that do not exist.
        for _ in 0..<500 { datagrams.append([0x40] + bytes(Int.random(in: 20...1400, using: &random))) }
        // An unknown version in a 1200-byte datagram: answered with Version Negotiation.
        for _ in 0..<20 { datagrams.append([0xC0, 0xBA, 0xBA, 0xBA, 0xBA, 8] + bytes(8) + [8] + bytes(8) + bytes(1200 - 23)) }
        let sentAt = ContinuousClock.now
        for datagram in datagrams {
            sender.write(AddressedEnvelope(remoteAddress: target, data: ByteBuffer(bytes: datagram)), promise: nil)
        }
        sender.flush()
        let group = self.group
        try await withDeadline(30) {
            try await waitUntil("Version Negotiation answers arrive") { collector.received.value >= 1 }
            let (dialer, _) = try await makeTestHost(
                group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
            let connection = try await dialer.connect(address)
            _ = try await PingService.ping(connection, count: 3)
            XCTAssertEqual(listener.connections.count, 1, "one real connection, nothing half-open: \(listener.connections)")
            await dialer.close()
        }
        // Only Version Negotiation is answered: to long headers of another version in 1200 bytes or more.
        let negotiable = datagrams.filter { datagram in
            guard datagram.count >= 1200, datagram[0] & 0x80 != 0 else { return false }
            let version = datagram[1..<5].reduce(UInt32(0)) { $0 << 8 | UInt32($1) }
            return version != 0 && version != 1
        }
        // and short headers of unknown connections with stateless resets of at
        // most 43 bytes, at most 64 in a second of the listener's clock.
        let seconds = Int((ContinuousClock.now - sentAt).components.seconds) + 2
        XCTAssertEqual(
            collector.received.value, collector.versionNegotiations.value + collector.statelessResets.value,
            "only Version Negotiation and stateless resets are answered")
        XCTAssertLessThanOrEqual(collector.versionNegotiations.value, negotiable.count)
        XCTAssertLessThanOrEqual(collector.statelessResets.value, 64 * seconds, "stateless resets are rate-limited")
        XCTAssertEqual(listener.upgrader.inboundHandshakes.refused, 0, "no handshake slot was ever short")
        try await sender.close()
        await listener.close()
    }

    func testAListenerThatAlwaysRetriesStillConnects() async throws {
        let (listener, transport, address) = try await quicHost(retry: .always)
        let (dialer, _) = try await makeTestHost(
            group: group, transports: [QUICTransport(group: group)], listen: try Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"))
        try await withDeadline(30) {
            let connection = try await dialer.connect(address)
            _ = try await PingService.ping(connection, count: 2)
            let back = try await echo(patternBytes(count: 300_000, seed: 3), over: connection)
            XCTAssertTrue(back == patternBytes(count: 300_000, seed: 3))
        }
        let retries = await transport.retriesSent()
        // One Retry per Initial datagram of the first flight (a ClientHello may take two); the client follows the first.
        XCTAssertGreaterThanOrEqual(retries, 1, "the dial went through a Retry")
        await dialer.close()
        await listener.close()
    }

    func testRetryTokensProveTheAddressAndExpire() throws {
        let tokens = RetryTokens()
        let client = try SocketAddress(ipAddress: "192.0.2.7", port: 4242)
        let other = try SocketAddress(ipAddress: "192.0.2.8", port: 4242)
        let original = ConnectionID.random()
        let token = tokens.make(for: client, originalDestination: original, now: 1000)
        XCTAssertEqual(tokens.validate(token, from: client, now: 1005)?.originalDestination, original)
        XCTAssertNil(tokens.validate(token, from: other, now: 1005), "another address")
        XCTAssertNil(tokens.validate(token, from: client, now: 1000 + RetryTokens.lifetime + 1), "expired")
        XCTAssertNil(tokens.validate(token, from: client, now: 999), "from the future")
        XCTAssertNil(RetryTokens().validate(token, from: client, now: 1005), "another listener's key")
        var tampered = token
        tampered[3] ^= 1
        XCTAssertNil(tokens.validate(tampered, from: client, now: 1005))
        for length in 0..<token.count { XCTAssertNil(tokens.validate(Array(token.prefix(length)), from: client, now: 1005)) }
        var random = SplitMix(seed: 9)
        for _ in 0..<1000 {
            let junk = (0..<Int.random(in: 0...80, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            XCTAssertNil(tokens.validate(junk, from: client, now: 1005))
        }
    }
}
