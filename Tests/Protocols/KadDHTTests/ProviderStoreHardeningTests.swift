import Host
import Identity
import KadDHT
import Multiformats
import NIOPosix
import TestSupport
import Transport
import XCTest

/// Issue 25, rows 3, 7 and 8: what a peer sending ADD_PROVIDER can make a DHT
/// server hold. The server is the pure `DHTServer.handle` fed what the
/// service feeds it (the sender, the address of its connection, the time);
/// the last test drives the same through a real server over loopback TCP.
final class ProviderStoreHardeningTests: XCTestCase {
    let now = ContinuousClock.now

    /// The largest address a record may carry: `/dns4/<name>/tcp/<port>` of 246 bytes.
    static func largestAddress(_ index: Int) -> Multiaddr {
        let name = String(repeating: "a", count: 236) + String(format: "%04d", index % 10_000)
        return Multiaddr([.dns4(name), .tcp(UInt16(4000 + index % 1000))])
    }

    static func largestRecord(_ peer: PeerID) -> DHTPeer {
        DHTPeer(id: peer, addresses: (0..<16).map(largestAddress))
    }

    /// A key of `index`, as a chat's topic key (a sha2-256 multihash).
    static func key(_ index: Int) -> [UInt8] { ContentKey.topic("topic-\(index)") }

    struct Server {
        var records = RecordStore()
        var providers = ProviderStore()
        let table = RoutingTable(localPeer: randomPeer())

        /// ADD_PROVIDER of `record` for `key` from its own peer at `ip`; true when it was stored.
        @discardableResult
        mutating func announce(_ record: DHTPeer, key: [UInt8], from ip: String, now: ContinuousClock.Instant) -> Bool {
            let reply = DHTServer.handle(
                DHTMessage(type: .addProvider, key: key, providerPeers: [record]), from: record.id,
                at: try! Multiaddr("/ip4/\(ip)/tcp/4001"), records: &records, providers: &providers, table: table, now: now,
                addresses: { _ in [] })
            return reply == .none && providers.providers(of: key, now: now).contains { $0.id == record.id }
        }

        /// GET_PROVIDERS for `key`, asked from a peer elsewhere.
        mutating func providers(of key: [UInt8], now: ContinuousClock.Instant) -> [PeerID] {
            let reply = DHTServer.handle(
                DHTMessage(type: .getProviders, key: key), from: randomPeer(), at: try! Multiaddr("/ip4/203.0.113.50/tcp/1"),
                records: &records, providers: &providers, table: table, now: now, addresses: { _ in [] })
            guard case .respond(let message) = reply else { return [] }
            return message.providerPeers.map(\.id)
        }
    }

    /// Row 3: records of 16 addresses of 246 bytes each (the most a record
    /// may carry) from 64 networks, 8 identities each, on 8000 keys: the store
    /// holds at most its 32 MiB, charged for what the records hold in memory.
    /// Before, the store counted records only (100 000 of up to 32 addresses
    /// of 1 KiB: 37 KiB each, 40 000 records = +1441 MiB); 8000 of these were
    /// all kept, 47 MiB by the same measure.
    func testLargeRecordsAreBoundedByTheBytesTheyHold() {
        var server = Server()
        let limits = server.providers.limits
        var stored = 0
        var refused = 0
        let identities = (0..<64).map { network in (0..<8).map { _ in (randomPeer(), "198.18.\(network).1") } }.flatMap { $0 }
        for index in 0..<8000 {
            let (peer, ip) = identities[index % identities.count]
            if server.announce(Self.largestRecord(peer), key: Self.key(index), from: ip, now: now) { stored += 1 } else { refused += 1 }
        }
        // What is held, measured from the answers (the charge of every record listed).
        var held = 0
        for index in 0..<8000 {
            let key = Self.key(index)
            for provider in server.providers.providers(of: key, now: now) { held += ProviderStore.charge(key: key, peer: provider) }
        }
        XCTAssertLessThanOrEqual(held, limits.maxTotalBytes, "\(stored) records of \(held) bytes kept")
        XCTAssertEqual(held, server.providers.totalBytes)
        XCTAssertGreaterThan(refused, 0)
        XCTAssertGreaterThan(held, limits.maxTotalBytes * 9 / 10, "the store is used up to its bytes, not refused early")
        XCTAssertLessThan(stored, limits.maxTotal / 10, "bytes bound it long before the count")
        // Full to its bytes: a few more small records fit in what is left, then the store says it is full.
        var full = server.providers
        var refusal: ProviderStoreError?
        for index in 0..<10 where refusal == nil {
            do {
                try full.add(
                    DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/203.0.113.9/tcp/4001")]), for: Self.key(90_000 + index),
                    from: ProviderSource(address: try! Multiaddr("/ip4/203.0.113.\(index)/tcp/4001")), now: now)
            } catch { refusal = error }
        }
        XCTAssertEqual(refusal, .storeFull)
        XCTAssertLessThanOrEqual(full.totalBytes, limits.maxTotalBytes)
        // Expired records give their bytes back.
        server.providers.expire(now: now + ProviderStore.expiry)
        XCTAssertEqual(server.providers.totalBytes, 0)
        XCTAssertEqual(server.providers.total, 0)
    }

    /// Row 3: what one record may carry is capped, and a record beyond is refused (the stream reset).
    func testARecordCarryingTooMuchIsRefused() throws {
        var server = Server()
        let peer = randomPeer()
        let seventeen = DHTPeer(id: peer, addresses: (0..<17).map(Self.largestAddress))
        XCTAssertFalse(server.announce(seventeen, key: Self.key(1), from: "198.18.0.1", now: now))
        let long = try Multiaddr("/dns4/\(String(repeating: "b", count: 260))/tcp/1")
        XCTAssertFalse(server.announce(DHTPeer(id: peer, addresses: [long]), key: Self.key(1), from: "198.18.0.1", now: now))
        let reply = DHTServer.handle(
            DHTMessage(type: .addProvider, key: Self.key(1), providerPeers: [seventeen]), from: peer,
            at: try Multiaddr("/ip4/198.18.0.1/tcp/1"), records: &server.records, providers: &server.providers,
            table: server.table, now: now, addresses: { _ in [] })
        guard case .reject(let why) = reply else { return XCTFail("\(reply)") }
        XCTAssertTrue(why.contains("17 addresses"), why)
        XCTAssertThrowsError(try server.providers.add(seventeen, for: Self.key(1), now: now)) {
            XCTAssertEqual($0 as? ProviderStoreError, .tooManyAddresses(17, limit: 16))
        }
        XCTAssertThrowsError(try server.providers.add(DHTPeer(id: peer, addresses: []), for: [UInt8](repeating: 1, count: 81), now: now)) {
            XCTAssertEqual($0 as? ProviderStoreError, .badKey(length: 81, limit: ProviderStore.maxKeyLength))
        }
        let deep = Multiaddr([.ip4([198, 18, 0, 1]), .tcp(1)] + Array(repeating: MultiaddrComponent.tls, count: 23))
        XCTAssertThrowsError(try server.providers.add(DHTPeer(id: peer, addresses: [deep]), for: Self.key(1), now: now)) {
            XCTAssertEqual($0 as? ProviderStoreError, .addressTooDeep(25, limit: 24))
        }
        XCTAssertEqual(server.providers.total, 0)
        // The most a record may carry is taken.
        XCTAssertTrue(server.announce(Self.largestRecord(peer), key: Self.key(1), from: "198.18.0.1", now: now))
    }

    /// Row 7: one peer, then 20 000 identities from the same address, announce
    /// 100 000 and 20 000 keys. Each is held to its share; a new topic
    /// announced afterwards from elsewhere is stored and found. Before, the
    /// first peer alone filled the store (100 000 records) and the new topic
    /// could not be announced for 48 h.
    func testOnePeerOrOneNetworkCannotTakeTheProviderStore() {
        var server = Server()
        let limits = server.providers.limits
        let attacker = randomPeer()
        let small = DHTPeer(id: attacker, addresses: [try! Multiaddr("/ip4/198.51.100.7/tcp/4001")])
        var stored = 0
        for index in 0..<100_000 where server.announce(small, key: Self.key(index), from: "198.51.100.7", now: now) { stored += 1 }
        XCTAssertEqual(stored, limits.maxPerProvider, "one provider id gets its share")
        XCTAssertEqual(server.providers.held(byProvider: attacker).count, limits.maxPerProvider)
        // A thousand identities from the same address: the address's share.
        var sybils = 0
        for index in 0..<20_000 {
            let record = DHTPeer(id: randomPeer(), addresses: small.addresses)
            if server.announce(record, key: Self.key(100_000 + index), from: "198.51.100.7", now: now) { sybils += 1 }
        }
        XCTAssertLessThan(sybils, 20_000)
        let network = server.providers.held(bySource: ProviderSource(address: try! Multiaddr("/ip4/198.51.100.7/tcp/1")))
        XCTAssertLessThanOrEqual(network.count, limits.maxPerSource)
        XCTAssertLessThanOrEqual(network.bytes, limits.maxBytesPerSource)
        XCTAssertLessThanOrEqual(server.providers.total, limits.maxTotal / 10, "one network holds a sixteenth at most")
        // A new topic from another network is stored and found.
        let honest = DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/203.0.113.9/tcp/4001")])
        let topic = ContentKey.topic("new topic")
        XCTAssertTrue(server.announce(honest, key: topic, from: "203.0.113.9", now: now))
        XCTAssertEqual(server.providers(of: topic, now: now), [honest.id])
        // Only the sender may name itself: a record naming the honest peer, sent by the attacker, is not stored.
        let reply = DHTServer.handle(
            DHTMessage(type: .addProvider, key: ContentKey.topic("forged"), providerPeers: [honest]), from: attacker,
            at: try! Multiaddr("/ip4/198.51.100.7/tcp/1"), records: &server.records, providers: &server.providers,
            table: server.table, now: now, addresses: { _ in [] })
        XCTAssertEqual(reply, .none)
        XCTAssertEqual(server.providers(of: ContentKey.topic("forged"), now: now), [])
    }

    /// Row 8: 64 identities from one address announce a topic: they hold 8
    /// of its 64 slots (each newcomer from the address takes the slot of its
    /// stalest, as homes behind one NAT that come and go replace their
    /// departed predecessors), and two honest chats from elsewhere are listed.
    /// Spread over 8 addresses they fill the 64 slots, and a newcomer from
    /// another address takes the slot of the stalest provider of the most
    /// represented one. Before, the 64 identities took every slot and the
    /// honest chats were refused.
    func testIdentitiesFromOneAddressCannotTakeATopicsSlots() {
        var server = Server()
        let topic = ContentKey.topic("lobby")
        let attackers = (0..<64).map { _ in DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/198.51.100.7/tcp/4001")]) }
        for (index, attacker) in attackers.enumerated() {
            XCTAssertTrue(server.announce(attacker, key: topic, from: "198.51.100.7", now: now + .seconds(index)))
        }
        XCTAssertEqual(
            Set(server.providers(of: topic, now: now + .seconds(64))), Set(attackers.suffix(server.providers.limits.maxPerKeyPerSource).map(\.id)),
            "the address's newest 8")
        let alice = DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/203.0.113.1/tcp/4001")])
        let bob = DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/192.0.2.1/tcp/4001")])
        XCTAssertTrue(server.announce(alice, key: topic, from: "203.0.113.1", now: now + .seconds(64)))
        XCTAssertTrue(server.announce(bob, key: topic, from: "192.0.2.1", now: now + .seconds(64)))
        XCTAssertTrue(Set(server.providers(of: topic, now: now + .seconds(64))).isSuperset(of: [alice.id, bob.id]))

        // 8 addresses, 8 identities each, announced over time (the oldest first): the key fills.
        var crowded = Server()
        for network in 0..<8 {
            for index in 0..<8 {
                let record = DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/198.51.100.\(network)/tcp/4001")])
                XCTAssertTrue(
                    crowded.announce(record, key: topic, from: "198.51.100.\(network)", now: now + .seconds(network * 8 + index)))
            }
        }
        XCTAssertEqual(crowded.providers.providers(of: topic, now: now).count, 64)
        let later = now + .seconds(100)
        XCTAssertTrue(crowded.announce(alice, key: topic, from: "203.0.113.1", now: later))
        XCTAssertTrue(crowded.announce(bob, key: topic, from: "192.0.2.1", now: later))
        let listed = crowded.providers(of: topic, now: later)
        XCTAssertEqual(listed.count, 64)
        XCTAssertTrue(Set(listed).isSuperset(of: [alice.id, bob.id]))
        // Refreshing keeps a slot; the attacker's refresh does not push anyone out.
        XCTAssertTrue(crowded.announce(alice, key: topic, from: "203.0.113.1", now: later + .seconds(1)))
        // With every network holding one slot, nobody is pushed out: a 65th network is refused.
        var even = Server()
        for network in 0..<64 {
            let record = DHTPeer(id: randomPeer(), addresses: [try! Multiaddr("/ip4/198.51.\(network).1/tcp/4001")])
            XCTAssertTrue(even.announce(record, key: topic, from: "198.51.\(network).1", now: now))
        }
        XCTAssertFalse(even.announce(alice, key: topic, from: "203.0.113.1", now: now))
    }

    /// IPv6 senders share by /64 (one host gets a /64 and could use any
    /// address of it); an IPv4-mapped address counts as its IPv4.
    func testSourcesAreNetworks() throws {
        XCTAssertEqual(
            ProviderSource(address: try Multiaddr("/ip6/2001:db8:1:2::1/tcp/1")),
            ProviderSource(address: try Multiaddr("/ip6/2001:db8:1:2:ffff::9/udp/2/quic-v1")))
        XCTAssertNotEqual(
            ProviderSource(address: try Multiaddr("/ip6/2001:db8:1:2::1/tcp/1")),
            ProviderSource(address: try Multiaddr("/ip6/2001:db8:1:3::1/tcp/1")))
        XCTAssertEqual(
            ProviderSource(address: try Multiaddr("/ip6/::ffff:198.51.100.7/tcp/1")),
            ProviderSource(address: try Multiaddr("/ip4/198.51.100.7/tcp/2")))
        XCTAssertNotEqual(
            ProviderSource(address: try Multiaddr("/ip4/198.51.100.7/tcp/1")),
            ProviderSource(address: try Multiaddr("/ip4/198.51.100.8/tcp/1")))
    }

    /// Through a real server: a record over the caps resets the stream and
    /// is not kept; one within them is kept, charged to the connection's address.
    func testTheServiceChargesTheConnectionsAddressAndRefusesOversizedRecords() async throws {
        try await withDeadline(30) {
            let group = MultiThreadedEventLoopGroup.singleton
            let (serverHost, serverAddress) = try await makeTestHost(group: group)
            let server = KadDHT(host: serverHost, configuration: KadDHTConfiguration(mode: .server))
            server.start()
            let (clientHost, _) = try await makeTestHost(group: group)
            _ = try await clientHost.connect(serverAddress)
            let me = clientHost.localPeer
            let key = ContentKey.topic("through a server")
            func announce(_ record: DHTPeer) async throws -> Bool {
                let stream = try await clientHost.newStream(to: serverHost.localPeer, protocols: [KadDHT.protocolID])
                try await stream.write(DHTMessage(type: .addProvider, key: key, providerPeers: [record]).framed())
                // Then a ping on the same stream: answered unless the server reset it.
                try? await stream.write(DHTMessage(type: .ping).framed())
                var reader = StreamReader(stream)
                let pong = try? await reader.readLengthPrefixed(maxLength: DHTMessage.maxSize)
                stream.reset()
                return pong != nil
            }
            let tooMany = DHTPeer(id: me, addresses: (0..<17).map { try! Multiaddr("/ip4/127.0.0.1/tcp/\(4000 + $0)") })
            let answered = try await announce(tooMany)
            XCTAssertFalse(answered, "the stream is reset")
            XCTAssertEqual(server.storedProviders(of: key), [])
            let fine = DHTPeer(id: me, addresses: [try Multiaddr("/ip4/127.0.0.1/tcp/4001")])
            let stillServed = try await announce(fine)
            XCTAssertTrue(stillServed)
            XCTAssertEqual(server.storedProviders(of: key), [fine])
            let held = server.heldProviders(from: try Multiaddr("/ip4/127.0.0.1/tcp/1"))
            XCTAssertEqual(held.count, 1, "charged to the connection's address")
            XCTAssertEqual(held.bytes, ProviderStore.charge(key: key, peer: fine))
            await server.close()
            await clientHost.close()
            await serverHost.close()
        }
    }
}
