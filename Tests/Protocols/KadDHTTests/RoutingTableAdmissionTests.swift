import Host
import Identity
import KadDHT
import Multiformats
import NIOPosix
import Synchronization
import TestSupport
import Transport
import XCTest

/// Issue 25, row 9: peers that advertise the DHT protocol in identify but never
/// answer it must not enter the routing table, where every lookup would wait
/// for each of them until its request timed out.
final class RoutingTableAdmissionTests: XCTestCase {
    func testPeersThatOnlyAdvertiseTheProtocolNeverEnterTheTable() async throws {
        try await withDeadline(90) {
            let group = MultiThreadedEventLoopGroup.singleton
            var servers: [(host: Libp2pHost, dht: KadDHT, address: Multiaddr)] = []
            for _ in 0..<3 {
                let (host, address) = try await makeTestHost(group: group)
                var configuration = KadDHTConfiguration(mode: .server)
                configuration.requestTimeout = .seconds(5)
                let dht = KadDHT(host: host, configuration: configuration)
                dht.start()
                servers.append((host, dht, address))
            }
            for server in servers.dropFirst() { try await server.dht.bootstrap(peers: [servers[0].address]) }
            let key = Array("a topic".utf8)
            let told = await servers[2].dht.provide(key)
            XCTAssertGreaterThan(told, 0)

            let (host, address) = try await makeTestHost(group: group)
            var configuration = KadDHTConfiguration()
            configuration.requestTimeout = .seconds(5)
            let dht = KadDHT(host: host, configuration: configuration)
            dht.start()
            try await dht.bootstrap(peers: [servers[0].address])

            // 20 identities (a bucket's worth) that advertise the protocol, read requests and never answer.
            let asked = Mutex<Set<PeerID>>([])
            var fakes: [Libp2pHost] = []
            for _ in 0..<20 {
                let (fake, _) = try await makeTestHost(group: group)
                let id = fake.localPeer
                fake.setStreamHandler(KadDHT.protocolID) { stream in
                    asked.withLock { _ = $0.insert(id) }
                    while (try? await stream.read()) != nil {}
                }
                _ = try await fake.connect(address)
                fakes.append(fake)
            }
            // Each announcement has been taken in: either checked (a stream to the fake) or admitted.
            try await waitUntil("the node has handled every fake's identify", seconds: 20) {
                let checked = asked.withLock { $0 }
                let table = Set(dht.routingTablePeers)
                return fakes.allSatisfy { checked.contains($0.localPeer) || table.contains($0.localPeer) }
            }
            let fakeIDs = Set(fakes.map(\.localPeer))
            XCTAssertTrue(fakeIDs.isDisjoint(with: dht.routingTablePeers), "a peer that never answered entered the table")

            // Lookups ask only peers that answer: no request waits for a timeout.
            let clock = ContinuousClock()
            var providers: [DHTPeer] = []
            let took = await clock.measure { providers = await dht.findProviders(key) }
            XCTAssertEqual(providers.map(\.id), [servers[2].host.localPeer])
            let lookup = await dht.lookupClosest(to: servers[1].host.localPeer.bytes)
            XCTAssertEqual(lookup.failures, 0, "a lookup asked a peer that never answers")
            XCTAssertTrue(lookup.peers.contains(servers[1].host.localPeer))
            XCTAssertLessThan(took, configuration.requestTimeout, "findProviders waited for a request to time out")

            await dht.close()
            await host.close()
            for fake in fakes { await fake.close() }
            for server in servers {
                await server.dht.close()
                await server.host.close()
            }
        }
    }
}
