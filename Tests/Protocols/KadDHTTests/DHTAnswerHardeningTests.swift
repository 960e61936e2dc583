import Identity
import KadDHT
import Multiformats
import XCTest

/// Issue 25's lesser DHT findings: answers amplified by the addresses peers
/// announce, and one peer filling the value store.
final class DHTAnswerHardeningTests: XCTestCase {
    let now = ContinuousClock.now

    /// Peers announcing many long addresses made a 40-byte FIND_NODE draw megabytes.
    func testAnswersStaySmallWhateverPeersAnnounce() throws {
        let me = randomPeer()
        var table = RoutingTable(localPeer: me)
        let known = (0..<30).map { _ in randomPeer() }
        for peer in known { table.peerResponded(peer, now: now) }
        // 1000 addresses per peer, most of them as long as a DNS name may make them.
        let long = try (0..<900).map { index in
            try Multiaddr("/dns4/\(String(repeating: "a", count: 60)).\(String(repeating: "b", count: 60)).\(String(repeating: "c", count: 60)).\(index).example/tcp/1")
        }
        let short = try (0..<100).map { try Multiaddr("/ip4/203.0.113.\($0 % 250)/tcp/\(4000 + $0)") }
        var records = RecordStore()
        var providers = ProviderStore()
        let sender = randomPeer()
        let senderAddress = try Multiaddr("/ip4/198.51.100.2/tcp/5")
        let key: [UInt8] = [0x01, 0x55]
        for peer in known.prefix(25) {
            _ = DHTServer.handle(
                DHTMessage(type: .addProvider, key: key, providerPeers: [DHTPeer(id: peer, addresses: [])]), from: peer,
                at: try Multiaddr("/ip4/192.0.2.\(known.firstIndex(of: peer)! + 1)/tcp/1"), records: &records,
                providers: &providers, table: table, now: now, addresses: { _ in Array(short.prefix(16)) })
        }
        for type in [DHTMessageType.findNode, .getProviders, .getValue] {
            let request = DHTMessage(type: type, key: type == .getProviders ? key : known[0].bytes)
            guard
                case .respond(let answer) = DHTServer.handle(
                    request, from: sender, at: senderAddress, records: &records, providers: &providers, table: table,
                    now: now, addresses: { _ in long + short })
            else { return XCTFail("no answer to \(type)") }
            XCTAssertEqual(answer.closerPeers.count, 20, "\(type)")
            XCTAssertTrue(answer.closerPeers.allSatisfy { $0.addresses.count <= DHTServer.maxAddressesPerAnsweredPeer })
            XCTAssertLessThanOrEqual(answer.providerPeers.count, DHTServer.maxProvidersPerAnswer)
            let size = answer.framed().count
            XCTAssertLessThanOrEqual(size, 96 * 1024, "\(type): \(size) bytes answer \(request.framed().count)")
        }
    }

    /// One network holds at most a sixteenth of the value store; others still store.
    func testOnePeerCannotFillTheValueStore() throws {
        var store = RecordStore(maxRecords: 1600, maxTotalBytes: 1 << 20)
        let flooder = ProviderSource(address: try Multiaddr("/ip4/192.0.2.9/tcp/1"))
        var kept = 0
        for index in 0..<1600 {
            let record = DHTRecord(key: Array("/p2pchat/name\(index)".utf8), value: Array("x".utf8))
            if (try? store.put(record, from: flooder, now: now)) != nil { kept += 1 }
        }
        XCTAssertEqual(kept, 100, "a sixteenth of 1600")
        XCTAssertEqual(store.held(bySource: flooder).count, 100)
        XCTAssertThrowsError(
            try store.put(DHTRecord(key: Array("/p2pchat/more".utf8), value: [0x61]), from: flooder, now: now)
        ) { XCTAssertEqual($0 as? RecordError, .sourceFull) }
        // Its own names it may still update.
        XCTAssertNoThrow(try store.put(DHTRecord(key: Array("/p2pchat/name0".utf8), value: Array("y".utf8)), from: flooder, now: now))
        // Another network stores.
        let other = ProviderSource(address: try Multiaddr("/ip6/2001:db8::1/tcp/1"))
        XCTAssertNoThrow(try store.put(DHTRecord(key: Array("/p2pchat/room".utf8), value: [0x61]), from: other, now: now))
        // Bytes too: 64 KiB of 1 MiB.
        var bytesStore = RecordStore(maxRecords: 16_000, maxTotalBytes: 1 << 20)
        var held = 0
        for index in 0..<1000 {
            let record = DHTRecord(key: Array("/p2pchat/n\(index)".utf8), value: [UInt8](repeating: 0x61, count: 1000))
            if (try? bytesStore.put(record, from: flooder, now: now)) != nil { held += 1 }
        }
        XCTAssertLessThanOrEqual(bytesStore.held(bySource: flooder).bytes, 64 * 1024)
        XCTAssertGreaterThan(held, 50)
        // Expiry gives the share back.
        store.expire(now: now + RecordStore.maxAge)
        XCTAssertEqual(store.held(bySource: flooder).count, 0)
        XCTAssertEqual(store.count, 0)
        XCTAssertEqual(store.totalBytes, 0)
    }

    /// Through the server: records from one address are charged to it.
    func testTheServerChargesTheSendersNetwork() throws {
        var table = RoutingTable(localPeer: randomPeer())
        table.peerResponded(randomPeer(), now: now)
        var records = RecordStore(maxRecords: 160)
        var providers = ProviderStore()
        let address = try Multiaddr("/ip4/192.0.2.10/tcp/7")
        var refused = 0
        for index in 0..<20 {
            let record = DHTRecord(key: Array("/p2pchat/k\(index)".utf8), value: [0x61])
            let reply = DHTServer.handle(
                DHTMessage(type: .putValue, key: record.key, record: record), from: randomPeer(), at: address,
                records: &records, providers: &providers, table: table, now: now, addresses: { _ in [] })
            if case .reject = reply { refused += 1 }
        }
        XCTAssertEqual(refused, 10, "ten peer ids from one address hold its share of 10")
        XCTAssertEqual(records.held(bySource: ProviderSource(address: address)).count, 10)
    }
}
