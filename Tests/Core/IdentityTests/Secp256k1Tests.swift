import Identity
import TestKit
import XCTest

/// The pure-Swift secp256k1 against libsecp256k1's own output (Secp256k1Vectors.swift).
final class Secp256k1Tests: XCTestCase {
    private func marshaledSecret(_ secret: [UInt8]) -> [UInt8] { [0x08, 0x02, 0x12, 0x20] + secret }

    func testLibsecp256k1SignaturesVerify() throws {
        XCTAssertEqual(secp256k1Vectors.count, 48)
        for (index, vector) in secp256k1Vectors.enumerated() {
            let message = unhex(vector.message)
            for encoding in [vector.compressed, vector.uncompressed] {
                let key = try PublicKey(type: .secp256k1, data: unhex(encoding))
                XCTAssertTrue(key.verify(signature: unhex(vector.signature), for: message), "vector \(index)")
                // High S verifies too, as libsecp256k1 did after normalizing.
                XCTAssertTrue(key.verify(signature: unhex(vector.highS), for: message), "vector \(index) high S")
            }
        }
    }

    func testDerivationAndSigningMatchLibsecp256k1() throws {
        for (index, vector) in secp256k1Vectors.enumerated() {
            let key = try PrivateKey(marshaled: marshaledSecret(unhex(vector.secret)))
            XCTAssertEqual(key.publicKey.data, unhex(vector.compressed), "vector \(index)")
            // RFC 6979 nonces are deterministic: the very bytes libsecp256k1 produced.
            XCTAssertEqual(try key.sign(unhex(vector.message)), unhex(vector.signature), "vector \(index)")
        }
    }

    func testTamperedSignaturesMessagesAndKeysAreRejected() throws {
        for (index, vector) in secp256k1Vectors.prefix(4).enumerated() {
            let key = try PublicKey(type: .secp256k1, data: unhex(vector.compressed))
            let message = unhex(vector.message)
            let signature = unhex(vector.signature)
            // A flipped bit in any byte of the signature breaks either the DER or the math
            // (one bit per byte, at a rotating position: every bit would be slow in debug).
            for byte in signature.indices {
                var bad = signature
                bad[byte] ^= 1 << UInt8((byte + index) % 8)
                XCTAssertFalse(key.verify(signature: bad, for: message), "vector \(index) byte \(byte)")
            }
            XCTAssertFalse(key.verify(signature: signature, for: message + [0]), "vector \(index)")
            // The neighbouring vector's key must not accept this signature.
            let other = secp256k1Vectors[(index + 1) % secp256k1Vectors.count]
            let otherKey = try PublicKey(type: .secp256k1, data: unhex(other.compressed))
            XCTAssertFalse(otherKey.verify(signature: signature, for: message), "vector \(index)")
            // The same x with the other parity is the negated point: rejected.
            var flipped = unhex(vector.compressed)
            flipped[0] ^= 1
            XCTAssertFalse(try PublicKey(type: .secp256k1, data: flipped).verify(signature: signature, for: message))
            // Trailing bytes after the DER sequence are refused (strict DER).
            XCTAssertFalse(key.verify(signature: signature + [0], for: message))
        }
    }

    func testOutOfRangeSignatureValuesAreRejected() throws {
        let vector = secp256k1Vectors[0]
        let key = try PublicKey(type: .secp256k1, data: unhex(vector.compressed))
        let n = unhex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
        func der(_ r: [UInt8], _ s: [UInt8]) -> [UInt8] {
            func integer(_ v: [UInt8]) -> [UInt8] {
                var body = Array(v.drop { $0 == 0 })
                if body.isEmpty || body[0] & 0x80 != 0 { body.insert(0, at: 0) }
                return [0x02, UInt8(body.count)] + body
            }
            let content = integer(r) + integer(s)
            return [0x30, UInt8(content.count)] + content
        }
        let one = [UInt8](repeating: 0, count: 31) + [1]
        for (r, s) in [([UInt8](repeating: 0, count: 32), one), (one, [UInt8](repeating: 0, count: 32)), (n, one), (one, n)] {
            XCTAssertFalse(key.verify(signature: der(r, s), for: unhex(vector.message)))
        }
        XCTAssertFalse(key.verify(signature: [], for: []))
        XCTAssertFalse(key.verify(signature: [0x30, 0x00], for: []))
    }

    func testInvalidPointsAreRejected() {
        // x = 5 has no point on the curve (5^3 + 7 = 132 is not a square mod p).
        let notOnCurve = [UInt8(2)] + [UInt8](repeating: 0, count: 31) + [5]
        let p = unhex("fffffffffffffffffffffffffffffffffffffffffffffffffffffffefffffc2f")
        var uncompressed = unhex(secp256k1Vectors[0].uncompressed)
        uncompressed[64] ^= 1  // y off the curve
        for data in [notOnCurve, [2] + p, [4] + p + p, uncompressed, [5] + Array(unhex(secp256k1Vectors[0].compressed).dropFirst()), [], [2], [UInt8](repeating: 0, count: 33)] {
            XCTAssertThrowsError(try PublicKey(type: .secp256k1, data: data), "\(data)")
        }
        // Hybrid encodings (06/07) must carry the right parity.
        var hybrid = unhex(secp256k1Vectors[0].uncompressed)
        hybrid[0] = 6 | (hybrid[64] & 1)
        XCTAssertNoThrow(try PublicKey(type: .secp256k1, data: hybrid))
        hybrid[0] ^= 1
        XCTAssertThrowsError(try PublicKey(type: .secp256k1, data: hybrid))
    }

    func testInvalidSecretsAreRejected() {
        let n = unhex("fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141")
        for secret in [[UInt8](repeating: 0, count: 32), n, [UInt8](repeating: 0xFF, count: 32), [1]] {
            XCTAssertThrowsError(try PrivateKey(marshaled: marshaledSecret(secret)))
        }
        // n - 1 is the largest valid secret; its public key is -G.
        var nMinusOne = n
        nMinusOne[31] -= 1
        let key = try? PrivateKey(marshaled: marshaledSecret(nMinusOne))
        XCTAssertEqual(
            key?.publicKey.data,
            unhex("0379be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"))
    }

    func testRandomInputNeverVerifiesOrCrashes() throws {
        var generator = SplitMix(seed: 38)
        let key = try PublicKey(type: .secp256k1, data: unhex(secp256k1Vectors[1].compressed))
        for round in 0..<2000 {
            let length = Int.random(in: 0...80, using: &generator)
            var bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            // Half the rounds look like DER so the parser gets past its first checks.
            if round % 2 == 0, length >= 8 {
                bytes[0] = 0x30
                bytes[1] = UInt8(length - 2)
                bytes[2] = 0x02
                bytes[3] = UInt8.random(in: 1...33, using: &generator)
            }
            XCTAssertFalse(key.verify(signature: bytes, for: [1, 2, 3]))
            _ = try? PublicKey(type: .secp256k1, data: Array(bytes.prefix(33)))
        }
    }

    func testOwnSignaturesAreLowS() throws {
        let half = unhex("7fffffffffffffffffffffffffffffff5d576e7357a4501ddfe92f46681b20a0")
        for _ in 0..<20 {
            let key = PrivateKey.generateSecp256k1()
            let message = (0..<40).map { _ in UInt8.random(in: 0...255) }
            let signature = try key.sign(message)
            XCTAssertTrue(key.publicKey.verify(signature: signature, for: message))
            // s is the second INTEGER; compare as a 32-byte big-endian number.
            let rLength = Int(signature[3])
            let sLength = Int(signature[5 + rLength])
            let s = Array(signature[(6 + rLength)...].prefix(sLength).drop { $0 == 0 })
            XCTAssertTrue(([UInt8](repeating: 0, count: 32 - s.count) + s).lexicographicallyPrecedes(half) || s.count < 32)
        }
    }
}
