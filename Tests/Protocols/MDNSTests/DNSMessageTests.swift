import Identity
import MDNS
import Multiformats
import TestKit
import XCTest

final class DNSMessageTests: XCTestCase {
    func sampleResponse() throws -> (DNSMessage, PeerID, [Multiaddr]) {
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let addresses = [try Multiaddr("/ip4/192.0.2.1/tcp/4001"), try Multiaddr("/ip6/2001:db8::1/tcp/4001")]
        return (MDNSRecords.response(peerName: "abcdefghijklmnopqrstuvwxyz012345", addresses: addresses, peer: peer, ttl: 120), peer, addresses)
    }

    func testQueryWireFormat() {
        // Header (id 0, flags 0, one question), _p2p._udp.local, type PTR, class IN.
        let expected: [UInt8] = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]
            + [4] + Array("_p2p".utf8) + [4] + Array("_udp".utf8) + [5] + Array("local".utf8) + [0]
            + [0, 12, 0, 1]
        XCTAssertEqual(MDNSRecords.query().encoded(), expected)
    }

    func testResponseRoundTripAndCompression() throws {
        let (response, peer, addresses) = try sampleResponse()
        let bytes = response.encoded()
        let decoded = try DNSMessage(bytes: bytes)
        XCTAssertEqual(decoded, response)
        let found = MDNSRecords.peers(in: decoded)
        XCTAssertEqual(found.count, 1)
        XCTAssertEqual(found[0].0, peer)
        XCTAssertEqual(Set(found[0].1), Set(addresses.map { $0.encapsulating(.p2p(peer.bytes)) }))
        XCTAssertEqual(found[0].2, 120)
        // "_p2p._udp.local" is written once; every later use (the instance name in the
        // PTR and in each TXT record) is a 2-byte pointer.
        let name = [4] + Array("_p2p".utf8)
        let occurrences = (0...(bytes.count - name.count)).filter { Array(bytes[$0..<($0 + name.count)]) == name }.count
        XCTAssertEqual(occurrences, 1)
    }

    func testHostilePackets() {
        let header: [UInt8] = [0, 0, 0x84, 0, 0, 1, 0, 0, 0, 0, 0, 0]
        func decode(_ body: [UInt8], header: [UInt8] = header) -> DNSError? {
            do {
                _ = try DNSMessage(bytes: header + body)
                return nil
            } catch {
                return error as DNSError
            }
        }
        // A pointer to itself, and a forward pointer, are refused.
        XCTAssertEqual(decode([0xc0, 12, 0, 12, 0, 1]), .badPointer(at: 12))
        XCTAssertEqual(decode([0xc0, 40, 0, 12, 0, 1]), .badPointer(at: 12))
        // A loop through two labels pointing back at each other needs a forward pointer: refused too.
        XCTAssertNotNil(decode([1, 0x61, 0xc0, 16, 0xc0, 12, 0, 12, 0, 1]))
        // A 64-byte label.
        XCTAssertEqual(decode([64] + [UInt8](repeating: 0x61, count: 64) + [0, 0, 12, 0, 1]), .labelTooLong(64))
        // A name over 255 bytes.
        let long: [UInt8] = (0..<5).flatMap { _ -> [UInt8] in [60] + [UInt8](repeating: 0x61, count: 60) } + [0, 0, 12, 0, 1]
        XCTAssertEqual(decode(long), .nameTooLong)
        // Counts beyond what the packet holds.
        XCTAssertEqual(decode([], header: [0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0]), .countBeyondPacket("question", 65535))
        XCTAssertEqual(decode([], header: [0, 0, 0x84, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0, 0]), .countBeyondPacket("record", 131070))
        // rdlength beyond the packet; A record with 5 bytes.
        let record: [UInt8] = [0, 0, 1, 0, 1, 0, 0, 0, 10]
        XCTAssertEqual(decode(record + [0xff, 0xff, 1, 2, 3, 4], header: [0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0]), .truncated(at: 27))
        XCTAssertEqual(
            decode(record + [0, 5, 1, 2, 3, 4, 5], header: [0, 0, 0x84, 0, 0, 0, 0, 1, 0, 0, 0, 0]),
            .badRecordData(type: 1, length: 5))
        XCTAssertEqual(decode([UInt8](repeating: 0, count: 9001)), .packetTooLarge(9013))
    }

    func testTruncationAtEveryOffset() throws {
        let bytes = try sampleResponse().0.encoded()
        for length in 0..<bytes.count {
            XCTAssertThrowsError(try DNSMessage(bytes: Array(bytes.prefix(length))), "truncated at \(length)")
        }
    }

    func testRandomAndMutatedPacketsNeverCrash() throws {
        var random = SplitMix(seed: 77)
        func next() -> UInt64 { random.next() }
        for _ in 0..<20_000 {
            let bytes = (0..<Int(next() % 300)).map { _ in UInt8(truncatingIfNeeded: next()) }
            _ = try? DNSMessage(bytes: bytes)
        }
        let valid = try sampleResponse().0.encoded()
        for _ in 0..<20_000 {
            var bytes = valid
            for _ in 0..<Int(next() % 4 + 1) { bytes[Int(next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: next()) }
            if let message = try? DNSMessage(bytes: bytes) { _ = MDNSRecords.peers(in: message) }
        }
    }
}
