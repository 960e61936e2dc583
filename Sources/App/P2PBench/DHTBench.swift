import Foundation
import Host
import Identify
import Identity
import KadDHT
import Multiformats
import NIOPosix
import Noise

// `p2pbench dht [NODES]`: Kademlia lookups over real loopback connections, and
// the memory of routing-table entries and stored records.

/// The resident memory of this process.
func ownResidentBytes() -> Int { residentBytes(pid: getpid()) }

/// `count` DHT servers on 127.0.0.1 bootstrapped one after the other from the
/// first; then `lookups` FIND_NODE lookups of random nodes from random nodes.
func dhtLookupBenchmark(nodes count: Int, lookups: Int) async throws {
    // NIO's process-wide group: never shut down, so work that comes after a
    // node closed (a late stream reset) still has a loop to run on.
    let group = MultiThreadedEventLoopGroup.singleton
    var nodes: [(host: Libp2pHost, dht: KadDHT, address: Multiaddr)] = []
    let started = clock.now
    for index in 0..<count {
        // A connection manager as a busy DHT server would run (trim to 30 over
        // 40): without it every node ends up connected to every other, and 200
        // nodes in one process need more descriptors than this machine allows.
        var limits = HostLimits()
        limits.highWater = 40
        limits.lowWater = 30
        limits.gracePeriod = .seconds(2)
        limits.maintenanceInterval = .seconds(1)
        let host = try makeBenchHost(key: .generateEd25519(), group: group, security: [NoiseSecurity()], limits: limits)
        IdentifyService(host: host, agentVersion: "p2pbench").start()
        let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
        let dht = KadDHT(host: host, configuration: KadDHTConfiguration(mode: .server))
        dht.start()
        if index > 0 { try await dht.bootstrap(peers: [nodes[0].address]) }
        nodes.append((host, dht, bound[0].encapsulating(.p2p(host.localPeer.bytes))))
    }
    let setup = seconds(clock.now - started)
    let tables = nodes.map { Double($0.dht.routingTableSize) }
    let meanTable = tables.reduce(0, +) / Double(count)
    print(String(format: "dht: %d servers on loopback bootstrapped in %.1f s, table size mean %.1f", count, setup, meanTable))
    var latencies: [Double] = []
    var messages: [Double] = []
    var found = 0
    for _ in 0..<lookups {
        let source = nodes.randomElement()!
        var target = nodes.randomElement()!
        while target.host === source.host { target = nodes.randomElement()! }
        let begin = clock.now
        let result = await source.dht.lookupClosest(to: target.host.localPeer.bytes)
        latencies.append(seconds(clock.now - begin) * 1e3)
        messages.append(Double(result.requests))
        if result.peers.first == target.host.localPeer { found += 1 }
    }
    latencies.sort()
    messages.sort()
    report("dht lookup latency p50", percentile(latencies, 0.5), "ms")
    report("dht lookup latency p99", percentile(latencies, 0.99), "ms")
    report("dht messages per lookup mean", messages.reduce(0, +) / Double(messages.count), "")
    report("dht messages per lookup p99", percentile(messages, 0.99), "")
    report("dht lookups that found the target", Double(found) / Double(lookups), "")
    for node in nodes {
        await node.dht.close()
        await node.host.close()
    }
}

/// Resident memory per routing-table entry and per stored record.
func dhtMemoryBenchmark() {
    let peers = (0..<200_000).map { _ in
        PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
    }
    let beforeTables = ownResidentBytes()
    var tables: [RoutingTable] = []
    // Many tables so the entries, not the buckets, dominate: 1000 tables of up to 200 peers.
    for index in 0..<1000 {
        var table = RoutingTable(localPeer: peers[index])
        for peer in peers[(index * 200)..<(index * 200 + 200)] { table.peerResponded(peer, now: .now) }
        tables.append(table)
    }
    let entries = tables.reduce(0) { $0 + $1.count }
    let perEntry = Double(ownResidentBytes() - beforeTables) / Double(entries)
    report("dht memory per routing-table entry", perEntry, "bytes (\(entries) entries)")
    let beforeRecords = ownResidentBytes()
    var store = RecordStore(maxRecords: 200_000, maxTotalBytes: 1 << 30)
    let value = [UInt8](repeating: 0x61, count: 100)
    for index in 0..<100_000 {
        try? store.put(DHTRecord(key: Array("/p2pchat/name-\(index)".utf8), value: value), now: .now)
    }
    let perRecord = Double(ownResidentBytes() - beforeRecords) / Double(store.count)
    report("dht memory per stored record (100 B value)", perRecord, "bytes (\(store.count) records)")
    withExtendedLifetime((tables, store)) {}
}
