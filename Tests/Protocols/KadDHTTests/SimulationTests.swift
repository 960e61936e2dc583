import Foundation
import Identity
import KadDHT
import Multiformats
import TestSupport
import XCTest

/// An in-process Kademlia network of sans-IO nodes in virtual time: routing
/// tables, the lookup state machine and the server function, no sockets.
struct SimulatedDHT {
    typealias Instant = ContinuousClock.Instant

    let peers: [PeerID]
    let keys: [KadKey]
    let index: [PeerID: Int]
    var tables: [RoutingTable]
    var alive: [Bool]
    var random: SplitMix
    let start = ContinuousClock.now
    let someAddress = [try! Multiaddr("/memory/1")]

    /// `count` nodes whose tables hold up to k peers of every bucket, picked at
    /// random among all nodes of the bucket's range (what a network settles to).
    init(count: Int, seed: UInt64, bucketSize: Int = 20) {
        var random = SplitMix(seed: seed)
        var peers: [PeerID] = []
        for _ in 0..<count {
            let digest = (0..<32).map { _ in UInt8.random(in: .min ... .max, using: &random) }
            peers.append(try! PeerID(bytes: Multihash(code: Multihash.sha2_256, digest: digest).bytes))
        }
        let keys = peers.map { KadKey(hashing: $0.bytes) }
        let order = keys.indices.sorted { keys[$0] < keys[$1] }
        let sortedTop = order.map { keys[$0].words.0 }
        var tables: [RoutingTable] = []
        tables.reserveCapacity(count)
        for node in 0..<count {
            var table = RoutingTable(localPeer: peers[node], bucketSize: bucketSize)
            let top = keys[node].words.0
            // Buckets deeper than 63 bits never hold anyone in networks this small.
            for bit in 0..<63 {
                let low: UInt64 = bit == 63 ? 0 : (UInt64(1) << UInt64(63 - bit)) - 1
                let prefix = (top ^ (UInt64(1) << UInt64(63 - bit))) & ~low
                let from = sortedTop.partitionPoint { $0 < prefix }
                let to = sortedTop.partitionPoint { $0 <= prefix | low }
                if to > from {
                    var range = Array(from..<to)
                    if range.count > bucketSize {
                        range.shuffle(using: &random)
                        range = Array(range.prefix(bucketSize))
                    }
                    for at in range {
                        table.peerResponded(peers[order[at]], now: ContinuousClock.now, key: keys[order[at]])
                    }
                }
                // Nobody else shares more bits with us: deeper buckets stay empty.
                let ownLow = low >> 1
                let ownPrefix = top & ~ownLow
                if sortedTop.partitionPoint({ $0 <= ownPrefix | ownLow }) - sortedTop.partitionPoint({ $0 < ownPrefix }) <= 1 {
                    break
                }
            }
            tables.append(table)
        }
        self.peers = peers
        self.keys = keys
        self.index = Dictionary(uniqueKeysWithValues: peers.enumerated().map { ($1, $0) })
        self.tables = tables
        self.alive = Array(repeating: true, count: count)
        self.random = random
    }

    /// Takes `fraction` of the nodes down (they never answer); tables keep them.
    mutating func fail(fraction: Double) {
        for index in Array(peers.indices).shuffled(using: &random).prefix(Int(Double(peers.count) * fraction)) {
            alive[index] = false
        }
    }

    struct Outcome {
        var found: Bool
        var hops: Int
        var messages: Int
        var elapsed: Duration
    }

    /// Node `source` looks up node `target` with FIND_NODE; answers take
    /// `latency` ms of virtual time (10 to 50 unless given), dead nodes time out after a second.
    mutating func lookup(from source: Int, to target: Int, alpha: Int = 3, latency: ClosedRange<Int> = 10...50) -> Outcome {
        let request = DHTMessage(type: .findNode, key: peers[target].bytes)
        let targetKey = keys[target]
        var lookup = Lookup(
            target: targetKey, localPeer: peers[source],
            seeds: tables[source].closest(to: targetKey, count: tables[source].bucketSize), alpha: alpha,
            requestTimeout: .seconds(1))
        var now = start
        var pending: [(peer: PeerID, arrives: Instant)] = []
        var records = RecordStore()
        var providers = ProviderStore()
        let address = someAddress
        while !lookup.isFinished {
            for peer in lookup.nextRequests(now: now) where alive[index[peer]!] {
                pending.append((peer, now + .milliseconds(Int.random(in: latency, using: &random))))
            }
            let nextArrival = pending.map(\.arrives).min()
            guard let next = [nextArrival, lookup.nextDeadline].compactMap({ $0 }).min() else { break }
            now = next
            for answer in pending where answer.arrives <= now {
                let reply = DHTServer.handle(
                    request, from: peers[source], at: address[0], records: &records, providers: &providers,
                    table: tables[index[answer.peer]!], now: now, addresses: { _ in address })
                guard case .respond(let response) = reply else { continue }
                lookup.received(from: answer.peer, closerPeers: response.closerPeers.map(\.id))
            }
            pending.removeAll { $0.arrives <= now }
            _ = lookup.expire(now: now)
        }
        let found = lookup.closestAnswered.first == peers[target]
        return Outcome(
            found: found, hops: lookup.hops(to: peers[target]) ?? 0, messages: lookup.requestsSent, elapsed: now - start)
    }

    /// Runs `count` lookups between random live nodes.
    mutating func measure(lookups count: Int, alpha: Int = 3, latency: ClosedRange<Int> = 10...50)
        -> (found: Int, hops: [Int], messages: [Int], elapsed: [Duration])
    {
        let live = peers.indices.filter { alive[$0] }
        var found = 0
        var hops: [Int] = []
        var messages: [Int] = []
        var elapsed: [Duration] = []
        for _ in 0..<count {
            let source = live.randomElement(using: &random)!
            var target = live.randomElement(using: &random)!
            while target == source { target = live.randomElement(using: &random)! }
            let outcome = lookup(from: source, to: target, alpha: alpha, latency: latency)
            if outcome.found { found += 1 }
            hops.append(outcome.hops)
            messages.append(outcome.messages)
            elapsed.append(outcome.elapsed)
        }
        return (found, hops, messages, elapsed)
    }
}

extension Array where Element: Comparable {
    func partitionPoint(_ belongsToFirst: (Element) -> Bool) -> Int {
        var low = 0
        var high = count
        while low < high {
            let mid = (low + high) / 2
            if belongsToFirst(self[mid]) { low = mid + 1 } else { high = mid }
        }
        return low
    }
}

final class SimulationTests: XCTestCase {
    private func mean(_ values: [Int]) -> Double { Double(values.reduce(0, +)) / Double(max(values.count, 1)) }

    private func report(_ label: String, nodes: Int, _ result: (found: Int, hops: [Int], messages: [Int], elapsed: [Duration])) {
        let line = String(
            format: "kad simulation %@: %d nodes, %d/%d found, hops mean %.2f max %d, messages mean %.1f max %d",
            label, nodes, result.found, result.hops.count, mean(result.hops), result.hops.max() ?? 0,
            mean(result.messages), result.messages.max() ?? 0)
        print(line)
    }

    /// Every lookup finds its target; hops and messages grow like log N.
    func testLookupsFindEveryTargetAndGrowLogarithmically() {
        var figures: [(nodes: Int, hops: Double, messages: Double)] = []
        var sizes = [100, 1000]
        if ProcessInfo.processInfo.environment["P2PCHAT_DHT_SIM_5000"] != nil { sizes.append(5000) }
        for nodes in sizes {
            let clock = ContinuousClock()
            let began = clock.now
            var network = SimulatedDHT(count: nodes, seed: UInt64(nodes))
            print("kad simulation: \(nodes) tables built in \(clock.now - began)")
            let result = network.measure(lookups: 100)
            report("healthy", nodes: nodes, result)
            XCTAssertEqual(result.found, 100, "every lookup in \(nodes) nodes finds its target")
            figures.append((nodes, mean(result.hops), mean(result.messages)))
        }
        // Ten times the nodes must cost far less than ten times the messages (log N, not N).
        XCTAssertLessThan(figures[1].messages, figures[0].messages * 3)
        XCTAssertLessThan(figures[1].hops, figures[0].hops + 3)
    }

    /// Time per lookup with every answer 50 ms away (a realistic wide-area
    /// round trip), in virtual time: 1000 nodes, and 5000 with P2PCHAT_DHT_SIM_5000.
    /// A lookup cannot beat one round trip per hop of the path it found, and
    /// with no node dead it never waits longer than one round trip per request.
    func testLookupTimeAtFiftyMillisecondsAHop() {
        var sizes = [1000]
        if ProcessInfo.processInfo.environment["P2PCHAT_DHT_SIM_5000"] != nil { sizes.append(5000) }
        for nodes in sizes {
            var network = SimulatedDHT(count: nodes, seed: UInt64(nodes))
            let result = network.measure(lookups: 100, latency: 50...50)
            XCTAssertEqual(result.found, 100, "every lookup in \(nodes) nodes finds its target")
            for (index, elapsed) in result.elapsed.enumerated() {
                let hops = result.hops[index]
                let requests = result.messages[index]
                XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(50 * hops), "lookup \(index): \(hops) hops in \(elapsed)")
                XCTAssertLessThanOrEqual(elapsed, .milliseconds(50 * requests), "lookup \(index): \(requests) requests in \(elapsed)")
            }
            let milliseconds = result.elapsed.map { Double($0.components.seconds) * 1000 + Double($0.components.attoseconds) / 1e15 }.sorted()
            print(String(
                format: "kad simulation 50 ms a hop: %d nodes, lookup time p50 %.0f ms p99 %.0f ms max %.0f ms, hops mean %.2f, messages mean %.1f",
                nodes, milliseconds[milliseconds.count / 2], milliseconds[milliseconds.count * 99 / 100], milliseconds.last!,
                mean(result.hops), mean(result.messages)))
        }
    }

    /// With a fifth of the nodes gone (their entries still in every table), lookups still succeed.
    func testLookupsSucceedWithTwentyPercentOfNodesGone() {
        var network = SimulatedDHT(count: 1000, seed: 7)
        network.fail(fraction: 0.2)
        let result = network.measure(lookups: 100)
        report("20% gone", nodes: 1000, result)
        XCTAssertEqual(result.found, 100)
    }
}
