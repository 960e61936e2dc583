import Identity
import Multiformats
import XCTest

@testable import Identify

final class ObservedAddressBookTests: XCTestCase {
    func peer() -> PeerID { PeerID(publicKey: PrivateKey.generateEd25519().publicKey) }

    func testConfirmedOnlyOnceEnoughPeersAgree() throws {
        var book = ObservedAddressBook(threshold: 2, ttl: .seconds(60))
        let address = try Multiaddr("/ip4/203.0.113.1/tcp/4001")
        let now = ContinuousClock.now
        let first = peer()
        book.record(address, by: first, now: now)
        book.record(address, by: first, now: now)  // the same peer twice counts once
        XCTAssertEqual(book.confirmed(now: now), [])
        book.record(address, by: peer(), now: now)
        XCTAssertEqual(book.confirmed(now: now), [address])
        // Relayed addresses are never recorded.
        let circuit = try Multiaddr("/ip4/203.0.113.10/tcp/4001/p2p/\(first)/p2p-circuit")
        book.record(circuit, by: first, now: now)
        book.record(circuit, by: peer(), now: now)
        XCTAssertEqual(book.confirmed(now: now), [address])
        // Observations expire.
        XCTAssertEqual(book.confirmed(now: now + .seconds(61)), [])
    }

    func testBounded() throws {
        var book = ObservedAddressBook(threshold: 1)
        let now = ContinuousClock.now
        let observer = peer()
        for port in 0..<200 {
            book.record(try Multiaddr("/ip4/203.0.113.1/tcp/\(port + 1)"), by: observer, now: now)
        }
        XCTAssertEqual(book.all.count, ObservedAddressBook.maxAddresses)
        let address = try Multiaddr("/ip4/203.0.113.1/tcp/1")
        for _ in 0..<100 { book.record(address, by: peer(), now: now) }
        XCTAssertEqual(book.confirmed(now: now).first, address)
    }
}
