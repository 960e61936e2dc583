import Multiformats
import TestKit
import XCTest

final class VarintTests: XCTestCase {
    /// Two leading varints (a multihash's code and length): values and total size; either cut short is truncated.
    func testDecodePair() throws {
        let pair = try Varint.decodePair([0x12, 0x80, 0x01, 0xAA])
        XCTAssertEqual(pair.first, 0x12)
        XCTAssertEqual(pair.second, 128)
        XCTAssertEqual(pair.size, 3)
        XCTAssertThrowsError(try Varint.decodePair([0x12, 0x80])) { XCTAssertEqual($0 as? VarintError, .truncated) }
        XCTAssertThrowsError(try Varint.decodePair([0x92])) { XCTAssertEqual($0 as? VarintError, .truncated) }
        XCTAssertThrowsError(try Varint.decodePair([])) { XCTAssertEqual($0 as? VarintError, .truncated) }
    }

    // The examples of the multiformats unsigned-varint spec.
    let vectors: [(UInt64, [UInt8])] = [
        (1, [0x01]), (127, [0x7f]), (128, [0x80, 0x01]), (255, [0xff, 0x01]),
        (300, [0xac, 0x02]), (16384, [0x80, 0x80, 0x01]),
        (UInt64(Int64.max), [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
    ]

    func testSpecVectors() throws {
        for (value, bytes) in vectors {
            XCTAssertEqual(Varint.encode(value), bytes, "\(value)")
            let (decoded, size) = try Varint.decode(bytes)
            XCTAssertEqual(decoded, value)
            XCTAssertEqual(size, bytes.count)
            XCTAssertEqual(Varint.encodedSize(value), bytes.count)
        }
    }

    func testMalformed() {
        XCTAssertThrowsError(try Varint.decode([UInt8]())) { XCTAssertEqual($0 as? VarintError, .truncated) }
        XCTAssertThrowsError(try Varint.decode([0x80, 0x80])) { XCTAssertEqual($0 as? VarintError, .truncated) }
        XCTAssertThrowsError(try Varint.decode([UInt8](repeating: 0xff, count: 9) + [0x01])) {
            XCTAssertEqual($0 as? VarintError, .overflow)
        }
        // A ninth byte that still continues can only exceed 63 bits.
        XCTAssertThrowsError(try Varint.decode([UInt8](repeating: 0xff, count: 9))) {
            XCTAssertEqual($0 as? VarintError, .overflow)
        }
        XCTAssertThrowsError(try Varint.decode([0x81, 0x00])) { XCTAssertEqual($0 as? VarintError, .notMinimal) }
    }

    func testRoundTripRandom() throws {
        var rng = SplitMix(seed: 1)
        for _ in 0..<10_000 {
            let value = rng.next() >> (rng.next() % 64 + 1)
            let (decoded, _) = try Varint.decode(Varint.encode(value))
            XCTAssertEqual(decoded, value)
        }
    }
}

final class MultibaseTests: XCTestCase {
    func testBase58Vectors() throws {
        XCTAssertEqual(Base58.encode(Array("Hello World!".utf8)), "2NEpo7TZRRrLZSi2U")
        XCTAssertEqual(Base58.encode([0, 0, 0x28, 0x7f, 0xb4, 0xcd]), "11233QC4")
        XCTAssertEqual(try Base58.decode("11233QC4"), [0, 0, 0x28, 0x7f, 0xb4, 0xcd])
        XCTAssertEqual(Base58.encode([]), "")
        XCTAssertThrowsError(try Base58.decode("0OIl"))
    }

    func testMultibaseVectors() throws {
        // From the multibase spec's test vectors for "yes mani !".
        let bytes = Array("yes mani !".utf8)
        XCTAssertEqual(Multibase.base58btc.encode(bytes), "z7paNL19xttacUY")
        XCTAssertEqual(Multibase.base32.encode(bytes), "bpfsxgidnmfxgsibb")
        XCTAssertEqual(Multibase.base64url.encode(bytes), "ueWVzIG1hbmkgIQ")
        XCTAssertEqual(Multibase.base16.encode(bytes), "f796573206d616e692021")
        for text in ["z7paNL19xttacUY", "bpfsxgidnmfxgsibb", "ueWVzIG1hbmkgIQ", "f796573206d616e692021"] {
            XCTAssertEqual(try Multibase.decode(text).1, bytes, text)
        }
        XCTAssertThrowsError(try Multibase.decode(""))
        XCTAssertThrowsError(try Multibase.decode("Q123"))
        XCTAssertThrowsError(try Multibase.decode("b1"))  // '1' is not base32
        XCTAssertThrowsError(try Multibase.decode("bp"))  // dangling bits
    }

    func testRandomRoundTrips() throws {
        var rng = SplitMix(seed: 2)
        for _ in 0..<500 {
            let bytes = (0..<Int(rng.next() % 64)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            for base in Multibase.allCases {
                XCTAssertEqual(try Multibase.decode(base.encode(bytes)).1, bytes)
            }
        }
    }
}

final class MultihashTests: XCTestCase {
    func testDecodeAndErrors() throws {
        let digest = [UInt8](repeating: 7, count: 32)
        let multihash = Multihash(code: Multihash.sha2_256, digest: digest)
        XCTAssertEqual(multihash.bytes.prefix(2), [0x12, 0x20])
        XCTAssertEqual(try Multihash(bytes: multihash.bytes), multihash)
        XCTAssertThrowsError(try Multihash(bytes: [0x12, 0x20] + digest.dropLast()))
        XCTAssertThrowsError(try Multihash(bytes: [0x12]))
        XCTAssertThrowsError(try Multihash(bytes: [0x12, 0xff, 0xff, 0x03]))  // absurd length
    }
}

final class MultiaddrTests: XCTestCase {
    func testIPAddressText() throws {
        XCTAssertEqual(try Multiaddr("/ip4/10.0.0.1/tcp/4001").ipAddressText, "10.0.0.1")
        XCTAssertEqual(try Multiaddr("/ip6/2001:db8:0:0:0:0:0:1/tcp/1/ws").ipAddressText, "2001:db8::1")
        XCTAssertEqual(try Multiaddr("/dns4/example.com/tcp/1/ip4/1.2.3.4").ipAddressText, "1.2.3.4")
        XCTAssertNil(try Multiaddr("/dns/example.com/tcp/1").ipAddressText)
    }

    // Text and binary pairs, as in go-multiaddr's and rust-multiaddr's tests.
    let vectors: [(String, String)] = [
        ("/ip4/127.0.0.1/tcp/4001", "047f000001060fa1"),
        ("/ip4/1.2.3.4/udp/1234", "0401020304910204d2"),
        ("/ip6/::1/tcp/0", "2900000000000000000000000000000001060000"),
        ("/ip6/2001:db8::1/tcp/80", "2920010db8000000000000000000000001060050"),
        ("/dns4/example.com/tcp/443/wss", "360b6578616d706c652e636f6d0601bbde03"),
        ("/ip4/0.0.0.0/udp/4001/quic-v1", "040000000091020fa1cd03"),
        ("/p2p-circuit", "a202"),
        ("/ip4/127.0.0.1/tcp/80/tls/noise", "047f000001060050c003c603"),
        ("/dnsaddr/bootstrap.libp2p.io", "3813626f6f7473747261702e6c69627032702e696f"),
        ("/ip6zone/x/ip6/fe80::1", "2a0178" + "29fe800000000000000000000000000001"),
    ]

    func testTextBinaryVectors() throws {
        for (text, bytes) in vectors {
            let address = try Multiaddr(text)
            XCTAssertEqual(hex(address.bytes), bytes, text)
            XCTAssertEqual(try Multiaddr(bytes: unhex(bytes)).description, text)
        }
    }

    func testPeerIDComponent() throws {
        let text = "/ip4/127.0.0.1/tcp/4001/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC"
        let address = try Multiaddr(text)
        XCTAssertEqual(address.description, text)
        XCTAssertEqual(try Multiaddr(bytes: address.bytes), address)
        XCTAssertEqual(address.withoutP2P.description, "/ip4/127.0.0.1/tcp/4001")
        XCTAssertNotNil(address.p2pMultihash)
        // The old /ipfs name reads the same, and prints as /p2p.
        XCTAssertEqual(try Multiaddr("/ipfs/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC").description,
            "/p2p/QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC")
    }

    func testIPv6CanonicalForm() throws {
        XCTAssertEqual(try Multiaddr("/ip6/2001:0db8:0000:0000:0000:0000:0000:0001").description, "/ip6/2001:db8::1")
        XCTAssertEqual(try Multiaddr("/ip6/::").description, "/ip6/::")
        XCTAssertEqual(try Multiaddr("/ip6/1:0:0:2:0:0:0:3").description, "/ip6/1:0:0:2::3")
        XCTAssertEqual(try Multiaddr("/ip6/::ffff:1.2.3.4").description, "/ip6/::ffff:1.2.3.4")
    }

    func testMalformedText() {
        for text in [
            "", "ip4/1.2.3.4", "/ip4", "/ip4/256.0.0.1", "/ip4/1.2.3", "/ip4/01.2.3.4", "/tcp/65536", "/tcp/-1",
            "/tcp/abc", "/ip6/1:2", "/ip6/:::", "/ip6/1::2::3", "/foo/1", "/p2p/notapeerid", "/dns4",
            "/ip6/12345::", "/",
        ] {
            XCTAssertThrowsError(try Multiaddr(text), text)
        }
        XCTAssertThrowsError(try Multiaddr("/" + String(repeating: "a", count: 2000)))
    }

    func testMalformedBinary() {
        let good = unhex("047f000001060fa1")
        for length in 1..<good.count where length != 5 {  // 5 bytes is a whole /ip4
            XCTAssertThrowsError(try Multiaddr(bytes: good.prefix(length)), "truncated at \(length)")
        }
        XCTAssertThrowsError(try Multiaddr(bytes: [0xff, 0x7f]))  // unknown code
        XCTAssertThrowsError(try Multiaddr(bytes: [0x35, 0xff, 0xff, 0x03, 0x61]))  // length beyond input
        XCTAssertThrowsError(try Multiaddr(bytes: [0xa5, 0x03, 0x02, 0x12, 0x05]))  // p2p with a bad multihash
        XCTAssertThrowsError(try Multiaddr(bytes: [UInt8](repeating: 0x04, count: 5000)))
    }

    func testRandomBinaryNeverCrashes() {
        var rng = SplitMix(seed: 3)
        var decoded = 0
        for _ in 0..<20_000 {
            let bytes = (0..<Int(rng.next() % 40)).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if let address = try? Multiaddr(bytes: bytes) {
                decoded += 1
                // What decodes must survive a text round trip.
                XCTAssertEqual(try? Multiaddr(address.description), address, address.description)
            }
        }
        XCTAssertGreaterThan(decoded, 0)
    }

    func testRandomTextNeverCrashes() {
        var rng = SplitMix(seed: 4)
        let pieces = ["/", "ip4", "ip6", "tcp", "1", "::", "1.2.3.4", "p2p", "dns", "a", "-", "x:y", "65535", "%"]
        for _ in 0..<20_000 {
            let text = (0..<Int(rng.next() % 8)).map { _ in pieces[Int(rng.next() % UInt64(pieces.count))] }.joined()
            _ = try? Multiaddr(text)
        }
    }

    /// Issue 22: who can dial an address, for the DHT's records and AutoNAT's verdict.
    func testAddressScopes() throws {
        let scopes: [(String, AddressScope?)] = [
            ("/ip4/0.0.0.0/tcp/1", .unspecified), ("/ip6/::/tcp/1", .unspecified),
            ("/ip4/127.0.0.1/tcp/1", .loopback), ("/ip4/127.8.9.10/tcp/1", .loopback), ("/ip6/::1/tcp/1", .loopback),
            ("/ip4/10.1.2.3/tcp/1", .local), ("/ip4/172.16.0.1/tcp/1", .local), ("/ip4/172.31.255.1/tcp/1", .local),
            ("/ip4/192.168.0.1/tcp/1", .local), ("/ip4/100.64.0.1/tcp/1", .local), ("/ip4/169.254.1.1/tcp/1", .local),
            ("/ip6/fd12::1/tcp/1", .local), ("/ip6/fe80::1/tcp/1", .local), ("/ip6zone/eth0/ip6/fe80::1/tcp/1", .local),
            ("/ip6/::ffff:192.168.1.1/tcp/1", .local),
            ("/ip4/172.32.0.1/tcp/1", .public), ("/ip4/100.128.0.1/tcp/1", .public), ("/ip4/203.0.113.7/tcp/1", .public),
            ("/ip4/8.8.8.8/tcp/1", .public), ("/ip6/2001:db8::1/tcp/1", .public),
            ("/dns4/example.com/tcp/1", nil), ("/memory/3", nil),
        ]
        for (text, scope) in scopes {
            XCTAssertEqual(try Multiaddr(text).scope, scope, text)
        }
        let lan = try Multiaddr("/ip4/192.168.1.2/tcp/1")
        XCTAssertFalse(lan.isDialable(byPeerAt: try Multiaddr("/ip4/203.0.113.7/tcp/1")))
        XCTAssertTrue(lan.isDialable(byPeerAt: try Multiaddr("/ip4/10.0.0.9/tcp/1")))
        XCTAssertFalse(try Multiaddr("/ip4/127.0.0.1/tcp/1").isDialable(byPeerAt: lan))
        XCTAssertTrue(try Multiaddr("/ip4/127.0.0.1/tcp/1").isDialable(byPeerAt: try Multiaddr("/ip6/::1/tcp/1")))
        XCTAssertFalse(try Multiaddr("/ip4/0.0.0.0/tcp/1").isDialable(byPeerAt: try Multiaddr("/ip4/127.0.0.1/tcp/1")))
        XCTAssertTrue(try Multiaddr("/dns4/example.com/tcp/1").isDialable(byPeerAt: try Multiaddr("/ip4/203.0.113.7/tcp/1")))
    }
}

final class CIDTests: XCTestCase {
    func testLibP2PKeyCIDRoundTrip() throws {
        let multihash = try Multihash(bytes: Base58.decode("12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"))
        let cid = LibP2PKeyCID.encode(multihash)
        XCTAssertTrue(cid.hasPrefix("bafz"), cid)
        XCTAssertEqual(try LibP2PKeyCID.decode(cid), multihash)
        // A CID with another codec (dag-pb, 0x70) is not a peer id.
        var wrong: [UInt8] = [0x01, 0x70]
        wrong += multihash.bytes
        XCTAssertThrowsError(try LibP2PKeyCID.decode(Multibase.base32.encode(wrong)))
    }

    func testRawCIDOfHelloWorld() throws {
        // The well-known CIDv1 (raw, sha2-256) of "hello world".
        let digest: [UInt8] = [
            0xb9, 0x4d, 0x27, 0xb9, 0x93, 0x4d, 0x3e, 0x08, 0xa5, 0x2e, 0x52, 0xd7, 0xda, 0x7d, 0xab, 0xfa,
            0xc4, 0x84, 0xef, 0xe3, 0x7a, 0x53, 0x80, 0xee, 0x90, 0x88, 0xf7, 0xac, 0xe2, 0xef, 0xcd, 0xe9,
        ]
        let cid = CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: digest))
        XCTAssertEqual(cid.text(), "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
        XCTAssertEqual(try CID(cid.text()), cid)
        XCTAssertEqual(try CID(bytes: cid.bytes), cid)
    }

    func testMalformedCIDsAreRefused() {
        XCTAssertThrowsError(try CID(""))
        XCTAssertThrowsError(try CID("bafk"))
        XCTAssertThrowsError(try CID(bytes: [0x00, 0x55]))  // version 0 in a v1 frame
        XCTAssertThrowsError(try CID(bytes: [0x01, 0x55, 0x12, 0x20, 1, 2]))  // truncated digest
        var random = SplitMix(seed: 35)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<48, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
            _ = try? CID(bytes: bytes)
            _ = try? CID("b" + String(decoding: bytes.map { $0 % 26 + 97 }, as: UTF8.self))
        }
    }

    /// Issue 22: `Qm...` was not a CID. A CIDv0 is the dag-pb CIDv1 of its sha2-256 multihash.
    func testCIDv0IsReadAsTheCIDv1OfItsMultihash() throws {
        let cid = try CID("QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n")
        XCTAssertEqual(cid.codec, CID.dagPB)
        XCTAssertEqual(cid.multihash.code, Multihash.sha2_256)
        XCTAssertEqual(cid.text(), "bafybeihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku")
        XCTAssertThrowsError(try CID("Qm" + String(repeating: "0", count: 44)))
    }
}
