import Identity
import KadDHT
import Multiformats
import TestSupport
import XCTest

func randomPeer() -> PeerID {
    let digest = (0..<32).map { _ in UInt8.random(in: .min ... .max) }
    return try! PeerID(bytes: Multihash(code: Multihash.sha2_256, digest: digest).bytes)
}

/// A peer whose key falls in bucket `index` of `table`.
func peer(inBucket index: Int, of table: RoutingTable) -> PeerID {
    while true {
        let candidate = randomPeer()
        if table.bucketIndex(KadKey(hashing: candidate.bytes)) == index { return candidate }
    }
}

final class RoutingTableTests: XCTestCase {
    let now = ContinuousClock.now

    func testXORDistanceAndCommonPrefix() {
        let a = KadKey(words: (0xF000_0000_0000_0000, 0, 0, 1))
        let b = KadKey(words: (0xF800_0000_0000_0000, 0, 0, 1))
        XCTAssertEqual(a.commonPrefixLength(with: b), 4)
        XCTAssertEqual(a.commonPrefixLength(with: a), 256)
        XCTAssertEqual(a.distance(to: b), KadKey(words: (0x0800_0000_0000_0000, 0, 0, 0)))
        XCTAssertEqual(a.distance(to: b), b.distance(to: a))
    }

    func testFullBucketKeepsOldEntriesAndQueuesReplacements() {
        var table = RoutingTable(localPeer: randomPeer(), bucketSize: 4)
        let old = (0..<4).map { _ in peer(inBucket: 0, of: table) }
        for peer in old { XCTAssertEqual(table.peerResponded(peer, now: now), .added) }
        let newcomers = (0..<3).map { _ in peer(inBucket: 0, of: table) }
        for peer in newcomers { XCTAssertEqual(table.peerResponded(peer, now: now), .queued) }
        XCTAssertEqual(Set(table.entries(inBucket: 0).map(\.peer)), Set(old), "old entries stay")
        XCTAssertEqual(table.replacements(inBucket: 0), newcomers)
        XCTAssertEqual(table.peerResponded(old[0], now: now + .seconds(5)), .refreshed)
        // Only a failing entry makes room, for the most recent replacement.
        XCTAssertEqual(table.peerFailed(old[1], now: now), newcomers[2])
        XCTAssertTrue(table.contains(newcomers[2]))
        XCTAssertFalse(table.contains(old[1]))
        XCTAssertEqual(table.count, 4)
        XCTAssertEqual(table.peerResponded(table.localPeer, now: now), .ignored)
    }

    func testClosestIsSortedByXORDistance() {
        var table = RoutingTable(localPeer: randomPeer())
        let peers = (0..<200).map { _ in randomPeer() }
        for peer in peers { table.peerResponded(peer, now: now) }
        let target = KadKey(hashing: [1, 2, 3])
        let closest = table.closest(to: target, count: 20)
        let expected = table.peers.sorted {
            KadKey(hashing: $0.bytes).distance(to: target) < KadKey(hashing: $1.bytes).distance(to: target)
        }.prefix(20)
        XCTAssertEqual(closest, Array(expected))
    }

    func testBucketsNeedingRefresh() {
        var table = RoutingTable(localPeer: randomPeer())
        table.peerResponded(peer(inBucket: 2, of: table), now: now)
        XCTAssertEqual(table.bucketsNeedingRefresh(now: now + .seconds(601), interval: .seconds(600)), [0, 1, 2])
        table.markRefreshed(bucket: 1, now: now + .seconds(600))
        XCTAssertEqual(table.bucketsNeedingRefresh(now: now + .seconds(601), interval: .seconds(600)), [0, 2])
    }
}

final class LookupTests: XCTestCase {
    let now = ContinuousClock.now

    func testStopsWhenTheClosestHaveAnsweredAndDropsTimeouts() {
        let local = randomPeer()
        let seeds = (0..<6).map { _ in randomPeer() }
        var lookup = Lookup(
            target: KadKey(hashing: [9]), localPeer: local, seeds: seeds, alpha: 2, k: 3, requestTimeout: .seconds(1))
        var asked = lookup.nextRequests(now: now)
        XCTAssertEqual(asked.count, 2, "alpha requests in flight")
        XCTAssertEqual(lookup.nextRequests(now: now), [])
        lookup.received(from: asked[0], closerPeers: [local, asked[0]])
        XCTAssertEqual(lookup.expire(now: now + .seconds(2)), [asked[1]], "a request past its deadline fails")
        var rounds = 0
        while !lookup.isFinished {
            asked = lookup.nextRequests(now: now)
            for peer in asked { lookup.received(from: peer, closerPeers: []) }
            rounds += 1
            XCTAssertLessThan(rounds, 10)
        }
        XCTAssertEqual(lookup.closestAnswered.count, 3)
        XCTAssertFalse(lookup.closestAnswered.contains(local))
        XCTAssertEqual(lookup.failures, 1)
    }

    /// A peer that answers with itself (or garbage) forever cannot keep a lookup going.
    func testSelfAnsweringAndGarbagePeersCannotKeepALookupGoing() {
        let local = randomPeer()
        let liar = randomPeer()
        var lookup = Lookup(target: KadKey(hashing: [7]), localPeer: local, seeds: [liar], alpha: 3, k: 20)
        var sent = 0
        while !lookup.isFinished {
            let asked = lookup.nextRequests(now: now)
            XCTAssertFalse(asked.isEmpty)
            sent += asked.count
            for peer in asked {
                // Everyone answers with itself and 64 fresh made-up peers.
                lookup.received(from: peer, closerPeers: [peer, liar] + (0..<64).map { _ in randomPeer() })
            }
            XCTAssertLessThanOrEqual(sent, lookup.maxRequests)
        }
        XCTAssertLessThanOrEqual(lookup.requestsSent, lookup.maxRequests)
    }
}

final class RecordStoreTests: XCTestCase {
    let now = ContinuousClock.now

    func testPublicKeyRecordsMustMatchTheirPeerID() throws {
        var store = RecordStore()
        let key = PrivateKey.generateSecp256k1().publicKey
        let other = PrivateKey.generateEd25519().publicKey
        let recordKey = Array("/pk/".utf8) + PeerID(publicKey: key).bytes
        try store.put(DHTRecord(key: recordKey, value: key.marshal()), now: now)
        XCTAssertEqual(store.get(recordKey, now: now)?.value, key.marshal())
        XCTAssertThrowsError(try store.put(DHTRecord(key: recordKey, value: other.marshal()), now: now))
        XCTAssertThrowsError(try store.put(DHTRecord(key: recordKey, value: [1, 2, 3]), now: now))
        XCTAssertNil(store.get(recordKey, now: now + RecordStore.maxAge), "records expire after 48 h")
    }

    func testChatNamespaceIsBoundedAndSelectsDeterministically() throws {
        var store = RecordStore()
        let key = Array("/p2pchat/alice".utf8)
        try store.put(DHTRecord(key: key, value: Array("b".utf8)), now: now)
        XCTAssertThrowsError(try store.put(DHTRecord(key: key, value: Array("a".utf8)), now: now)) { error in
            XCTAssertEqual(error as? RecordError, .notBetter)
        }
        try store.put(DHTRecord(key: key, value: Array("c".utf8)), now: now)
        XCTAssertEqual(store.get(key, now: now)?.value, Array("c".utf8))
        XCTAssertThrowsError(
            try store.put(DHTRecord(key: key, value: [UInt8](repeating: 0x61, count: ChatValueValidator.maxValueSize + 1)), now: now))
        XCTAssertThrowsError(try store.put(DHTRecord(key: key, value: [0xff, 0xfe]), now: now), "not UTF-8")
        XCTAssertThrowsError(try store.put(DHTRecord(key: Array("/other/x".utf8), value: [1]), now: now))
        XCTAssertThrowsError(try store.put(DHTRecord(key: Array("plain".utf8), value: [1]), now: now))
    }

    func testRecordStoreIsBounded() throws {
        var store = RecordStore(maxRecords: 10, maxTotalBytes: 1 << 20)
        for i in 0..<10 { try store.put(DHTRecord(key: Array("/p2pchat/\(i)".utf8), value: [0x61]), now: now) }
        XCTAssertThrowsError(try store.put(DHTRecord(key: Array("/p2pchat/x".utf8), value: [0x61]), now: now)) { error in
            XCTAssertEqual(error as? RecordError, .storeFull)
        }
        XCTAssertThrowsError(
            try store.put(
                DHTRecord(key: Array("/pk/x".utf8), value: [UInt8](repeating: 0, count: RecordStore.maxValueSize + 1)),
                now: now))
        XCTAssertEqual(store.count, 10)
    }

    /// Thousands of providers for one key: the store keeps a bounded number and expires them.
    func testThousandsOfProvidersForOneKeyStayBounded() {
        var store = ProviderStore(maxPerKey: 64, maxTotal: 1000)
        let key: [UInt8] = [1, 2, 3]
        var accepted = 0
        for _ in 0..<5000 {
            if (try? store.add(DHTPeer(id: randomPeer(), addresses: []), for: key, now: now)) != nil { accepted += 1 }
        }
        XCTAssertEqual(accepted, 64)
        XCTAssertEqual(store.providers(of: key, now: now).count, 64)
        for i in 0..<2000 { try? store.add(DHTPeer(id: randomPeer(), addresses: []), for: [UInt8](String(i).utf8), now: now) }
        XCTAssertEqual(store.total, 1000, "bounded in total")
        XCTAssertTrue(store.providers(of: key, now: now + ProviderStore.expiry).isEmpty, "providers expire after 48 h")
        store.expire(now: now + ProviderStore.expiry)
        XCTAssertEqual(store.total, 0)
        XCTAssertEqual(store.keyCount, 0)
    }

    /// The freshest records come first: peers that left keep their records for
    /// 48 h, and an asker that dials the first few must find the live ones there.
    func testProvidersComeFreshestFirst() throws {
        var store = ProviderStore()
        let key: [UInt8] = [7]
        let peers = (0..<5).map { _ in randomPeer() }
        for (index, peer) in peers.enumerated() {
            try store.add(DHTPeer(id: peer, addresses: []), for: key, now: now + .seconds(index))
        }
        // The oldest refreshes its record: it comes first now.
        try store.add(DHTPeer(id: peers[0], addresses: []), for: key, now: now + .seconds(10))
        XCTAssertEqual(store.providers(of: key, now: now + .seconds(11)).map(\.id), [peers[0], peers[4], peers[3], peers[2], peers[1]])
    }
}

final class DHTMessageTests: XCTestCase {
    func testRoundTrip() throws {
        let peer = DHTPeer(id: randomPeer(), addresses: [try Multiaddr("/ip4/127.0.0.1/tcp/4001")])
        let message = DHTMessage(
            type: .getProviders, key: [1, 2, 3], record: DHTRecord(key: [4], value: [5]), closerPeers: [peer],
            providerPeers: [peer])
        XCTAssertEqual(try DHTMessage(decoding: message.encoded()), message)
    }

    /// Closer-peer lists full of garbage: bad ids dropped, bad addresses skipped, lists bounded.
    func testGarbagePeersAreDroppedAndListsBounded() throws {
        let good = randomPeer()
        var message = DHTMessage(type: .findNode, key: good.bytes)
        message.closerPeers = (0..<500).map { _ in DHTPeer(id: randomPeer(), addresses: []) }
        var bytes = message.encoded()
        // Append peers with garbage ids and addresses by hand (field 8, length-delimited).
        for i in 0..<100 {
            var peerBytes: [UInt8] = [0x0a, 3, 0xff, 0xfe, UInt8(i)]  // id: not a multihash
            peerBytes += [0x12, 2, 0xde, 0xad]  // addrs: not a multiaddr
            bytes += [0x42, UInt8(peerBytes.count)] + peerBytes
        }
        let decoded = try DHTMessage(decoding: bytes)
        XCTAssertEqual(decoded.closerPeers.count, DHTMessage.maxPeersPerList)
        var withBadAddress = DHTMessage(type: .findNode)
        withBadAddress.closerPeers = [DHTPeer(id: good, addresses: [])]
        var raw = withBadAddress.encoded()
        raw += [0x42, UInt8(2 + good.bytes.count + 4)] + [0x0a, UInt8(good.bytes.count)] + good.bytes + [0x12, 2, 0xde, 0xad]
        let parsed = try DHTMessage(decoding: raw)
        XCTAssertEqual(parsed.closerPeers.map(\.id), [good, good])
        XCTAssertEqual(parsed.closerPeers[1].addresses, [], "the garbage address is skipped")
    }

    func testTruncatedRandomAndOversizedInputNeverCrash() throws {
        let peer = DHTPeer(id: randomPeer(), addresses: [try Multiaddr("/ip4/127.0.0.1/tcp/4001")])
        let bytes = DHTMessage(type: .getValue, key: [1, 2], record: DHTRecord(key: [1], value: [2]), closerPeers: [peer])
            .encoded()
        for end in 0..<bytes.count { _ = try? DHTMessage(decoding: bytes[..<end]) }
        var generator = SplitMix(seed: 36)
        for _ in 0..<2000 {
            let random = (0..<Int.random(in: 0...200, using: &generator)).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
            _ = try? DHTMessage(decoding: random)
        }
        XCTAssertThrowsError(try DHTMessage(decoding: [UInt8](repeating: 0, count: DHTMessage.maxSize + 1))) { error in
            XCTAssertEqual(error as? DHTMessageError, .tooLarge(DHTMessage.maxSize + 1, limit: DHTMessage.maxSize))
        }
        // A key longer than allowed.
        XCTAssertThrowsError(try DHTMessage(decoding: DHTMessage(type: .getValue, key: [UInt8](repeating: 1, count: 2000)).encoded()))
    }
}

final class DHTServerTests: XCTestCase {
    let now = ContinuousClock.now

    func testRequestsAreAnsweredFromTheStoresAndTable() throws {
        let me = randomPeer()
        let sender = randomPeer()
        var table = RoutingTable(localPeer: me)
        let known = (0..<30).map { _ in randomPeer() }
        for peer in known { table.peerResponded(peer, now: now) }
        var records = RecordStore()
        var providers = ProviderStore()
        let address = [try Multiaddr("/ip4/10.0.0.1/tcp/1")]
        let senderAddress = try Multiaddr("/ip4/10.0.0.2/tcp/5")
        func handle(_ request: DHTMessage, from: PeerID? = nil) -> DHTServerReply {
            DHTServer.handle(
                request, from: from ?? sender, at: senderAddress, records: &records, providers: &providers, table: table,
                now: now, addresses: { _ in address })
        }
        guard case .respond(let found) = handle(DHTMessage(type: .findNode, key: known[0].bytes)) else {
            return XCTFail("no FIND_NODE answer")
        }
        XCTAssertEqual(found.closerPeers.count, 20)
        XCTAssertEqual(found.closerPeers.first?.id, known[0], "the target itself comes first")
        // Providers: only the sender may announce itself.
        let key: [UInt8] = [0x01, 0x55]
        let stranger = DHTPeer(id: randomPeer(), addresses: address)
        let announcement = DHTMessage(
            type: .addProvider, key: key, providerPeers: [stranger, DHTPeer(id: sender, addresses: [])])
        XCTAssertEqual(handle(announcement), .none)
        guard case .respond(let listed) = handle(DHTMessage(type: .getProviders, key: key)) else { return XCTFail() }
        XCTAssertEqual(listed.providerPeers, [DHTPeer(id: sender, addresses: address)])
        // Values.
        let record = DHTRecord(key: Array("/p2pchat/room".utf8), value: Array("hi".utf8))
        let put = DHTMessage(type: .putValue, key: record.key, record: record)
        XCTAssertEqual(handle(put), .respond(put))
        guard case .respond(let got) = handle(DHTMessage(type: .getValue, key: record.key)) else { return XCTFail() }
        XCTAssertEqual(got.record, record)
        let bad = DHTRecord(key: Array("/pk/xyz".utf8), value: [1])
        guard case .reject = handle(DHTMessage(type: .putValue, key: bad.key, record: bad)) else {
            return XCTFail("an invalid record is refused")
        }
        guard case .reject = handle(DHTMessage(type: .putValue, key: [1], record: record)) else {
            return XCTFail("a record under another key is refused")
        }
        // An oversized record is refused, not stored.
        let huge = DHTRecord(key: Array("/p2pchat/huge".utf8), value: [UInt8](repeating: 0x61, count: 100_000))
        guard case .reject = handle(DHTMessage(type: .putValue, key: huge.key, record: huge)) else { return XCTFail() }
        XCTAssertEqual(records.count, 1)
    }

    /// Issue 22: provider records and peers in answers carried 127.0.0.1 and
    /// private addresses to everyone; other chats dialled their own loopback.
    /// An answer carries only what the asker can dial: public addresses and
    /// names to anyone, private ones to a peer on a local network, loopback to
    /// one on this machine, unspecified ones to nobody.
    func testAnswersCarryOnlyAddressesTheAskerCanDial() throws {
        let me = randomPeer()
        var table = RoutingTable(localPeer: me)
        let everywhere = randomPeer()
        let lanOnly = randomPeer()
        for peer in [everywhere, lanOnly] { table.peerResponded(peer, now: now) }
        let loopback = try Multiaddr("/ip4/127.0.0.1/tcp/1")
        let lan = try Multiaddr("/ip4/192.168.1.20/tcp/2")
        let publicAddress = try Multiaddr("/ip4/203.0.113.9/tcp/3")
        let name = try Multiaddr("/dns4/chat.example/tcp/4")
        let unspecified = try Multiaddr("/ip4/0.0.0.0/tcp/5")
        let ula = try Multiaddr("/ip6/fd00::1/tcp/6")
        let all = [loopback, lan, publicAddress, name, unspecified, ula]
        let known: [PeerID: [Multiaddr]] = [everywhere: all, lanOnly: [loopback, lan]]
        var records = RecordStore()
        var providers = ProviderStore()
        let key: [UInt8] = [0x12, 0x20] + Array(repeating: 7, count: 32)
        try providers.add(DHTPeer(id: everywhere, addresses: all), for: key, now: now)
        try providers.add(DHTPeer(id: lanOnly, addresses: [loopback, lan]), for: key, now: now)
        func answer(_ type: DHTMessageType, asker: String) throws -> DHTMessage {
            let reply = DHTServer.handle(
                DHTMessage(type: type, key: key), from: randomPeer(), at: try Multiaddr(asker), records: &records,
                providers: &providers, table: table, now: now, addresses: { known[$0] ?? [] })
            guard case .respond(let message) = reply else { throw XCTSkip("no answer to \(type)") }
            return message
        }
        for type in [DHTMessageType.findNode, .getProviders] {
            let far = try answer(type, asker: "/ip4/198.51.100.7/tcp/9")
            let lists = type == .findNode ? far.closerPeers : far.providerPeers
            XCTAssertEqual(lists, [DHTPeer(id: everywhere, addresses: [publicAddress, name])], "\(type) to a peer elsewhere")
            let near = try answer(type, asker: "/ip4/192.168.1.7/tcp/9")
            XCTAssertEqual(
                Set(type == .findNode ? near.closerPeers : near.providerPeers),
                [DHTPeer(id: everywhere, addresses: [lan, publicAddress, name, ula]), DHTPeer(id: lanOnly, addresses: [lan])],
                "\(type) to a peer on a local network")
            let local = try answer(type, asker: "/ip4/127.0.0.1/tcp/9")
            XCTAssertEqual(
                Set(type == .findNode ? local.closerPeers : local.providerPeers),
                [DHTPeer(id: everywhere, addresses: [loopback, lan, publicAddress, name, ula]), DHTPeer(id: lanOnly, addresses: [loopback, lan])],
                "\(type) to a peer on this machine")
        }
        // What we receive gets the same rule: from a peer elsewhere, loopback and private addresses are not dialled.
        let received = DHTMessage(
            type: .getProviders, key: key, closerPeers: [DHTPeer(id: lanOnly, addresses: [loopback, lan])],
            providerPeers: [DHTPeer(id: everywhere, addresses: all)])
        let usable = received.dialable(fromPeerAt: try Multiaddr("/ip4/198.51.100.7/tcp/9"))
        XCTAssertEqual(usable.closerPeers, [], "a peer left with no address is dropped")
        XCTAssertEqual(usable.providerPeers, [DHTPeer(id: everywhere, addresses: [publicAddress, name])])
        XCTAssertEqual(received.dialable(fromPeerAt: try Multiaddr("/ip4/127.0.0.1/tcp/9")).closerPeers, received.closerPeers)
    }
}
