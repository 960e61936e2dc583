import Identity
import Multiformats
import XCTest

@testable import MDNS

/// Found 4 and 5 of issue 14: spoofed announcements on the local link. One
/// peer id with a new address per packet made every packet report (and the
/// chat dial) every address so far; any number of peer ids were kept.
final class MDNSFloodTests: XCTestCase {
    func announcement(peer: PeerID, port: Int) -> [UInt8] {
        let address = try! Multiaddr("/ip4/192.0.2.7/tcp/\(port)")
        return MDNSRecords.response(peerName: "spoof", addresses: [address], peer: peer, ttl: 120).encoded()
    }

    func drain(_ events: AsyncStream<MDNSEvent>, expecting count: Int) async -> [MDNSEvent] {
        var collected: [MDNSEvent] = []
        var iterator = events.makeAsyncIterator()
        while collected.count < count, let event = await iterator.next() { collected.append(event) }
        return collected
    }

    func testOnePeerWithANewAddressPerPacketIsCapped() async throws {
        var configuration = MDNSConfiguration()
        configuration.maxAddressesPerPeer = 16
        let service = MDNSService(localPeer: PeerID(publicKey: PrivateKey.generateEd25519().publicKey), configuration: configuration) { [] }
        let events = await service.events()
        let spoofed = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        for port in 1...800 {
            await service.received(announcement(peer: spoofed, port: port), from: [192, 0, 2, 7])
        }
        // Re-announcing known addresses reports nothing.
        await service.received(announcement(peer: spoofed, port: 1), from: [192, 0, 2, 7])
        await service.stop()
        var reported: [Multiaddr] = []
        for await event in events {
            guard case .discovered(let peer, let addresses) = event else { continue }
            XCTAssertEqual(peer, spoofed)
            XCTAssertEqual(addresses.count, 1, "an event repeated addresses reported before")
            reported += addresses
        }
        XCTAssertEqual(reported.count, 16)
        XCTAssertEqual(Set(reported).count, 16)
        let ignored = await service.ignoredAddresses
        XCTAssertEqual(ignored, 800 - 16)
    }

    func testKnownPeersAreCapped() async throws {
        var configuration = MDNSConfiguration()
        configuration.maxPeers = 100
        let service = MDNSService(localPeer: PeerID(publicKey: PrivateKey.generateEd25519().publicKey), configuration: configuration) { [] }
        let events = await service.events()
        for port in 1...300 {
            await service.received(announcement(peer: PeerID(publicKey: PrivateKey.generateEd25519().publicKey), port: port), from: nil)
        }
        await service.stop()
        var peers: Set<PeerID> = []
        for await event in events {
            if case .discovered(let peer, _) = event { peers.insert(peer) }
        }
        XCTAssertEqual(peers.count, 100)
        let ignored = await service.ignoredPeers
        XCTAssertEqual(ignored, 200)
    }

    /// Issue 22: our own peer id announced by another process (one started
    /// with a copy of our key) is reported once per address and never
    /// discovered (so never dialled); our own answers, coming back, are not.
    func testOurPeerIDAtAnotherAddressIsReportedOnce() async throws {
        let me = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let ours = try Multiaddr("/ip4/192.0.2.7/tcp/1")
        let service = MDNSService(localPeer: me) { [ours] }
        let events = await service.events()
        for _ in 0..<3 {
            await service.received(announcement(peer: me, port: 1), from: [192, 0, 2, 7])
            await service.received(announcement(peer: me, port: 2), from: [192, 0, 2, 7])
        }
        await service.stop()
        var collected: [MDNSEvent] = []
        for await event in events { collected.append(event) }
        XCTAssertEqual(collected, [.ownPeerElsewhere([try Multiaddr("/ip4/192.0.2.7/tcp/2")])])
        let known = await service.knows(me)
        XCTAssertFalse(known)
    }
}
