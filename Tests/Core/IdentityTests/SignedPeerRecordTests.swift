import Foundation
import Identity
import Multiformats
import TestKit
import XCTest

/// Signed envelopes and peer records (RFC 0002, 0003).
final class SignedPeerRecordTests: XCTestCase {
    /// Made by py-libp2p 0.8.1: the Ed25519 key with seed 00 01 .. 1f, seq 42, two addresses.
    static let pythonEnvelope = unhex(
        "0a240801122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8120203011a4e0a2600240801122003a107"
            + "bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8102a1a0a0a0804c0000201060fa11a160a142920010db800"
            + "0000000000000000000001060fa12a40fb613b04d8e85a43195003c7121be30fbbab19b295f15b9fd75e6f783d9b83f9c63ff2cd1a"
            + "ab362633b39a7c952a1f10219043f228a8bf2be2fe2c2a55b40603")
    static let key = try! PrivateKey(ed25519Seed: Array(0..<32))
    static let addresses = [try! Multiaddr("/ip4/192.0.2.1/tcp/4001"), try! Multiaddr("/ip6/2001:db8::1/tcp/4001")]

    func testPythonRecordVerifiesAndDecodes() throws {
        let record = try PeerRecord.open(Self.pythonEnvelope)
        XCTAssertEqual(record.peerID.description, "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB")
        XCTAssertEqual(record.seq, 42)
        XCTAssertEqual(record.addresses, Self.addresses)
    }

    /// Ed25519 signatures are deterministic: our envelope is byte for byte py-libp2p's.
    func testOurEnvelopeIsByteIdenticalToPython() throws {
        let record = PeerRecord(peerID: PeerID(publicKey: Self.key.publicKey), seq: 42, addresses: Self.addresses)
        XCTAssertEqual(try record.sealed(with: Self.key), Self.pythonEnvelope)
    }

    func testRoundTripWithEveryKeyType() throws {
        for key in [PrivateKey.generateEd25519(), .generateSecp256k1(), .generateECDSAP256()] {
            let record = PeerRecord(key: key, addresses: Self.addresses)
            XCTAssertEqual(try PeerRecord.open(try record.sealed(with: key)), record, "\(key.type)")
        }
    }

    func testTamperedEnvelopesAreRefused() throws {
        let good = Self.pythonEnvelope
        // Every single flipped bit either breaks parsing or the signature.
        for index in stride(from: 0, to: good.count, by: 3) {
            var bad = good
            bad[index] ^= 0x01
            XCTAssertThrowsError(try PeerRecord.open(bad), "byte \(index)")
        }
    }

    func testAnotherDomainOrPayloadTypeIsRefused() throws {
        let envelope = try SignedEnvelope.seal(payload: [1, 2, 3], payloadType: [0x03, 0x01], domain: "other", key: Self.key)
        XCTAssertThrowsError(try PeerRecord.open(envelope.marshal())) { error in
            XCTAssertEqual(error as? SignedRecordError, .badSignature)
        }
        let typed = try SignedEnvelope.seal(payload: [], payloadType: [0x01], domain: PeerRecord.domain, key: Self.key)
        XCTAssertThrowsError(try PeerRecord.open(typed.marshal())) { error in
            XCTAssertEqual(error as? SignedRecordError, .wrongPayloadType(expected: [0x03, 0x01], got: [0x01]))
        }
    }

    func testRecordOfAnotherPeerIsRefused() throws {
        let other = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let forged = PeerRecord(peerID: other, seq: 1, addresses: Self.addresses)
        XCTAssertThrowsError(try PeerRecord.open(try forged.sealed(with: Self.key))) { error in
            guard case .peerMismatch = error as? SignedRecordError else { return XCTFail("\(error)") }
        }
    }

    func testTruncatedRandomAndOversizedInput() {
        for length in 0..<Self.pythonEnvelope.count {
            XCTAssertThrowsError(try PeerRecord.open(Array(Self.pythonEnvelope.prefix(length))), "prefix \(length)")
        }
        var rng = SplitMix(seed: 37)
        for _ in 0..<2000 {
            let bytes = (0..<Int.random(in: 0..<300, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            XCTAssertThrowsError(try PeerRecord.open(bytes))
        }
        XCTAssertThrowsError(try PeerRecord.open([UInt8](repeating: 0, count: SignedEnvelope.maxSize + 1))) { error in
            guard case .tooLarge = error as? SignedRecordError else { return XCTFail("\(error)") }
        }
    }
}
