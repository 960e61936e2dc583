import Identity
import Relay
import XCTest

/// AutoRelay's decisions, in virtual time.
final class AutoRelayTests: XCTestCase {
    let start = ContinuousClock.now
    func at(_ seconds: Int) -> ContinuousClock.Instant { start + .seconds(seconds) }
    func peer() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }

    func testReservesOnTwoRelaysOnceUnreachableNamedOnesFirst() {
        var relay = AutoRelay(now: start)
        let named = peer()
        let boot = peer()
        let found = peer()
        XCTAssertEqual(relay.addCandidate(found, source: .discovered, offersHop: true, now: at(0)), [])
        XCTAssertEqual(relay.addCandidate(boot, source: .bootstrap, offersHop: true, now: at(0)), [])
        XCTAssertEqual(relay.addCandidate(named, source: .configured, offersHop: nil, now: at(0)), [])
        XCTAssertEqual(relay.setReachability(.unreachable, now: at(1)), [.reserve(named), .reserve(boot)])
        XCTAssertEqual(relay.reserved(named, now: at(2)), [])
        XCTAssertEqual(relay.reserved(boot, now: at(2)), [])
        XCTAssertEqual(relay.active, [named: true, boot: true])
        // Reachable: every reservation is given up.
        let released = relay.setReachability(.reachable, now: at(3))
        XCTAssertEqual(Set(released), [.release(named), .release(boot)])
        XCTAssertTrue(relay.active.isEmpty)
    }

    func testUnknownReachabilityReservesAfterTheGraceUnlessAPublicAddressIsKnown() {
        var configuration = AutoRelay.Configuration()
        configuration.unknownGrace = .seconds(15)
        var relay = AutoRelay(configuration: configuration, now: start)
        let hop = peer()
        XCTAssertEqual(relay.addCandidate(hop, source: .discovered, offersHop: true, now: at(1)), [])
        XCTAssertEqual(relay.nextDeadline(now: at(1)), at(15))
        XCTAssertEqual(relay.tick(now: at(14)), [])
        XCTAssertEqual(relay.tick(now: at(15)), [.reserve(hop)])

        var withPublic = AutoRelay(configuration: configuration, now: start)
        _ = withPublic.setPublicAddressKnown(true, now: at(0))
        _ = withPublic.addCandidate(hop, source: .discovered, offersHop: true, now: at(1))
        XCTAssertEqual(withPublic.tick(now: at(100)), [])
        XCTAssertNil(withPublic.nextDeadline(now: at(100)))
        // AutoNAT's verdict still counts.
        XCTAssertEqual(withPublic.setReachability(.unreachable, now: at(101)), [.reserve(hop)])
    }

    func testOnlyPeersThatOfferHopAreTriedButNamedRelaysAlways() {
        var relay = AutoRelay(now: start)
        let boot = peer()
        let named = peer()
        XCTAssertEqual(relay.setReachability(.unreachable, now: at(0)), [])
        // A bootstrap peer waits for identify.
        XCTAssertEqual(relay.addCandidate(boot, source: .bootstrap, offersHop: nil, now: at(0)), [])
        XCTAssertEqual(relay.addCandidate(boot, source: .discovered, offersHop: false, now: at(1)), [])
        XCTAssertEqual(relay.addCandidate(named, source: .configured, offersHop: false, now: at(1)), [.reserve(named)])
        XCTAssertEqual(relay.addCandidate(boot, source: .discovered, offersHop: true, now: at(2)), [.reserve(boot)])
    }

    func testAFailedOrLostRelayIsReplacedAndRetriedAfterABackoff() {
        var configuration = AutoRelay.Configuration()
        configuration.desiredRelays = 1
        configuration.backoff = .seconds(10)
        var relay = AutoRelay(configuration: configuration, now: start)
        let first = peer()
        let second = peer()
        _ = relay.addCandidate(first, source: .configured, offersHop: nil, now: at(0))
        _ = relay.addCandidate(second, source: .discovered, offersHop: true, now: at(0))
        XCTAssertEqual(relay.setReachability(.unreachable, now: at(0)), [.reserve(first)])
        XCTAssertEqual(relay.reserved(first, now: at(1)), [])
        // Lost: released, and the other takes its place.
        XCTAssertEqual(relay.reservationFailed(first, now: at(5)), [.release(first), .reserve(second)])
        XCTAssertEqual(relay.reservationFailed(second, now: at(6)), [.release(second)])
        // Both back off: the first until 15 s, the second until 16 s; doubling at the next failure.
        XCTAssertEqual(relay.nextDeadline(now: at(6)), at(15))
        XCTAssertEqual(relay.tick(now: at(14)), [])
        XCTAssertEqual(relay.tick(now: at(15)), [.reserve(first)])
        XCTAssertEqual(relay.reservationFailed(first, now: at(15)), [.release(first)])
        XCTAssertEqual(relay.tick(now: at(16)), [.reserve(second)])
        XCTAssertEqual(relay.reservationFailed(second, now: at(16)), [.release(second)])
        XCTAssertEqual(relay.tick(now: at(34)), [])
        XCTAssertEqual(relay.tick(now: at(35)), [.reserve(first)])
    }

    func testAReservationThatArrivesAfterItWasGivenUpIsReleased() {
        var relay = AutoRelay(now: start)
        let hop = peer()
        _ = relay.addCandidate(hop, source: .configured, offersHop: nil, now: at(0))
        XCTAssertEqual(relay.setReachability(.unreachable, now: at(0)), [.reserve(hop)])
        XCTAssertEqual(relay.setReachability(.reachable, now: at(1)), [.release(hop)])
        XCTAssertEqual(relay.reserved(hop, now: at(2)), [.release(hop)])
    }

    func testCandidatesAreBounded() {
        var configuration = AutoRelay.Configuration()
        configuration.maxCandidates = 4
        var relay = AutoRelay(configuration: configuration, now: start)
        let named = peer()
        _ = relay.addCandidate(named, source: .configured, offersHop: nil, now: at(0))
        for _ in 0..<100 { _ = relay.addCandidate(peer(), source: .discovered, offersHop: true, now: at(0)) }
        XCTAssertTrue(relay.isCandidate(named), "a named relay is never forgotten")
        XCTAssertEqual(relay.setReachability(.unreachable, now: at(1)).count, 2)
    }
}
