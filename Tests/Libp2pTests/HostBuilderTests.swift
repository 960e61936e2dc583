import Libp2p
import TestSupport
import XCTest

/// The builder's default host: the transports and security protocols the host
/// itself no longer chooses, and a connection over each transport.
final class HostBuilderTests: XCTestCase {
    func testDefaultsAreTCPWebSocketQUICWithNoiseThenTLS() async throws {
        let host = try Libp2pHostBuilder(key: .generateEd25519()).build()
        XCTAssertEqual(host.transports.map(\.name), ["tcp", "ws", "quic-v1"])
        XCTAssertEqual(host.upgrader.security.map(\.protocolID), ["/noise", "/tls/1.0.0"])
        XCTAssertTrue(host.transports.contains { $0.canListen(try! Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")) })
        await host.close()
    }

    /// A default host speaks to default hosts over /tcp, /ws and /quic-v1:
    /// Noise and Yamux where the transport needs them, and ping on top.
    func testDefaultHostsConnectOverEachTransport() async throws {
        let server = try Libp2pHostBuilder(key: .generateEd25519()).build()
        PingService(host: server).start()
        var clients: [Libp2pHost] = []
        do {
            let bound = try await server.listen(on: [
                Multiaddr("/ip4/127.0.0.1/tcp/0"), Multiaddr("/ip4/127.0.0.1/tcp/0/ws"),
                Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1"),
            ])
            XCTAssertEqual(bound.count, 3)
            let expected = [("tcp", "/noise", "/yamux/1.0.0"), ("ws", "/noise", "/yamux/1.0.0"), ("quic-v1", "/tls/1.0.0", "/quic-v1")]
            for (address, (transport, security, muxer)) in zip(bound, expected) {
                // A client of its own per address: a second connect would reuse the first connection.
                let client = try Libp2pHostBuilder(key: .generateEd25519()).build()
                clients.append(client)
                let serverPeer = server.localPeer
                let connection = try await withDeadline(30) {
                    try await client.connect(address.encapsulating(.p2p(serverPeer.bytes)))
                }
                XCTAssertEqual(connection.remotePeer, server.localPeer)
                XCTAssertEqual(connection.transport, transport, "\(address)")
                XCTAssertEqual(connection.security, security, "\(address)")
                XCTAssertEqual(connection.muxer, muxer, "\(address)")
                let rtts = try await withDeadline(30) { try await PingService.ping(connection, count: 1) }
                XCTAssertEqual(rtts.count, 1)
            }
        } catch {
            XCTFail("\(error)")
        }
        for client in clients { await client.close() }
        await server.close()
    }

    func testChosenSecurityAndTransportsReplaceTheDefaults() async throws {
        let host = try Libp2pHostBuilder(key: .generateEd25519())
            .transports(.tcp(reusePort: true))
            .security([TLSSecurity()])
            .build()
        XCTAssertEqual(host.transports.map(\.name), ["tcp"])
        XCTAssertEqual(host.upgrader.security.map(\.protocolID), ["/tls/1.0.0"])
        await host.close()
        var configuration = TransportConfiguration()
        configuration.yamux.initialWindow = 1024
        XCTAssertThrowsError(try Libp2pHostBuilder(key: .generateEd25519()).configuration(configuration).build()) { error in
            guard case .yamux = error as? TransportConfigurationError else { return XCTFail("\(error)") }
        }
    }
}
