import Identity
import Multiformats
import TestSupport
import XCTest

@testable import Relay

/// The relay's messages, vouchers and bookkeeping, without a network.
final class RelayMessageTests: XCTestCase {
    let alice = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
    let bob = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)

    func testHopAndStopMessagesRoundTrip() throws {
        let grant = ReservationGrant(
            expire: 1_700_000_000, addresses: [try Multiaddr("/ip4/192.0.2.1/tcp/4001")], voucher: [1, 2, 3])
        let hops: [HopMessage] = [
            .reserve, .connect(alice), .status(.ok, reservation: grant, limit: CircuitLimit(duration: 120, data: 1 << 17)),
            .status(.noReservation), .status(.ok, limit: CircuitLimit(duration: nil, data: 5)),
        ]
        for message in hops {
            XCTAssertEqual(try HopMessage(bytes: message.encoded()), message)
        }
        let stops: [StopMessage] = [.connect(bob, limit: CircuitLimit(duration: 60, data: nil)), .connect(bob, limit: nil), .status(.ok)]
        for message in stops {
            XCTAssertEqual(try StopMessage(bytes: message.encoded()), message)
        }
    }

    /// The spec's bytes: type CONNECT (field 1 = 1), peer {id} (field 2); STATUS OK is field 5 = 100.
    func testWireBytesFollowTheSpec() throws {
        let connect = HopMessage.connect(alice).encoded()
        XCTAssertEqual(Array(connect.prefix(4)), [0x08, 0x01, 0x12, UInt8(alice.bytes.count + 2)])
        XCTAssertEqual(HopMessage.status(.ok).encoded(), [0x08, 0x02, 0x28, 100])
        XCTAssertEqual(StopMessage.status(.permissionDenied).encoded(), [0x08, 0x01, 0x20, 0xCA, 0x01])
        // An explicit 0 limit means unlimited, as an absent one does.
        XCTAssertEqual(try HopMessage(bytes: [0x08, 0x02, 0x28, 100, 0x22, 0x04, 0x08, 0x00, 0x10, 0x00]), .status(.ok))
    }

    /// Issue 22: an unlimited circuit was sent as an empty `Limit{}` (field 4 of
    /// HopMessage, 3 of StopMessage), which go-libp2p reads as limited. No field
    /// at all when unlimited; a limit with one bound carries only that bound.
    func testLimitFieldsAreSentOnlyForRealBounds() throws {
        XCTAssertEqual(HopMessage.status(.ok, limit: .unlimited).encoded(), [0x08, 0x02, 0x28, 100])
        let id = alice.bytes
        let stopConnect: [UInt8] = [0x08, 0x00, 0x12, UInt8(id.count + 2), 0x0A, UInt8(id.count)] + id
        XCTAssertEqual(StopMessage.connect(alice, limit: .unlimited).encoded(), stopConnect)
        XCTAssertEqual(StopMessage.connect(alice, limit: nil).encoded(), stopConnect)
        // Duration only: Limit{duration = 120}; data only: Limit{data = 131072}.
        XCTAssertEqual(
            HopMessage.status(.ok, limit: CircuitLimit(duration: 120, data: nil)).encoded(),
            [0x08, 0x02, 0x22, 0x02, 0x08, 120, 0x28, 100])
        XCTAssertEqual(
            HopMessage.status(.ok, limit: CircuitLimit(duration: nil, data: 1 << 17)).encoded(),
            [0x08, 0x02, 0x22, 0x04, 0x10, 0x80, 0x80, 0x08, 0x28, 100])
        XCTAssertEqual(
            StopMessage.connect(alice, limit: CircuitLimit(duration: 60, data: nil)).encoded(),
            stopConnect + [0x1A, 0x02, 0x08, 60])
        // What we receive: an empty Limit{} is no limit (a full connection), a one-bound limit keeps its bound.
        XCTAssertEqual(try HopMessage(bytes: [0x08, 0x02, 0x22, 0x00, 0x28, 100]), .status(.ok))
        XCTAssertEqual(try StopMessage(bytes: stopConnect + [0x1A, 0x00]), .connect(alice, limit: nil))
        XCTAssertEqual(
            try StopMessage(bytes: stopConnect + [0x1A, 0x02, 0x08, 60]), .connect(alice, limit: CircuitLimit(duration: 60, data: nil)))
        XCTAssertNil(try RelayClientProtocol.circuit(from: HopMessage(bytes: [0x08, 0x02, 0x28, 100])), "a full connection")
    }

    func testMalformedMessagesAreRefused() {
        XCTAssertThrowsError(try HopMessage(bytes: [] as [UInt8]))  // no type
        XCTAssertThrowsError(try HopMessage(bytes: [0x08, 0x01]))  // CONNECT without a peer
        XCTAssertThrowsError(try HopMessage(bytes: [0x08, 0x02]))  // STATUS without a status
        XCTAssertThrowsError(try HopMessage(bytes: [0x08, 0x02, 0x28, 101]))  // unknown status
        XCTAssertThrowsError(try HopMessage(bytes: [0x08, 0x07]))  // unknown type
        XCTAssertThrowsError(try HopMessage(bytes: [0x08, 0x01, 0x12, 0x03, 0x0A, 0x01, 0xFF]))  // bad peer id
        XCTAssertThrowsError(try StopMessage(bytes: [0x08, 0x00]))  // stop CONNECT without a peer
    }

    func testTruncatedAndRandomInputNeverCrashes() throws {
        let grant = ReservationGrant(expire: 1, addresses: [try Multiaddr("/ip4/192.0.2.1/tcp/1")], voucher: Array(repeating: 7, count: 40))
        let valid = HopMessage.status(.ok, reservation: grant, limit: CircuitLimit(duration: 1, data: 2)).encoded()
        for cut in 0..<valid.count {
            _ = try? HopMessage(bytes: valid.prefix(cut))
            _ = try? StopMessage(bytes: valid.prefix(cut))
        }
        var generator = SplitMix(seed: 33)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0...64, using: &generator)).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = try? HopMessage(bytes: bytes)
            _ = try? StopMessage(bytes: bytes)
            _ = try? ReservationVoucher.open(bytes)
        }
    }

    func testVoucherVerifiesAndNamesTheRelay() throws {
        let relayKey = PrivateKey.generateEd25519()
        let relay = PeerID(publicKey: relayKey.publicKey)
        let voucher = ReservationVoucher(relay: relay, peer: alice, expiration: 42)
        let sealed = try voucher.sealed(with: relayKey)
        XCTAssertEqual(try ReservationVoucher.open(sealed), voucher)
        // Signed by someone else than the relay it names.
        let forged = try voucher.sealed(with: .generateEd25519())
        XCTAssertThrowsError(try ReservationVoucher.open(forged))
        // A changed byte breaks the signature or the parse.
        var tampered = sealed
        tampered[tampered.count - 70] ^= 1
        XCTAssertThrowsError(try ReservationVoucher.open(tampered))
        // The client side checks it names us and the relay.
        let answer = HopMessage.status(.ok, reservation: ReservationGrant(expire: 100, addresses: [], voucher: sealed))
        XCTAssertNoThrow(try RelayClientProtocol.reservation(from: answer, relay: relay, local: alice, now: 10))
        XCTAssertThrowsError(try RelayClientProtocol.reservation(from: answer, relay: relay, local: bob, now: 10))
        XCTAssertThrowsError(try RelayClientProtocol.reservation(from: answer, relay: relay, local: alice, now: 100))
        XCTAssertThrowsError(try RelayClientProtocol.reservation(from: .status(.reservationRefused), relay: relay, local: alice, now: 1)) {
            guard case RelayError.refused(.reservationRefused, _) = $0 else { return XCTFail("\($0)") }
        }
    }

    func testReservationLimits() {
        var limits = RelayLimits()
        limits.maxReservations = 3
        limits.maxReservationsPerIP = 2
        limits.reservationTTL = 10
        var resources = RelayResources(limits: limits)
        let peers = (0..<4).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        let ipA: [UInt8] = [192, 0, 2, 1], ipB: [UInt8] = [192, 0, 2, 2]
        XCTAssertEqual(try resources.reserve(peer: peers[0], ip: ipA, overRelayedConnection: false, now: 100).get(), 110)
        XCTAssertNoThrow(try resources.reserve(peer: peers[1], ip: ipA, overRelayedConnection: false, now: 100).get())
        // A third from the same IP is refused; a refresh is not a new one.
        XCTAssertEqual(resources.reserve(peer: peers[2], ip: ipA, overRelayedConnection: false, now: 100), .failure(.init(.reservationRefused)))
        XCTAssertEqual(try resources.reserve(peer: peers[1], ip: ipA, overRelayedConnection: false, now: 105).get(), 115)
        XCTAssertNoThrow(try resources.reserve(peer: peers[2], ip: ipB, overRelayedConnection: false, now: 100).get())
        // The total is reached.
        XCTAssertEqual(resources.reserve(peer: peers[3], ip: nil, overRelayedConnection: false, now: 100), .failure(.init(.reservationRefused)))
        // Never over a relayed connection.
        XCTAssertEqual(resources.reserve(peer: peers[0], ip: ipA, overRelayedConnection: true, now: 100), .failure(.init(.permissionDenied)))
        // Expired ones make room.
        XCTAssertNoThrow(try resources.reserve(peer: peers[3], ip: nil, overRelayedConnection: false, now: 111).get())
        XCTAssertFalse(resources.hasReservation(peers[0], now: 111))
        XCTAssertTrue(resources.hasReservation(peers[1], now: 111))
    }

    func testCircuitLimits() {
        var limits = RelayLimits()
        limits.maxCircuitsPerPeer = 2
        limits.maxCircuits = 3
        var resources = RelayResources(limits: limits)
        let peers = (0..<4).map { _ in PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }
        XCTAssertEqual(resources.openCircuit(from: peers[0], to: peers[1], overRelayedConnection: false, now: 1), .failure(.init(.noReservation)))
        _ = resources.reserve(peer: peers[1], ip: nil, overRelayedConnection: false, now: 1)
        XCTAssertEqual(try resources.openCircuit(from: peers[0], to: peers[1], overRelayedConnection: false, now: 1).get(), limits.circuit)
        XCTAssertNoThrow(try resources.openCircuit(from: peers[2], to: peers[1], overRelayedConnection: false, now: 1).get())
        // peers[1] is in two circuits already.
        XCTAssertEqual(resources.openCircuit(from: peers[3], to: peers[1], overRelayedConnection: false, now: 1), .failure(.init(.resourceLimitExceeded)))
        XCTAssertEqual(resources.openCircuit(from: peers[3], to: peers[1], overRelayedConnection: true, now: 1), .failure(.init(.permissionDenied)))
        resources.closeCircuit(from: peers[0], to: peers[1])
        XCTAssertNoThrow(try resources.openCircuit(from: peers[3], to: peers[1], overRelayedConnection: false, now: 1).get())
        XCTAssertEqual(resources.circuitCount, 2)
    }

    func testCircuitBudget() {
        var budget = CircuitBudget(limit: 10)
        XCTAssertEqual(budget.take(4), 4)
        XCTAssertFalse(budget.isExhausted)
        XCTAssertEqual(budget.take(8), 6)
        XCTAssertTrue(budget.isExhausted)
        XCTAssertEqual(budget.take(1), 0)
        var unlimited = CircuitBudget(limit: nil)
        XCTAssertEqual(unlimited.take(1 << 30), 1 << 30)
        XCTAssertFalse(unlimited.isExhausted)
    }

    func testCircuitAddresses() throws {
        let relay = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let dial = try XCTUnwrap(CircuitAddress(try Multiaddr("/ip4/192.0.2.1/tcp/4001/p2p/\(relay)/p2p-circuit/p2p/\(alice)")))
        XCTAssertEqual(dial.relay, relay)
        XCTAssertEqual(dial.target, alice)
        XCTAssertEqual(dial.relayAddress, try Multiaddr("/ip4/192.0.2.1/tcp/4001/p2p/\(relay)"))
        XCTAssertEqual(CircuitAddress(try Multiaddr("/p2p/\(relay)/p2p-circuit"))?.target, nil)
        XCTAssertNil(CircuitAddress(try Multiaddr("/ip4/192.0.2.1/tcp/4001/p2p-circuit/p2p/\(alice)")))  // no relay id
        XCTAssertNil(CircuitAddress(try Multiaddr("/ip4/192.0.2.1/tcp/4001/p2p/\(alice)")))
        XCTAssertNil(CircuitAddress(try Multiaddr("/p2p/\(relay)/p2p-circuit/p2p/\(alice)/p2p/\(bob)")))
    }
}
