import Host
import Identity
import Multiformats
import Multistream
import NIOCore
import NIOPosix
import Ping
import Synchronization
import TestSupport
@testable import Transport
import XCTest
import Yamux

/// Handlers that take their stream and read nothing until `open()`, then
/// read it to the end; what each read in all.
final class HoldingHandlers: Sendable {
    static let protocolID = "/p2pchat/test/hold/1.0.0"
    private struct State {
        var opened = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        var held = 0
        var totals: [Int] = []
    }
    private let state = Mutex(State())

    func install(on host: Libp2pHost) {
        host.setStreamHandler(Self.protocolID) { stream in
            await self.wait()
            var count = 0
            while let chunk = try? await stream.read() { count += chunk.readableBytes }
            self.state.withLock { $0.totals.append(count) }
        }
    }

    private func wait() async {
        await withCheckedContinuation { continuation in
            let resume = state.withLock { state -> Bool in
                state.held += 1
                guard !state.opened else { return true }
                state.waiters.append(continuation)
                return false
            }
            if resume { continuation.resume() }
        }
    }

    var held: Int { state.withLock { $0.held } }
    var totals: [Int] { state.withLock { $0.totals } }

    func open() {
        let waiters = state.withLock { state in
            state.opened = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }
}

/// The host-wide memory budget (issue 14): streams reserve their receive
/// window (and writers what they queue); a peer that opens many streams and
/// fills them hits the limit, its newest streams are refused, and the others,
/// and other peers, keep being served.
final class MemoryLimitTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    static let window = 256 * 1024

    /// Issue 25's budget for the row-2 tests: 32 MiB, 4 MiB a peer, loopback limited too.
    static var rowTwoLimits: HostLimits {
        var limits = HostLimits()
        limits.maxMemory = 32 << 20
        limits.maxMemoryPerPeer = 4 << 20
        limits.limitLoopback = true
        return limits
    }

    /// A host whose connections leave from `ip` (a loopback address of its own).
    static func host(at ip: String, group: any EventLoopGroup) async throws -> Libp2pHost {
        try await makeTestHost(
            group: group, transports: [TCPTransport(group: group, reusePort: true)], listen: Multiaddr("/ip4/\(ip)/tcp/0")
        ).0
    }

    /// `count` attackers at `addresses` addresses from 127.0.0.2 on, each
    /// connected to `address` and holding up to 16 idle ping streams there.
    static func idleStreamAttackers(_ count: Int, addresses: Int, to address: Multiaddr, group: any EventLoopGroup)
        async throws -> (attackers: [Libp2pHost], held: [MuxedStream])
    {
        var attackers: [Libp2pHost] = []
        var held: [MuxedStream] = []
        for index in 0..<count {
            let attacker = try await host(at: "127.0.0.\(2 + index % addresses)", group: group)
            attackers.append(attacker)
            let connection = try await attacker.connect(address)
            for _ in 0..<16 {
                if let stream = try? await connection.newStream(protocols: [PingService.protocolID]) { held.append(stream) }
            }
        }
        return (attackers, held)
    }

    /// The peer on `connection` is served: four pings and an echo of 1 MiB.
    static func assertServed(_ connection: Connection) async throws {
        for _ in 0..<4 {
            let rtts = try await PingService.ping(connection, count: 1)
            XCTAssertEqual(rtts.count, 1)
        }
        let data = patternBytes(count: 1 << 20, seed: 5)
        let echoed = try await echo(data, over: connection)
        XCTAssertEqual(echoed, data)
    }

    /// Opens `count` streams to the holding handler, each filled with a
    /// window of data; how many were refused.
    func fill(_ connection: Connection, streams count: Int) async throws -> (accepted: [MuxedStream], refused: Int) {
        var accepted: [MuxedStream] = []
        var refused = 0
        for index in 0..<count {
            do {
                let stream = try await connection.newStream(protocols: [HoldingHandlers.protocolID])
                try await stream.write(ByteBuffer(bytes: patternBytes(count: Self.window, seed: UInt64(index + 1))))
                try await stream.closeWrite()
                accepted.append(stream)
            } catch {
                refused += 1
            }
        }
        return (accepted, refused)
    }

    func testAPeerFillingStreamsHitsItsLimitOthersAreServed() async throws {
        var limits = HostLimits()
        limits.maxMemory = 64 << 20
        limits.maxMemoryPerPeer = 4 << 20
        let (server, address) = try await makeTestHost(group: group, limits: limits)
        let holding = HoldingHandlers()
        holding.install(on: server)
        let budget = try XCTUnwrap(server.upgrader.memoryBudget)
        let (attacker, _) = try await makeTestHost(group: group)
        let connection = try await attacker.connect(address)
        let (accepted, refused) = try await fill(connection, streams: 24)
        // 4 MiB per peer, seven eighths of it for new streams: 14 windows of 256 KiB (identify may hold one for a moment).
        XCTAssertGreaterThanOrEqual(accepted.count, 12)
        XCTAssertLessThanOrEqual(accepted.count, 14)
        XCTAssertEqual(accepted.count + refused, 24)
        XCTAssertLessThanOrEqual(budget.used(by: attacker.localPeer), 4 << 20)
        XCTAssertEqual(server.limitCounters.transport[.memory(.perPeer)], refused)
        try await waitUntil("every stream held") { holding.held == accepted.count }

        // Another peer is served while the attacker holds its share.
        let (honest, _) = try await makeTestHost(group: group)
        let honestConnection = try await honest.connect(address)
        let rtts = try await PingService.ping(honestConnection, count: 2)
        XCTAssertEqual(rtts.count, 2)
        let data = patternBytes(count: 1 << 20, seed: 9)
        let echoed = try await echo(data, over: honestConnection)
        XCTAssertEqual(echoed, data)

        // The attacker's accepted streams were served in full.
        holding.open()
        try await waitUntil("every stream counted its total") { holding.totals.count == accepted.count }
        XCTAssertEqual(holding.totals, Array(repeating: Self.window, count: accepted.count))

        // Everything reserved goes back when the connections close.
        await attacker.close()
        await honest.close()
        try await waitUntil("the budget released") { budget.used == 0 }
        await server.close()
    }

    func testTotalLimitRefusesNewStreamsAndOpenOnesGoOn() async throws {
        var limits = HostLimits()
        limits.maxMemory = 4 << 20
        limits.maxMemoryPerPeer = 4 << 20
        let (server, address) = try await makeTestHost(group: group, limits: limits)
        let holding = HoldingHandlers()
        holding.install(on: server)
        let budget = try XCTUnwrap(server.upgrader.memoryBudget)
        // An honest peer's echo stream is open before the flood.
        let (honest, _) = try await makeTestHost(group: group)
        let honestConnection = try await honest.connect(address)
        let stream = try await honestConnection.newStream(protocols: [echoProtocol])
        // Two peers fill what is left.
        let (first, _) = try await makeTestHost(group: group)
        let (second, _) = try await makeTestHost(group: group)
        let firstFill = try await fill(try await first.connect(address), streams: 10)
        let secondFill = try await fill(try await second.connect(address), streams: 10)
        XCTAssertGreaterThan(firstFill.refused + secondFill.refused, 0)
        XCTAssertLessThanOrEqual(budget.used, 4 << 20)
        XCTAssertGreaterThan(server.limitCounters.transport[.memory(.total), default: 0], 0)

        // The stream opened before keeps working: 2 MiB echoed through it,
        // 64 KiB at a time (the echo's writes fit the room left for writes).
        let data = patternBytes(count: 2 << 20, seed: 4)
        let echoed = try await withDeadline(30) {
            var reader = StreamReader(stream)
            var echoed: [UInt8] = []
            for start in stride(from: 0, to: data.count, by: 64 * 1024) {
                let piece = data[start..<min(start + 64 * 1024, data.count)]
                try await stream.write(ByteBuffer(bytes: piece))
                echoed += Array(try await reader.readExactly(piece.count).readableBytesView)
            }
            return echoed
        }
        XCTAssertEqual(echoed, data)

        holding.open()
        await first.close()
        await second.close()
        await honest.close()
        try await waitUntil("the budget released") { budget.used == 0 }
        await server.close()
    }

    /// Issue 25, row 2: peer ids made up at will behind two addresses, each
    /// opening idle streams up to its share, cannot reserve the whole budget:
    /// an address holds at most its share (a quarter), and another peer's new
    /// streams are served.
    func testPeerIDsFromTwoAddressesCannotReserveEveryonesStreams() async throws {
        try await withDeadline(120) { [group] in
            let (server, address) = try await makeTestHost(group: group, limits: Self.rowTwoLimits)
            let budget = try XCTUnwrap(server.upgrader.memoryBudget)
            // 2 addresses, 8 peer ids each, 16 idle ping streams each (14 fit a peer's share): 56 MiB asked of 32.
            let (attackers, held) = try await Self.idleStreamAttackers(16, addresses: 2, to: address, group: group)
            let window = Self.window
            for ip in ["127.0.0.2", "127.0.0.3"] {
                let network = try XCTUnwrap(budget.network(of: Multiaddr("/ip4/\(ip)/tcp/1")))
                XCTAssertLessThanOrEqual(budget.used(from: network), 8 << 20, "\(ip) holds more than its share")
                XCTAssertGreaterThanOrEqual(budget.used(from: network), 6 << 20, "\(ip) was refused before its share")
            }
            XCTAssertLessThanOrEqual(held.count, 2 * (7 << 20) / window, "more idle streams held than two shares")
            XCTAssertGreaterThan(server.limitCounters.transport[.memory(.perNetwork), default: 0], 0)

            // Another peer opens new streams and is served.
            let honest = try await Self.host(at: "127.0.0.50", group: group)
            try await Self.assertServed(try await honest.connect(address))

            for stream in held { stream.reset() }
            await honest.close()
            for attacker in attackers { await attacker.close() }
            await server.close()
        }
    }


    /// Issue 25, row 2: peer ids at five addresses, each within its share,
    /// fill the whole budget with idle streams. Once those have been idle
    /// `reclaimIdleStreamsAfter`, a newcomer's new streams take their room (the
    /// idle ones of the biggest holders are reset): its pings and an echo are
    /// served; an honest peer's long-lived stream, idle all along, still works.
    func testIdleStreamsFromFiveAddressesAreReclaimedForANewcomer() async throws {
        try await withDeadline(120) { [group] in
            var limits = Self.rowTwoLimits
            limits.reclaimIdleStreamsAfter = .seconds(2)
            let (server, address) = try await makeTestHost(group: group, limits: limits)
            let budget = try XCTUnwrap(server.upgrader.memoryBudget)
            // An honest peer's long-lived stream, open before the flood and idle throughout.
            let honest = try await Self.host(at: "127.0.0.40", group: group)
            let honestStream = try await honest.connect(address).newStream(protocols: [echoProtocol])
            // 5 addresses, 2 peer ids each, 16 idle ping streams each: 40 MiB asked of the 28 new streams may fill.
            let (attackers, held) = try await Self.idleStreamAttackers(10, addresses: 5, to: address, group: group)
            let idleSince = ContinuousClock.now
            XCTAssertGreaterThan(
                budget.used + Self.window, MemoryBudget.share(of: 32 << 20, MemoryBudget.stream), "the budget has room left")
            XCTAssertGreaterThan(server.limitCounters.transport[.memory(.total), default: 0], 0)

            // The attackers' streams become idle long enough to be reclaimed.
            try await Task.sleep(until: idleSince + .milliseconds(2500))
            let newcomer = try await Self.host(at: "127.0.0.50", group: group)
            try await Self.assertServed(try await newcomer.connect(address))
            XCTAssertGreaterThan(budget.reclaims, 0)
            XCTAssertLessThanOrEqual(budget.used, 32 << 20)
            XCTAssertEqual(budget.reclaims(of: honest.localPeer), 0)
            XCTAssertEqual(budget.reclaims(of: newcomer.localPeer), 0)

            // The honest peer's stream was not taken: it still echoes.
            let piece = patternBytes(count: 4096, seed: 6)
            try await honestStream.write(ByteBuffer(bytes: piece))
            var reader = StreamReader(honestStream)
            let back = try await reader.readExactly(piece.count)
            XCTAssertEqual(Array(back.readableBytesView), piece)

            for stream in held { stream.reset() }
            honestStream.reset()
            await newcomer.close()
            await honest.close()
            for attacker in attackers { await attacker.close() }
            await server.close()
        }
    }
}

/// Unit checks of the budget's arithmetic.
final class MemoryBudgetTests: XCTestCase {
    func testPrioritiesSharesAndRelease() {
        let budget = MemoryBudget(limit: 1024, limitPerPeer: 512)
        let a = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let b = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        // Growth may fill half of a limit: here the peer's 512, so 256.
        XCTAssertNil(budget.reserve(256, for: a, priority: MemoryBudget.growth))
        XCTAssertEqual(budget.reserve(1, for: a, priority: MemoryBudget.growth, counted: false), .perPeer)
        // New streams seven eighths (448 of 512), writes all of it.
        XCTAssertNil(budget.reserve(192, for: a, priority: MemoryBudget.stream))
        XCTAssertEqual(budget.reserve(1, for: a, priority: MemoryBudget.stream), .perPeer)
        XCTAssertNil(budget.reserve(64, for: a, priority: MemoryBudget.always))
        XCTAssertEqual(budget.refusals, 1)
        // The total: 1024, of which a holds 512.
        XCTAssertNil(budget.reserve(384, for: b, priority: MemoryBudget.stream))
        XCTAssertEqual(budget.reserve(64, for: b, priority: MemoryBudget.stream), .total)
        XCTAssertEqual(budget.used, 896)
        budget.release(512, for: a)
        XCTAssertEqual(budget.used(by: a), 0)
        XCTAssertNil(budget.reserve(64, for: b, priority: MemoryBudget.stream))
        XCTAssertEqual(budget.used, 448)
    }

    /// The stream table (sans-IO): a SYN whose window does not fit is reset
    /// with a `limitReached` event; a reset stream gives its window back.
    func testStreamTableRefusesAStreamWhoseWindowDoesNotFit() throws {
        let window = Int(YamuxSession.Configuration().initialWindow)
        // Seven eighths of the limit hold two windows, not three.
        let budget = MemoryBudget(limit: 3 * window, limitPerPeer: 3 * window)
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        var table = StreamTable(
            isClient: false, configuration: .init(), limits: MultistreamLimits(),
            memory: StreamMemoryLedger(budget: budget, peer: peer), supports: { _ in true })
        var events: [StreamTable.Event] = []
        for id: UInt32 in [1, 3, 5] {
            var syn = StreamLimitTests.frame(type: 1, flags: 1, stream: id)
            events += try table.receive(&syn, now: .now())
        }
        let incoming = events.compactMap { event -> UInt32? in
            if case .incoming(let id) = event { return id }
            return nil
        }
        XCTAssertEqual(incoming, [1, 3])
        XCTAssertTrue(events.contains { if case .limitReached(.memory(.total)) = $0 { return true } else { return false } })
        XCTAssertEqual(budget.used, 2 * window)
        XCTAssertEqual(table.reservedMemory, 2 * window)
        // The remote resets stream 1: its window goes back, and a new stream fits.
        var reset = StreamLimitTests.frame(type: 1, flags: 8, stream: 1)
        _ = try table.receive(&reset, now: .now())
        XCTAssertEqual(budget.used, window)
        var syn = StreamLimitTests.frame(type: 1, flags: 1, stream: 7)
        let accepted = try table.receive(&syn, now: .now())
        XCTAssertTrue(accepted.contains { if case .incoming(7) = $0 { return true } else { return false } })
        XCTAssertEqual(budget.used, 2 * window)
        _ = table.removeAll()
        XCTAssertEqual(budget.used, 0)
    }

    /// One network's share bounds all of its peers together; loopback has none unless limited.
    func testANetworksShareBoundsAllItsPeers() throws {
        let budget = MemoryBudget(limit: 1024, limitPerPeer: 512, limitPerNetwork: 256, limitLoopback: false)
        let a = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let b = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let here = try XCTUnwrap(budget.network(of: Multiaddr("/ip4/192.0.2.7/tcp/1")))
        XCTAssertEqual(budget.network(of: try Multiaddr("/ip6/2001:db8:1:2::1/tcp/1")),
            budget.network(of: try Multiaddr("/ip6/2001:db8:1:2:ffff::9/tcp/1")), "one IPv6 /64")
        XCTAssertNil(budget.network(of: try Multiaddr("/ip4/127.0.0.1/tcp/1")), "loopback exempt")
        // Streams may fill seven eighths of the network's 256: 224, by any of its peers.
        XCTAssertNil(budget.reserve(200, for: a, from: here, priority: MemoryBudget.stream))
        XCTAssertEqual(budget.reserve(32, for: b, from: here, priority: MemoryBudget.stream), .perNetwork)
        XCTAssertEqual(MemoryBudget.Refusal.perNetwork.reason, "memory per IP address")
        XCTAssertNil(budget.reserve(200, for: b, priority: MemoryBudget.stream), "elsewhere, b still has room")
        budget.release(200, for: a, from: here)
        XCTAssertEqual(budget.used(from: here), 0)
        XCTAssertNil(budget.reserve(200, for: b, from: here, priority: MemoryBudget.stream))
    }

    /// Issue 25, row 2 (sans-IO): when a new stream does not fit the total,
    /// the stream idle longest of the biggest holder is reclaimed for it at
    /// once; a smaller holder's idle stream (an honest peer's pubsub stream),
    /// streams active lately, and holders no bigger than the newcomer would
    /// be are not.
    func testIdleStreamsOfTheBiggestHolderAreReclaimedForANewcomer() throws {
        let window: UInt32 = 1000
        // Seven eighths of 8000: seven windows of new streams.
        let budget = MemoryBudget(limit: 8000, limitPerPeer: 8000, reclaimIdleAfter: .seconds(10))
        func peer() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        func at(_ seconds: Int64) -> NIODeadline { .uptimeNanoseconds(UInt64(1000 + seconds) * 1_000_000_000) }
        let reclaimed = Mutex<[String]>([])
        func ledger(_ name: String, _ address: String) throws -> StreamMemoryLedger {
            StreamMemoryLedger(budget: budget, peer: peer(), remoteAddress: try Multiaddr(address)) { id in
                reclaimed.withLock { $0.append("\(name) \(id)") }
            }
        }
        var honest = try ledger("honest", "/ip4/198.51.100.9/tcp/1")
        var bigger = try ledger("bigger", "/ip4/192.0.2.1/tcp/1")
        var smaller = try ledger("smaller", "/ip4/192.0.2.2/tcp/1")
        var newcomer = try ledger("newcomer", "/ip4/203.0.113.5/tcp/1")
        var later = try ledger("later", "/ip4/203.0.113.6/tcp/1")
        // The honest peer's one stream first, idle from then on; an attacker's
        // network with 4 windows, another with 1; the newcomer's first: the total is full.
        XCTAssertNil(honest.admit(1, window: window, now: at(0)))
        XCTAssertNil(smaller.admit(1, window: window, now: at(0)))
        XCTAssertNil(bigger.admit(1, window: window, now: at(1)))
        XCTAssertNil(bigger.admit(3, window: window, now: at(1)))
        XCTAssertNil(bigger.admit(5, window: window, now: at(2)))
        XCTAssertNil(bigger.admit(7, window: window, now: at(2)))
        XCTAssertNil(newcomer.admit(1, window: window, now: at(2)))
        XCTAssertEqual(budget.used, 7000)
        // Nothing idle long enough yet: refused, nothing taken (and not looked for again within a second).
        XCTAssertEqual(newcomer.admit(3, window: window, now: at(5)), .total)
        XCTAssertEqual(reclaimed.withLock { $0 }, [])
        // Stream 3 of the bigger holder carried data lately; 1 is idle longest and goes.
        bigger.touch(3, now: at(8))
        XCTAssertNil(newcomer.admit(3, window: window, now: at(12)))
        XCTAssertEqual(reclaimed.withLock { $0 }, ["bigger 1"])
        XCTAssertEqual(budget.used, 7000)
        // The newcomer would hold 3 windows, as much as the bigger holder: refused.
        XCTAssertEqual(newcomer.admit(5, window: window, now: at(12)), .total)
        // Another newcomer takes an idle stream of the bigger holder (never 3, the honest one's, the smaller's).
        XCTAssertNil(later.admit(1, window: window, now: at(14)))
        let taken = reclaimed.withLock { $0 }
        XCTAssertEqual(taken.count, 2)
        XCTAssertTrue(["bigger 5", "bigger 7"].contains(taken.last ?? ""), "\(taken)")
        XCTAssertEqual(budget.reclaims, 2)
        // A reclaimed stream reserves nothing more, and its removal gives nothing back twice.
        XCTAssertEqual(bigger.reserveGrowth(1, upTo: 500, now: at(15)), 0)
        bigger.remove(1)
        XCTAssertEqual(budget.used, 7000)
        honest.removeAll()
        smaller.removeAll()
        bigger.removeAll()
        newcomer.removeAll()
        later.removeAll()
        XCTAssertEqual(budget.used, 0)
    }

    func testLedgerGivesBackWhatAStreamHeld() {
        let budget = MemoryBudget(limit: 1 << 20, limitPerPeer: 1 << 20)
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        var ledger = StreamMemoryLedger(budget: budget, peer: peer)
        XCTAssertNil(ledger.admit(1, window: 1000, now: .now()))
        XCTAssertEqual(ledger.reserveGrowth(1, upTo: 1000, now: .now()), 1000)
        ledger.unusedGrowth(1, 400)
        XCTAssertNil(ledger.queue(1, bytes: 300, now: .now()))
        XCTAssertEqual(budget.used, 1900)
        ledger.queueShrank(1, to: 100, now: .now())
        XCTAssertEqual(budget.used, 1700)
        XCTAssertNil(ledger.admit(3, window: 1000, now: .now()))
        ledger.remove(1)
        XCTAssertEqual(budget.used, 1000)
        ledger.removeAll()
        XCTAssertEqual(budget.used, 0)
        XCTAssertEqual(ledger.reserved, 0)
    }
}
