import Foundation
import Identity
import Multiformats
import TestKit
import XCTest

/// Keys, peer ids and signatures made by py-libp2p 0.8.1 (and, for ECDSA, by
/// Python's `cryptography`), checked here against our implementation.
final class IdentityVectorTests: XCTestCase {
    let message = Array("p2pchat test vector".utf8)

    struct Vector {
        let type: KeyType
        let publicKey: String
        let peerID: String?
        let signature: String
    }

    let vectors: [Vector] = [
        Vector(
            type: .ed25519,
            publicKey: "0801122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
            peerID: "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB",
            signature: "37c37d964e4b96a2501049bf99ca277d4646b32ca8f4c942a8ec8a4cd184f22e08b2a21fad1c6ab38c7f5371b60cb33cf382e3861d15d7faaf7e6313dc890d05"
        ),
        Vector(
            type: .secp256k1,
            publicKey: "080212210284bf7562262bbd6940085748f3be6afa52ae317155181ece31b66351ccffa4b0",
            peerID: "16Uiu2HAm4Ms862Gnqafssgvik4JJ1LuqWMcKNipq4nm2UaoLRbeP",
            signature: "3045022100e7bcdf5e05b67615ab7d7778671548eb626d107efc92cfbfe21e316ae1cf41480220365028d5232c8659b8fb615ff695a22d9c5476d06a875bab309978e26ec44843"
        ),
        Vector(
            type: .rsa,
            publicKey: "080012a60230820122300d06092a864886f70d01010105000382010f003082010a0282010100e5cd550b04c9623bf475eb7e3a9523c9852ffb8109c1af1ee0788ec2e3c3908363da183e7220c3ff6af77942af46836c09ad1fd6804cc3e46f23943d676c7b2674a8bcf3667a36752c22a6b43e7ce5110ff15c52f480fb2fa326103f0d69a3e6efcc16c3108e50d72f612bd14788617f21c8c9a8bfa4706b5bb8f6e3ffaf5bea53416a68378399571591e015c2f5f6c9c09e6d6a65b0aa763686b22b03c4deaf916d8e614d699d640fa3934bf50a8e9eb622645e9c6878a9a80504af15db21bdd290c979574e6cdda8387d39f3baf2ee8b5fe66b1a1b5369fdbc83c5fdc71ec28db783600518f313c878b1d3b53cf7508b2e29cf42f6b766067c7327c0e7812b0203010001",
            peerID: "QmT8QaaSy7YoB9VnkJqe4KZZora1GjquhvCECTPdWouLez",
            signature: "37e7c7b43f8af2fe4765abaadf11c98e2e550520eae232037c2e157e6313e8badc74e408b6cee96ee19c4352f8332f724c3c23598de06fd63c29002ab938a7fc76462f11d92c1e4fe5db8dc6ff7d36c1d2a1f70f7c2a27337bf00a425d8aff5d214e4380213d9930e7bfac9208d3c43ec794b45240cd693087f469d67f7b2cf3779b97345e97b708ab4ece1e1c9c80072bb46f9f7a2647fa53b9ed0f546505e6ce21dea4aff09ebbb5b7cbee4bbd59949476e6925edad8a7737aea97651528e194b2640601ba5ffd2b82eeaacb788c3f5554e5bbc9fb21225cadc6b528d0cb17a0208e7da979cafea1b9c0f96f4628d8172e42511df971e45d4f267b831d290f"
        ),
        Vector(
            type: .ecdsa,
            publicKey: "0803125b3059301306072a8648ce3d020106082a8648ce3d030107034200043ed7a28ec648edce5d5b7e252f6b2aafbb44835114a24b3caa8f710f64993bc25711a34cdc9229080b639f09977feb7ca91ecce1649bfea8ad85c72b206ade7e",
            peerID: nil,
            signature: "3045022100f4fe6f0f2f00762d6b01bd11b339e13b2763503abb6d514174e6ddfc1cab2f78022046ca39e3d80e89960e1b265705c5ca5f636f4684e66da8f1f3d47c2f744bfabe"
        ),
    ]

    func testVectors() throws {
        for vector in vectors {
            let key = try PublicKey(marshaled: unhex(vector.publicKey))
            XCTAssertEqual(key.type, vector.type)
            XCTAssertEqual(key.marshal(), unhex(vector.publicKey), "re-encoding is canonical")
            XCTAssertTrue(key.verify(signature: unhex(vector.signature), for: message), "\(vector.type)")
            // Tampered message and signature fail.
            XCTAssertFalse(key.verify(signature: unhex(vector.signature), for: message + [0]))
            var bad = unhex(vector.signature)
            bad[bad.count / 2] ^= 0x01
            XCTAssertFalse(key.verify(signature: bad, for: message), "\(vector.type)")
            XCTAssertFalse(key.verify(signature: [], for: message))
            let peer = PeerID(publicKey: key)
            if let expected = vector.peerID {
                XCTAssertEqual(peer.description, expected)
                XCTAssertEqual(try PeerID(expected), peer)
            }
            XCTAssertTrue(peer.matches(key))
            // Keys of at most 42 bytes are inlined; others hashed.
            XCTAssertEqual(peer.extractPublicKey() != nil, unhex(vector.publicKey).count <= 42)
        }
    }

    func testEd25519SeedAndKeyFromPython() throws {
        // py-libp2p's private key for seed 00..1f (it stores the 32-byte seed).
        let key = try PrivateKey(
            marshaled: unhex("08011220000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"))
        XCTAssertEqual(PeerID(publicKey: key.publicKey).description, "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB")
        // We write the go-libp2p form (seed + public key) and read it back.
        let again = try PrivateKey(marshaled: key.marshal())
        XCTAssertEqual(again.publicKey, key.publicKey)
        XCTAssertEqual(key.marshal().count, 4 + 64)
    }

    func testSecp256k1PrivateKeyFromPython() throws {
        let key = try PrivateKey(
            marshaled: unhex("080212200102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20"))
        XCTAssertEqual(PeerID(publicKey: key.publicKey).description, "16Uiu2HAm4Ms862Gnqafssgvik4JJ1LuqWMcKNipq4nm2UaoLRbeP")
    }

    func testSignAndVerifyEachGeneratedType() throws {
        for key in [PrivateKey.generateEd25519(), .generateSecp256k1(), .generateECDSAP256()] {
            let signature = try key.sign(message)
            XCTAssertTrue(key.publicKey.verify(signature: signature, for: message), "\(key.type)")
            XCTAssertFalse(key.publicKey.verify(signature: signature, for: Array(message.dropFirst())))
            let reloaded = try PrivateKey(marshaled: key.marshal())
            XCTAssertEqual(reloaded.publicKey, key.publicKey)
        }
    }

    /// Malformed RSA keys are refused without crashing the process: swift-crypto's
    /// DER initializer freed its key twice on such input, so ours parses the DER
    /// itself. Every single-byte change and truncation of a valid key, and random
    /// bytes behind an RSA key header, in one process.
    func testMalformedRSAKeysNeverCrash() throws {
        let valid = unhex(vectors.first { $0.type == .rsa }!.publicKey)
        let key = try PublicKey(marshaled: valid)
        let der = key.data
        var generator = SplitMix(seed: 39)
        var refused = 0
        for index in der.indices {
            var changed = der
            changed[index] ^= UInt8.random(in: 1...255, using: &generator)
            if (try? PublicKey(type: .rsa, data: changed)) == nil { refused += 1 }
            if (try? PublicKey(type: .rsa, data: Array(der[..<index]))) == nil { refused += 1 }
        }
        for _ in 0..<2000 {
            let count = Int.random(in: 0...300, using: &generator)
            let junk = Array(der.prefix(24)) + (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if (try? PublicKey(type: .rsa, data: junk)) == nil { refused += 1 }
            XCTAssertFalse(key.verify(signature: junk, for: [1, 2, 3]))
        }
        // Every truncation is refused; changed bytes may still be a valid key (a changed modulus digit).
        XCTAssertGreaterThanOrEqual(refused, der.count + 2000)
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x00, 0x12, 0x01, 0x00]))
    }
}

final class PeerIDTests: XCTestCase {
    func testTextForms() throws {
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        XCTAssertTrue(peer.description.hasPrefix("12D3KooW"))
        XCTAssertEqual(try PeerID(peer.description), peer)
        XCTAssertTrue(peer.cidString.hasPrefix("bafz"), peer.cidString)
        XCTAssertEqual(try PeerID(peer.cidString), peer)
        XCTAssertEqual(try PeerID(bytes: peer.bytes), peer)
        // A CIDv0-style sha2-256 id parses too.
        XCTAssertNoThrow(try PeerID("QmcgpsyWgH8Y8ajJz1Cu72KnS5uo2Aa2LpzU7kinSupNKC"))
    }

    func testMalformed() {
        for text in ["", "12D3KooW", "Qm", "bafz", "not a peer id", "12D3KooW0OIl", String(repeating: "1", count: 300)] {
            XCTAssertThrowsError(try PeerID(text), text)
        }
        XCTAssertThrowsError(try PeerID(bytes: [0x00, 0x03, 1, 2, 3]))  // identity of a non-key
        XCTAssertThrowsError(try PeerID(bytes: [0x12, 0x10] + [UInt8](repeating: 0, count: 16)))  // short sha256
        XCTAssertThrowsError(try PeerID(bytes: [0x13, 0x02, 1, 2]))  // unsupported hash
    }
}

final class KeyDecodingTests: XCTestCase {
    func testMalformedKeysThrow() {
        let good = unhex("0801122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
        for length in 0..<good.count {
            XCTAssertThrowsError(try PublicKey(marshaled: Array(good.prefix(length))), "truncated at \(length)")
        }
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x09, 0x12, 0x01, 0x00]))  // unknown type
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x01, 0x12, 0x01, 0x00]))  // short ed25519
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x02, 0x12, 0x01, 0x00]))  // bad secp256k1
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x00, 0x12, 0x01, 0x00]))  // bad RSA
        XCTAssertThrowsError(try PublicKey(marshaled: [0x08, 0x03, 0x12, 0x01, 0x00]))  // bad ECDSA
        XCTAssertThrowsError(try PrivateKey(marshaled: [0x08, 0x01, 0x12, 0x03, 1, 2, 3]))
        XCTAssertThrowsError(try PrivateKey(marshaled: [0x08, 0x00, 0x12, 0x01, 0]))  // RSA private unsupported
    }

    func testRandomInputNeverCrashes() {
        var random = SplitMix(seed: 42)
        func next() -> UInt64 { random.next() }
        for _ in 0..<5000 {
            var bytes = (0..<Int(next() % 80)).map { _ in UInt8(truncatingIfNeeded: next()) }
            if next() % 2 == 0 { bytes = [0x08, UInt8(next() % 4), 0x12, UInt8(bytes.count)] + bytes }
            _ = try? PublicKey(marshaled: bytes)
            _ = try? PrivateKey(marshaled: bytes)
            _ = try? PeerID(bytes: bytes)
        }
    }

    func testRSASizeBounds() throws {
        // A 1024-bit RSA key (too small) is refused.
        // Made by Python's cryptography: a valid 1024-bit PKIX key.
        let small = unhex("30819f300d06092a864886f70d010101050003818d0030818902818100c018fc15c8d69b52c000e516a0756b1f230fbdfcfd21f379d3aa86ca7fb3ae517a1d3144b4cff8cf6250224321068d072da034f423ceacc2b6ca40ece306162aaf2a57bf1ef9fb50fc01a4f48b599f4cdf65eb021edea81bc228689ffba7266ca4e5fa90d4471ee8592540a1e06ce0871d6e6690db118c480c5d3ecc47754b6b0203010001")
        XCTAssertThrowsError(try PublicKey(type: .rsa, data: small)) { error in
            XCTAssertTrue("\(error)".contains("1024 bits"), "\(error)")
        }
    }
}

final class KeyFileTests: XCTestCase {
    func testRoundTripAndPermissions() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pchat-keyfile-\(UUID())")
        defer { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("nested/identity.key").path
        let created = try KeyFile.loadOrCreate(path: path)
        let loaded = try KeyFile.loadOrCreate(path: path)
        XCTAssertEqual(created.publicKey, loaded.publicKey)
        let attributes = try FileManager.default.attributesOfItem(atPath: path)
        XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
        // A garbled file is a clear error naming the path.
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try KeyFile.load(path: path)) { error in
            XCTAssertTrue("\(error)".contains(path), "\(error)")
        }
        XCTAssertThrowsError(try KeyFile.load(path: path + ".missing"))
    }

    func testDefaultPathUsesConfigDirectory() {
        XCTAssertTrue(KeyFile.defaultPath.hasSuffix("/p2pchat/identity.key"))
    }
}
