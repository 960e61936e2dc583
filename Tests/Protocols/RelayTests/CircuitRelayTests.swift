import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
@testable import Relay
import Synchronization
import TestSupport
import Transport
import XCTest

/// Circuit relay v2 end to end on loopback TCP: a relay, a client that
/// reserves and listens through it, a client that dials through it.
final class CircuitRelayTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var hosts: [Libp2pHost] = []

    override func tearDown() async throws {
        for host in hosts { await host.close() }
    }

    /// A test host (identify, ping, echo) that also has the circuit transport.
    func makeNode() async throws -> (Libp2pHost, Multiaddr, CircuitTransport) {
        let circuit = CircuitTransport()
        let (host, address) = try await makeTestHost(group: group, transports: [TCPTransport(group: group), circuit])
        circuit.attach(host)
        hosts.append(host)
        return (host, address, circuit)
    }

    func makeRelay(_ limits: RelayLimits = .init()) async throws -> (Libp2pHost, Multiaddr, RelayService) {
        let (host, address, _) = try await makeNode()
        let relay = RelayService(host: host, limits: limits)
        relay.start()
        return (host, address, relay)
    }

    /// `stop` ends a hop stream waiting for its request and the event watcher,
    /// and the hop protocol is refused afterwards.
    func testStopEndsTheWatcherAndTheHopStreamsItServes() async throws {
        let (relayHost, relayAddress, relay) = try await makeRelay()
        _ = relayHost
        let (client, _, _) = try await makeNode()
        let connection = try await client.connect(relayAddress)
        try await assertStopEndsService(
            CircuitProtocol.hop, over: connection, busy: 2, running: { relay.tasks.running },
            stop: { await relay.stop() })
    }

    /// `stop` cuts the circuits open through the relay: both ends see their
    /// relayed connection close, and no circuit is left counted.
    func testStopCutsTheOpenCircuits() async throws {
        let (_, relayAddress, relay) = try await makeRelay()
        let (listener, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        let bound = try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let connection = try await withDeadline(30) {
            try await dialer.connect(bound[0].encapsulating(.p2p(listener.localPeer.bytes)))
        }
        let pinged = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(pinged.count, 1)
        XCTAssertEqual(relay.circuitCount, 1)
        try await withDeadline(10) { await relay.stop() }
        XCTAssertEqual(relay.tasks.running, 0)
        XCTAssertEqual(relay.circuitCount, 0)
        try await waitUntil("the dialer's relayed connection closed") { !connection.isActive }
        try await waitUntil("the listener's relayed connection closed") {
            !listener.connections.contains { $0.remotePeer == dialer.localPeer && $0.isActive }
        }
    }

    func testDialThroughRelayPingAndEcho() async throws {
        let (relayHost, relayAddress, relay) = try await makeRelay()
        let (listener, _, listenerCircuit) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        let bound = try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        XCTAssertEqual(bound, [relayAddress.encapsulating(.p2pCircuit)])
        XCTAssertTrue(listener.listenAddresses.contains(bound[0]), "advertised: \(listener.listenAddresses)")
        XCTAssertEqual(relay.reservationCount, 1)
        let grant = try XCTUnwrap(listenerCircuit.reservations[relayHost.localPeer])
        XCTAssertGreaterThan(grant.expire, UInt64(Date().timeIntervalSince1970))
        XCTAssertNotNil(grant.voucher)

        let target = bound[0].encapsulating(.p2p(listener.localPeer.bytes))
        let connection = try await withDeadline(30) { try await dialer.connect(target) }
        XCTAssertEqual(connection.remotePeer, listener.localPeer)
        XCTAssertEqual(connection.transport, "p2p-circuit")
        XCTAssertEqual(connection.remoteAddress, relayAddress.encapsulating(.p2pCircuit))
        let rtts = try await PingService.ping(connection, count: 3)
        XCTAssertEqual(rtts.count, 3)
        let data = patternBytes(count: 60_000, seed: 3)
        let back = try await withDeadline(30) { try await echo(data, over: connection) }
        XCTAssertTrue(back == data, "echoed bytes differ")
        // The listener sees the dialer as a relayed inbound connection.
        let inbound = try await waitFor("the listener has the relayed connection") { listener.connections.first { $0.remotePeer == dialer.localPeer } }
        XCTAssertEqual(inbound.transport, "p2p-circuit")
        XCTAssertEqual(inbound.direction, .inbound)
        XCTAssertEqual(relay.circuitCount, 1)
        await connection.close()
        try await waitUntil("the relay released the circuit") { relay.circuitCount == 0 }
    }

    func testDialWithoutReservationIsRefused() async throws {
        let (_, relayAddress, _) = try await makeRelay()
        let (other, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        let target = relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(other.localPeer.bytes))
        do {
            _ = try await dialer.connect(target)
            XCTFail("dial succeeded without a reservation")
        } catch TransportError.dialFailed(_, let underlying) {
            guard case RelayError.refused(.noReservation, _) = underlying else { return XCTFail("\(underlying)") }
        }
    }

    func testRelayRefusesReservationsOverItsLimit() async throws {
        var limits = RelayLimits()
        limits.maxReservations = 1
        let (_, relayAddress, relay) = try await makeRelay(limits)
        let (first, _, _) = try await makeNode()
        let (second, _, _) = try await makeNode()
        try await first.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        do {
            try await second.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
            XCTFail("a second reservation was granted")
        } catch RelayError.refused(let status, _) {
            XCTAssertEqual(status, .reservationRefused)
        }
        XCTAssertEqual(relay.reservationCount, 1)
    }

    func testRelayCutsACircuitAtItsDataLimit() async throws {
        var limits = RelayLimits()
        limits.circuit = CircuitLimit(duration: 60, data: 64 * 1024)
        let (_, relayAddress, relay) = try await makeRelay(limits)
        let (listener, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let connection = try await dialer.connect(
            relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(listener.localPeer.bytes)))
        // A small echo fits; a large one crosses the limit and the circuit is reset.
        let small = patternBytes(count: 1000, seed: 1)
        let back = try await echo(small, over: connection)
        XCTAssertEqual(back, small)
        do {
            _ = try await withDeadline(30) { try await echo(patternBytes(count: 256 * 1024, seed: 2), over: connection) }
            XCTFail("256 KiB crossed a circuit limited to 64 KiB")
        } catch is DeadlineExceeded {
            XCTFail("the circuit was not cut")
        } catch {
            // The stream or connection failed: the relay reset the circuit.
        }
        try await waitUntil("the relay cut the circuit") { !connection.isActive }
        try await waitUntil("the relay released the circuit") { relay.circuitCount == 0 }
    }

    func testRelayCutsACircuitAtItsDuration() async throws {
        var limits = RelayLimits()
        limits.circuit = CircuitLimit(duration: 1, data: nil)
        let (_, relayAddress, _) = try await makeRelay(limits)
        let (listener, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let connection = try await dialer.connect(
            relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(listener.localPeer.bytes)))
        XCTAssertTrue(connection.isActive)
        let start = ContinuousClock.now
        try await waitUntil("the relay cut the circuit at its duration") { !connection.isActive }
        XCTAssertGreaterThan(ContinuousClock.now - start, .milliseconds(500))
    }

    /// The connection to the relay drops: the listener reconnects and reserves
    /// again at once, and is reachable through the relay again.
    func testReservationIsRenewedWhenTheRelayConnectionDrops() async throws {
        let (relayHost, relayAddress, relay) = try await makeRelay()
        let (listener, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        try await listener.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        XCTAssertEqual(relay.reservationCount, 1)
        await listener.connection(to: relayHost.localPeer)?.close()
        try await waitUntil("the relay dropped the reservation") { relay.reservationCount == 0 }
        try await waitUntil("the listener reserved again") { relay.reservationCount == 1 }
        let connection = try await dialer.connect(
            relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(listener.localPeer.bytes)))
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
    }

    /// A hop request over the size limit, or garbage, is answered with
    /// MALFORMED_MESSAGE; a STATUS as a request with UNEXPECTED_MESSAGE.
    func testRelayAnswersBadRequestsWithTheirStatus() async throws {
        let (_, relayAddress, _) = try await makeRelay()
        let (client, _, _) = try await makeNode()
        let connection = try await client.connect(relayAddress)
        func answer(to bytes: [UInt8]) async throws -> HopMessage {
            let stream = try await connection.newStream(protocols: ["/libp2p/circuit/relay/0.2.0/hop"])
            try await stream.write(bytes)
            let reply = try await withDeadline(15) {
                var reader = StreamReader(stream)
                return try await reader.readLengthPrefixed(maxLength: 4096)
            }
            return try HopMessage(bytes: XCTUnwrap(reply).readableBytesView)
        }
        var oversized = ByteBuffer()
        oversized.writeLengthPrefixed([UInt8](repeating: 0x08, count: 5000))
        let tooLarge = try await answer(to: Array(oversized.readableBytesView))
        XCTAssertEqual(tooLarge, .status(.malformedMessage))
        var garbage = ByteBuffer()
        garbage.writeLengthPrefixed([0xFF, 0xFF, 0xFF])
        let malformed = try await answer(to: Array(garbage.readableBytesView))
        XCTAssertEqual(malformed, .status(.malformedMessage))
        var status = ByteBuffer()
        status.writeLengthPrefixed(HopMessage.status(.ok).encoded())
        let unexpected = try await answer(to: Array(status.readableBytesView))
        XCTAssertEqual(unexpected, .status(.unexpectedMessage))
    }

    /// Issue 22: a relay run unlimited (`--circuit-bytes 0 --circuit-seconds 0`)
    /// sent an empty `Limit{}` in its CONNECT answer and STOP CONNECT, which
    /// go-libp2p takes for a limited connection. The spec's unlimited is no
    /// `limit` field: the bytes on both streams, as the peers read them.
    func testAnUnlimitedRelaySendsNoLimitField() async throws {
        var limits = RelayLimits()
        limits.circuit = .unlimited
        let (_, relayAddress, _) = try await makeRelay(limits)
        let (target, _, _) = try await makeNode()
        let (dialer, _, _) = try await makeNode()
        func exchange(_ request: HopMessage, on connection: Connection) async throws -> [UInt8] {
            let stream = try await connection.newStream(protocols: [CircuitProtocol.hop])
            var buffer = ByteBuffer()
            buffer.writeLengthPrefixed(request.encoded())
            try await stream.write(buffer)
            let reply = try await withDeadline(15) {
                var reader = StreamReader(stream)
                return try await reader.readLengthPrefixed(maxLength: 4096)
            }
            return Array(try XCTUnwrap(reply).readableBytesView)
        }
        // The target reserves by hand and answers the relay's STOP CONNECT itself, keeping its bytes.
        let stopRequest = Mutex<[UInt8]?>(nil)
        target.setStreamHandler(CircuitProtocol.stop) { stream in
            var reader = StreamReader(stream)
            guard let request = try? await reader.readLengthPrefixed(maxLength: 4096) else { return }
            stopRequest.withLock { $0 = Array(request.readableBytesView) }
            var answer = ByteBuffer()
            answer.writeLengthPrefixed(StopMessage.status(.ok).encoded())
            try? await stream.write(answer)
        }
        let reservation = try await exchange(.reserve, on: try await target.connect(relayAddress))
        guard case .status(.ok, let grant?, _) = try HopMessage(bytes: reservation) else {
            return XCTFail("reservation refused: \(reservation)")
        }
        XCTAssertGreaterThan(grant.expire, 0)

        let answer = try await exchange(.connect(target.localPeer), on: try await dialer.connect(relayAddress))
        XCTAssertEqual(answer, [0x08, 0x02, 0x28, 100], "STATUS OK and nothing else")
        let id = dialer.localPeer.bytes
        let expectedStop: [UInt8] = [0x08, 0x00, 0x12, UInt8(id.count + 2), 0x0A, UInt8(id.count)] + id
        XCTAssertEqual(stopRequest.withLock { $0 }, expectedStop, "STOP CONNECT with the peer and no limit")
    }

    /// AutoRelay on loopback: a node that finds itself unreachable reserves on
    /// two relays it learned of by identify alone (no relay named), advertises
    /// their circuit addresses, replaces one that goes away with a third, and
    /// gives them all up once it is reachable.
    func testAutoRelayReservesOnRelaysItFindsAndReplacesOneThatGoesAway() async throws {
        let relays = try await [makeRelay(), makeRelay(), makeRelay()]
        let (node, _, circuit) = try await makeNode()
        let autoRelay = AutoRelayService(host: node, circuit: circuit)
        let events = autoRelay.events()
        let (reachability, feed) = AsyncStream.makeStream(of: AutoRelay.Reachability.self)
        let running = Task { await autoRelay.run(reachability: reachability) }
        defer { running.cancel() }
        let log = Mutex<[AutoRelayService.Event]>([])
        let collector = Task { for await event in events { log.withLock { $0.append(event) } } }
        defer { collector.cancel() }
        // Connected to two of the relays only: identify tells it they offer hop.
        for (host, address, _) in relays.prefix(2) {
            _ = try await node.connect(address)
            try await waitUntil("identify of \(host.localPeer)") {
                node.peerStore.info(host.localPeer)?.protocols.contains(CircuitProtocol.hop) ?? false
            }
        }
        feed.yield(.unreachable)
        try await waitUntil("two reservations", seconds: 20) { circuit.reservations.count == 2 }
        let first = relays[0].0.localPeer
        XCTAssertEqual(Set(circuit.reservations.keys), [first, relays[1].0.localPeer])
        // The circuit transport records a reservation before the host adds its listener.
        for (_, address, _) in relays.prefix(2) {
            try await waitUntil("\(address) advertised") { node.listenAddresses.contains(address.encapsulating(.p2pCircuit)) }
        }
        // The third becomes known; then the first relay goes away.
        _ = try await node.connect(relays[2].1)
        await relays[0].0.close()
        try await waitUntil("a reservation on the third relay", seconds: 30) {
            circuit.reservations[relays[2].0.localPeer] != nil && circuit.reservations[first] == nil
        }
        XCTAssertFalse(node.listenAddresses.contains(relays[0].1.encapsulating(.p2pCircuit)), "\(node.listenAddresses)")
        XCTAssertTrue(log.withLock { $0.contains { if case .released(first) = $0 { true } else { false } } })
        // Reachable: every reservation is given up.
        feed.yield(.reachable)
        try await waitUntil("no reservation", seconds: 20) {
            !node.listenAddresses.contains { $0.components.contains(.p2pCircuit) }
        }
    }

    /// STOP is answered only for relays we listen through, and never over a
    /// relayed connection: a stranger's STOP is refused with PERMISSION_DENIED
    /// and makes no connection.
    func testStopFromAPeerWeDidNotReserveOnIsRefused() async throws {
        let (relayHost, relayAddress, _) = try await makeRelay()
        let (node, _, _) = try await makeNode()
        let (stranger, _, _) = try await makeNode()
        let nodeAddress = node.listenAddresses[0].encapsulating(.p2p(node.localPeer.bytes))
        let connection = try await stranger.connect(nodeAddress)
        let stream = try await connection.newStream(protocols: [CircuitProtocol.stop])
        try await writeRelayMessage(StopMessage.connect(stranger.localPeer, limit: nil).encoded(), to: stream)
        let answer = try await readRelayMessage(stream, "STOP answer") { try StopMessage(bytes: $0.readableBytesView) }
        XCTAssertEqual(answer, .status(.permissionDenied))
        XCTAssertEqual(node.connections.filter { $0.transport == CircuitTransport.transportName }.count, 0)
        // The relay we reserved on still gets through.
        try await node.listen(on: [relayAddress.encapsulating(.p2pCircuit)])
        let target = relayAddress.encapsulating(.p2pCircuit).encapsulating(.p2p(node.localPeer.bytes))
        let relayed = try await withDeadline(30) { try await stranger.dial(target, role: .initiator) }
        XCTAssertEqual(relayed.transport, CircuitTransport.transportName)
        _ = relayHost
    }
}
