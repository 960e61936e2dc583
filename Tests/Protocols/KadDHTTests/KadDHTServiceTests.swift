import Host
import Identity
import KadDHT
import Multiformats
import NIOPosix
import Identify
import Noise
import TestSupport
import Transport
import XCTest

final class KadDHTServiceTests: XCTestCase {
    /// `count` DHT servers on loopback, each bootstrapped from the first.
    private static func makeNetwork(count: Int) async throws -> [(host: Libp2pHost, dht: KadDHT, address: Multiaddr)] {
        var nodes: [(host: Libp2pHost, dht: KadDHT, address: Multiaddr)] = []
        for _ in 0..<count {
            let (host, address) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            var configuration = KadDHTConfiguration(mode: .server)
            configuration.requestTimeout = .seconds(5)
            let dht = KadDHT(host: host, configuration: configuration)
            dht.start()
            nodes.append((host, dht, address))
        }
        for node in nodes.dropFirst() {
            try await node.dht.bootstrap(peers: [nodes[0].address])
        }
        return nodes
    }

    private static func shutDown(_ hosts: [(host: Libp2pHost, dht: KadDHT)]) async {
        for node in hosts {
            await node.dht.close()
            await node.host.close()
        }
    }

    func testClientFindsPeersProvidersAndValuesThroughServers() async throws {
        try await withDeadline(60) {
            let servers = try await Self.makeNetwork(count: 8)
            let (clientHost, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            let client = KadDHT(host: clientHost)
            client.start()
            XCTAssertFalse(clientHost.supportedProtocols.contains(KadDHT.protocolID), "client mode does not serve")
            XCTAssertTrue(servers[0].host.supportedProtocols.contains(KadDHT.protocolID))

            let size = try await client.bootstrap(peers: [servers[0].address])
            XCTAssertGreaterThanOrEqual(size, 4, "the self-lookup fills the table")

            // find-peer: a server the client never dialled, found with its addresses.
            let target = servers[7].host.localPeer
            let addresses = await client.findPeer(target)
            XCTAssertEqual(addresses?.isEmpty, false)
            XCTAssertNotNil(clientHost.peerStore.info(target)?.addresses.first, "peers learnt go into the peer store")

            // Providers: a server provides, the client finds it.
            let key = Array("some content".utf8)
            let told = await servers[3].dht.provide(key)
            XCTAssertGreaterThan(told, 0)
            let providers = await client.findProviders(key)
            XCTAssertEqual(providers.map(\.id), [servers[3].host.localPeer])

            // Values: the client puts, another server gets.
            let recordKey = Array("/p2pchat/lobby".utf8)
            let stored = try await client.putValue(key: recordKey, value: Array("hello".utf8))
            XCTAssertGreaterThan(stored, 0)
            let value = await servers[5].dht.getValue(key: recordKey)
            XCTAssertEqual(value, Array("hello".utf8))
            // An invalid record is refused before it leaves.
            do {
                _ = try await client.putValue(key: Array("/pk/nothing".utf8), value: [1])
                XCTFail("invalid /pk record accepted")
            } catch KadDHTError.invalidRecord {}

            await Self.shutDown(servers.map { ($0.host, $0.dht) } + [(clientHost, client)])
        }
    }

    /// A peer that answers every request with itself and garbage, forever: lookups end.
    func testLookupAgainstAPeerAnsweringWithItselfEnds() async throws {
        try await withDeadline(30) {
            let (liarHost, liarAddress) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            liarHost.setStreamHandler(KadDHT.protocolID) { stream in
                var reader = StreamReader(stream)
                while let body = try? await reader.readLengthPrefixed(maxLength: DHTMessage.maxSize),
                    let request = try? DHTMessage(decoding: body.readableBytesView)
                {
                    var garbage = (0..<60).map { _ in
                        DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/127.0.0.1/tcp/1")])
                    }
                    garbage.insert(DHTPeer(id: liarHost.localPeer, addresses: liarHost.listenAddresses), at: 0)
                    try? await stream.write(DHTMessage(type: request.type, key: request.key, closerPeers: garbage).framed())
                }
            }
            let (host, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            var configuration = KadDHTConfiguration()
            configuration.requestTimeout = .seconds(1)
            let dht = KadDHT(host: host, configuration: configuration)
            _ = try await dht.bootstrap(peers: [liarAddress])
            let found = await dht.closestPeers(to: Array("anything".utf8))
            XCTAssertEqual(found, [liarHost.localPeer], "only the liar ever answered")
            await Self.shutDown([(host, dht)])
            await liarHost.close()
        }
    }

    /// Oversized and garbage requests reset the stream; the server goes on serving.
    /// An oversized answer fails the request instead of being read.
    func testOversizedAndGarbageMessagesAreRefused() async throws {
        try await withDeadline(30) {
            let nodes = try await Self.makeNetwork(count: 1)
            let server = nodes[0]
            let (clientHost, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            _ = try await clientHost.connect(server.address)
            let client = KadDHT(host: clientHost)
            for bad in [Varint.encode(UInt64(DHTMessage.maxSize + 1)), [5, 0xff, 0xff, 0xff, 0xff, 0xff]] {
                let stream = try await clientHost.newStream(to: server.host.localPeer, protocols: [KadDHT.protocolID])
                try await stream.write(bad)
                var reader = StreamReader(stream)
                do {
                    let answer = try await reader.readLengthPrefixed(maxLength: DHTMessage.maxSize)
                    XCTAssertNil(answer, "no answer to a bad request")
                } catch {}  // reset: as expected
            }
            let pong = try await client.send(DHTMessage(type: .ping), to: server.host.localPeer)
            XCTAssertEqual(pong?.type, .ping, "the server still serves")

            // A peer answering with a length prefix beyond the limit.
            let (bigHost, bigAddress) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            bigHost.setStreamHandler(KadDHT.protocolID) { stream in
                try? await stream.write(Varint.encode(UInt64(DHTMessage.maxSize + 1)) + [UInt8](repeating: 0, count: 1024))
            }
            _ = try await clientHost.connect(bigAddress)
            do {
                _ = try await client.send(DHTMessage(type: .ping), to: bigHost.localPeer)
                XCTFail("an oversized answer was accepted")
            } catch let error as StreamReader.ReadError {
                guard case .messageTooLarge = error else { return XCTFail("\(error)") }
            }
            await Self.shutDown(nodes.map { ($0.host, $0.dht) } + [(clientHost, client)])
            await bigHost.close()
        }
    }

    /// The service's own periodic work: bucket refresh finds a server that joined
    /// later, and the provider republish reaches it.
    func testRefreshAndRepublishReachALaterServer() async throws {
        try await withDeadline(30) {
            let nodes = try await Self.makeNetwork(count: 1)
            let (clientHost, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            var configuration = KadDHTConfiguration()
            configuration.maintenanceInterval = .milliseconds(200)
            configuration.refreshInterval = .milliseconds(200)
            configuration.republishInterval = .milliseconds(500)
            let client = KadDHT(host: clientHost, configuration: configuration)
            client.start()
            try await client.bootstrap(peers: [nodes[0].address])
            let key = ContentKey.sha256(Array("republished".utf8))
            let told = await client.provide(key)
            XCTAssertEqual(told, 1)
            // ADD_PROVIDER has no answer: wait until the server has taken it.
            try await waitUntil("the server stored the provider record") {
                nodes[0].dht.storedProviders(of: key).map(\.id) == [clientHost.localPeer]
            }

            let (lateHost, lateAddress) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            var lateConfiguration = KadDHTConfiguration(mode: .server)
            lateConfiguration.requestTimeout = .seconds(5)
            let late = KadDHT(host: lateHost, configuration: lateConfiguration)
            late.start()
            try await late.bootstrap(peers: [nodes[0].address])
            _ = lateAddress
            try await waitUntil("the republish reached the later server", seconds: 25) {
                late.storedProviders(of: key).contains { $0.id == clientHost.localPeer }
            }
            XCTAssertTrue(client.routingTablePeers.contains(lateHost.localPeer), "the refresh found the later server")
            await Self.shutDown(nodes.map { ($0.host, $0.dht) } + [(clientHost, client), (lateHost, late)])
        }
    }

    /// When every peer of the table has failed, the service bootstraps again.
    func testTableThatRunsEmptyIsBootstrappedAgain() async throws {
        try await withDeadline(30) {
            let group = MultiThreadedEventLoopGroup.singleton
            let network = MemoryNetwork()
            let serverKey = PrivateKey.generateEd25519()
            func server() async throws -> (Libp2pHost, KadDHT, Multiaddr) {
                let host = try Libp2pHost(
                    key: serverKey, group: group, transports: [MemoryTransport(group: group, network: network)],
                    security: [NoiseSecurity()])
                IdentifyService(host: host, agentVersion: "test").start()
                let dht = KadDHT(host: host, configuration: KadDHTConfiguration(mode: .server))
                dht.start()
                let bound = try await host.listen(on: [Multiaddr([.memory(4242)])])
                return (host, dht, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
            }
            let (firstHost, first, address) = try await server()
            let (clientHost, _) = try await makeTestHost(
                group: group, transports: [MemoryTransport(group: group, network: network)], listen: Multiaddr([.memory(0)]))
            var configuration = KadDHTConfiguration()
            configuration.maintenanceInterval = .milliseconds(100)
            configuration.refreshInterval = .milliseconds(100)
            configuration.requestTimeout = .seconds(1)
            let client = KadDHT(host: clientHost, configuration: configuration)
            client.start()
            try await client.bootstrap(peers: [address])
            XCTAssertEqual(client.routingTablePeers, [firstHost.localPeer])
            await first.close()
            await firstHost.close()
            // The refresh lookups fail on the only peer: the table empties.
            try await waitUntil("the routing table emptied") { client.routingTableSize == 0 }
            let (secondHost, second, _) = try await server()
            try await waitUntil("bootstrapped again, onto the second server") {
                client.routingTablePeers == [secondHost.localPeer]
            }
            await Self.shutDown([(clientHost, client), (secondHost, second)])
        }
    }

    /// Issue 22: a record our validator accepts but the peers refuse used to
    /// end as 0 peers, which the CLI called "not found". It is an error that
    /// says each peer refused it, and how.
    func testARecordThePeersRefuseSaysSo() async throws {
        try await withDeadline(30) {
            let servers = try await Self.makeNetwork(count: 2)
            let (clientHost, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
            var configuration = KadDHTConfiguration()
            var validator = NamespacedValidator.standard
            validator.validators["mine"] = ChatValueValidator()
            configuration.validator = validator
            let client = KadDHT(host: clientHost, configuration: configuration)
            try await client.bootstrap(peers: [servers[0].address])
            do {
                let stored = try await client.putValue(key: Array("/mine/some-name".utf8), value: Array("y".utf8))
                XCTFail("stored at \(stored) peers that have no /mine/ validator")
            } catch KadDHTError.putRefused(let key, let attempts) {
                XCTAssertEqual(key, "/mine/some-name")
                XCTAssertEqual(Set(attempts.map(\.peer)), Set(servers.map(\.host.localPeer)))
                XCTAssertTrue(attempts.allSatisfy(\.refused), "\(attempts)")
                let error = KadDHTError.putRefused(key: key, attempts)
                XCTAssertTrue("\(error)".hasPrefix("the DHT peers refused /mine/some-name (2 of 2 refused): "), "\(error)")
                XCTAssertTrue("\(error)".contains("reset the stream instead of storing it (its validator refused the record)"))
            }
            // Our own validator's refusal: nothing is sent.
            do {
                _ = try await client.putValue(key: Array("/elsewhere/x".utf8), value: [1])
                XCTFail("a record without a validator was put")
            } catch KadDHTError.invalidRecord(let why) {
                XCTAssertEqual(why, .unknownNamespace("elsewhere"))
            }
            await Self.shutDown(servers.map { ($0.host, $0.dht) } + [(clientHost, client)])
        }
    }

    /// Issue 22: `Qm...` was taken as text. CIDv0 and CIDv1 of the same content
    /// name one key, the CID's multihash (go-libp2p keys providers by it).
    func testCIDsOfBothVersionsNameTheirMultihash() throws {
        let v0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
        let v1 = "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        let multihash = try Base58.decode(v0)
        XCTAssertEqual(Array(multihash.prefix(2)), [0x12, 0x20], "a sha2-256 multihash")
        XCTAssertEqual(ContentKey.parse(v0), multihash)
        XCTAssertEqual(ContentKey.parse(v1), multihash)
        XCTAssertEqual(ContentKey.parse(ContentKey.cidString(multihash)), multihash, "our raw CIDv1")
        XCTAssertEqual(ContentKey.parse("abcd"), [0xab, 0xcd], "hex, as before")
        XCTAssertNil(ContentKey.parse("lobby"), "text stays text")
        XCTAssertNil(ContentKey.parse("Qm" + String(repeating: "0", count: 44)), "not base58: text")
    }
}
