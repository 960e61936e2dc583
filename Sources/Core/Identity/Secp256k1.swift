import Crypto

// secp256k1 in pure Swift, so the package needs no system library: ECDSA
// verification of peers' signatures (libp2p: SHA-256 of the message, DER
// signature, low and high S both accepted) and, for secp256k1 identities we
// load, public key derivation and RFC 6979 signing.
//
// Arithmetic: 4 x 64-bit limbs, little-endian, Montgomery multiplication for
// both the field (mod p) and the scalars (mod n). Points use the complete
// projective formulas of Renes-Costello-Batina (2016, algorithms 7 and 9 for
// a = 0): no special cases, so no branches on secret data in the ladder.

typealias Limbs = SIMD4<UInt64>

@inline(__always)
private func mac(_ acc: UInt64, _ a: UInt64, _ b: UInt64, _ carry: UInt64) -> (UInt64, UInt64) {
    // a*b + acc + carry < 2^128: never overflows.
    let (high, low) = a.multipliedFullWidth(by: b)
    let (s1, o1) = low.addingReportingOverflow(acc)
    let (s2, o2) = s1.addingReportingOverflow(carry)
    return (s2, high &+ (o1 ? 1 : 0) &+ (o2 ? 1 : 0))
}

@inline(__always)
private func addCarry(_ a: UInt64, _ b: UInt64, _ carry: UInt64) -> (UInt64, UInt64) {
    let (s1, o1) = a.addingReportingOverflow(b)
    let (s2, o2) = s1.addingReportingOverflow(carry)
    return (s2, (o1 ? 1 : 0) | (o2 ? 1 : 0))
}

@inline(__always)
private func subBorrow(_ a: UInt64, _ b: UInt64, _ borrow: UInt64) -> (UInt64, UInt64) {
    let (d1, o1) = a.subtractingReportingOverflow(b)
    let (d2, o2) = d1.subtractingReportingOverflow(borrow)
    return (d2, (o1 ? 1 : 0) | (o2 ? 1 : 0))
}

/// `mask` all ones picks `a`, all zeros picks `b`.
@inline(__always)
private func select(_ mask: UInt64, _ a: Limbs, _ b: Limbs) -> Limbs {
    let m = Limbs(repeating: mask)
    return (a & m) | (b & ~m)
}

/// a - b as 256-bit numbers, and the borrow (0 or 1).
@inline(__always)
private func subtract(_ a: Limbs, _ b: Limbs) -> (Limbs, UInt64) {
    var r = Limbs()
    var borrow: UInt64 = 0
    for i in 0..<4 { (r[i], borrow) = subBorrow(a[i], b[i], borrow) }
    return (r, borrow)
}

/// Arithmetic modulo an odd 256-bit modulus, values kept in Montgomery form (x * 2^256 mod m).
struct Montgomery: Sendable {
    let m: Limbs
    let mPrime: UInt64  // -m^-1 mod 2^64
    let r2: Limbs  // 2^512 mod m
    let one: Limbs  // 2^256 mod m: 1 in Montgomery form

    init(_ m: Limbs) {
        self.m = m
        // Newton's iteration for m^-1 mod 2^64 (each step doubles the correct bits).
        var inverse: UInt64 = 1
        for _ in 0..<6 { inverse = inverse &* (2 &- m[0] &* inverse) }
        mPrime = 0 &- inverse
        // 2^256 mod m by doubling 1 256 times, then 2^512 mod m by 256 more.
        var x = Limbs(1, 0, 0, 0)
        var oneMont = Limbs()
        for i in 1...512 {
            x = Self.addMod(x, x, m)
            if i == 256 { oneMont = x }
        }
        one = oneMont
        r2 = x
    }

    @inline(__always)
    static func addMod(_ a: Limbs, _ b: Limbs, _ m: Limbs) -> Limbs {
        var s = Limbs()
        var carry: UInt64 = 0
        for i in 0..<4 { (s[i], carry) = addCarry(a[i], b[i], carry) }
        let (d, borrow) = subtract(s, m)
        // Keep s only if it did not overflow and is below m.
        let keep = (carry == 0 && borrow == 1) ? UInt64.max : 0
        return select(keep, s, d)
    }

    @inline(__always)
    func add(_ a: Limbs, _ b: Limbs) -> Limbs { Self.addMod(a, b, m) }

    @inline(__always)
    func sub(_ a: Limbs, _ b: Limbs) -> Limbs {
        let (d, borrow) = subtract(a, b)
        var fixed = Limbs()
        var carry: UInt64 = 0
        for i in 0..<4 { (fixed[i], carry) = addCarry(d[i], m[i], carry) }
        return select(borrow == 1 ? UInt64.max : 0, fixed, d)
    }

    /// a * b / 2^256 mod m (CIOS).
    @inline(__always)
    func mul(_ a: Limbs, _ b: Limbs) -> Limbs {
        var t0: UInt64 = 0, t1: UInt64 = 0, t2: UInt64 = 0, t3: UInt64 = 0, t4: UInt64 = 0
        for i in 0..<4 {
            let bi = b[i]
            var c: UInt64
            (t0, c) = mac(t0, a[0], bi, 0)
            (t1, c) = mac(t1, a[1], bi, c)
            (t2, c) = mac(t2, a[2], bi, c)
            (t3, c) = mac(t3, a[3], bi, c)
            let (s4, c4) = t4.addingReportingOverflow(c)
            let t5: UInt64 = c4 ? 1 : 0
            let q = t0 &* mPrime
            (_, c) = mac(t0, q, m[0], 0)
            (t0, c) = mac(t1, q, m[1], c)
            (t1, c) = mac(t2, q, m[2], c)
            (t2, c) = mac(t3, q, m[3], c)
            let (s3, c3) = s4.addingReportingOverflow(c)
            t3 = s3
            t4 = t5 &+ (c3 ? 1 : 0)
        }
        let t = Limbs(t0, t1, t2, t3)
        let (d, borrow) = subtract(t, m)
        let keep = (t4 == 0 && borrow == 1) ? UInt64.max : 0
        return select(keep, t, d)
    }

    func toMontgomery(_ a: Limbs) -> Limbs { mul(a, r2) }
    func fromMontgomery(_ a: Limbs) -> Limbs { mul(a, Limbs(1, 0, 0, 0)) }

    /// a^e for a public exponent e (square and multiply, most significant bit first).
    func pow(_ a: Limbs, _ e: Limbs) -> Limbs {
        var r = one
        for i in stride(from: 255, through: 0, by: -1) {
            r = mul(r, r)
            if (e[i / 64] >> UInt64(i % 64)) & 1 == 1 { r = mul(r, a) }
        }
        return r
    }

    /// a^-1 (Fermat); 0 maps to 0.
    func inverse(_ a: Limbs) -> Limbs { pow(a, m &- Limbs(2, 0, 0, 0)) }  // lane-wise: m's low limb is > 2
}

enum Secp256k1 {
    static let p = Limbs(0xFFFF_FFFE_FFFF_FC2F, .max, .max, .max)
    static let n = Limbs(0xBFD2_5E8C_D036_4141, 0xBAAE_DCE6_AF48_A03B, 0xFFFF_FFFF_FFFF_FFFE, .max)
    static let field = Montgomery(p)
    static let scalar = Montgomery(n)
    /// 3b = 21 in Montgomery form, for the complete formulas.
    static let b3 = field.toMontgomery(Limbs(21, 0, 0, 0))
    static let b = field.toMontgomery(Limbs(7, 0, 0, 0))
    static let generator = Point(
        x: field.toMontgomery(Limbs(0x59F2_815B_16F8_1798, 0x029B_FCDB_2DCE_28D9, 0x55A0_6295_CE87_0B07, 0x79BE_667E_F9DC_BBAC)),
        y: field.toMontgomery(Limbs(0x9C47_D08F_FB10_D4B8, 0xFD17_B448_A685_5419, 0x5DA4_FBFC_0E11_08A8, 0x483A_DA77_26A3_C465)),
        z: field.one)

    // MARK: Bytes

    /// A 32-byte big-endian number.
    static func limbs(_ bytes: some Collection<UInt8>) -> Limbs {
        precondition(bytes.count == 32)
        var r = Limbs()
        for (index, byte) in bytes.enumerated() {
            let bit = (31 - index) * 8
            r[bit / 64] |= UInt64(byte) << UInt64(bit % 64)
        }
        return r
    }

    static func bytes(_ a: Limbs) -> [UInt8] {
        (0..<32).map { index in UInt8(truncatingIfNeeded: a[(31 - index) / 8] >> UInt64(((31 - index) % 8) * 8)) }
    }

    static func isBelow(_ a: Limbs, _ bound: Limbs) -> Bool { subtract(a, bound).1 == 1 }
    static func isZero(_ a: Limbs) -> Bool { a == Limbs() }

    // MARK: Points

    /// A point in projective coordinates (X:Y:Z), affine (X/Z, Y/Z); infinity is (0:1:0).
    struct Point: Sendable {
        var x: Limbs, y: Limbs, z: Limbs

        static var infinity: Point { Point(x: Limbs(), y: field.one, z: Limbs()) }
        var isInfinity: Bool { Secp256k1.isZero(z) }

        /// Complete addition (RCB algorithm 7, a = 0).
        static func + (p1: Point, p2: Point) -> Point {
            let f = field
            var t0 = f.mul(p1.x, p2.x), t1 = f.mul(p1.y, p2.y), t2 = f.mul(p1.z, p2.z)
            var t3 = f.add(p1.x, p1.y), t4 = f.add(p2.x, p2.y)
            t3 = f.mul(t3, t4)
            t4 = f.add(t0, t1)
            t3 = f.sub(t3, t4)
            t4 = f.add(p1.y, p1.z)
            var x3 = f.add(p2.y, p2.z)
            t4 = f.mul(t4, x3)
            x3 = f.add(t1, t2)
            t4 = f.sub(t4, x3)
            x3 = f.add(p1.x, p1.z)
            var y3 = f.add(p2.x, p2.z)
            x3 = f.mul(x3, y3)
            y3 = f.add(t0, t2)
            y3 = f.sub(x3, y3)
            x3 = f.add(t0, t0)
            t0 = f.add(x3, t0)
            t2 = f.mul(b3, t2)
            var z3 = f.add(t1, t2)
            t1 = f.sub(t1, t2)
            y3 = f.mul(b3, y3)
            x3 = f.mul(t4, y3)
            t2 = f.mul(t3, t1)
            x3 = f.sub(t2, x3)
            y3 = f.mul(y3, t0)
            t1 = f.mul(t1, z3)
            y3 = f.add(t1, y3)
            t0 = f.mul(t0, t3)
            z3 = f.mul(z3, t4)
            z3 = f.add(z3, t0)
            return Point(x: x3, y: y3, z: z3)
        }

        /// Doubling (RCB algorithm 9, a = 0).
        func doubled() -> Point {
            let f = field
            var t0 = f.mul(y, y)
            var z3 = f.add(t0, t0)
            z3 = f.add(z3, z3)
            z3 = f.add(z3, z3)
            var t1 = f.mul(y, z)
            var t2 = f.mul(z, z)
            t2 = f.mul(b3, t2)
            var x3 = f.mul(t2, z3)
            var y3 = f.add(t0, t2)
            z3 = f.mul(t1, z3)
            t1 = f.add(t2, t2)
            t2 = f.add(t1, t2)
            t0 = f.sub(t0, t2)
            y3 = f.mul(t0, y3)
            y3 = f.add(x3, y3)
            t1 = f.mul(x, y)
            x3 = f.mul(t0, t1)
            x3 = f.add(x3, x3)
            return Point(x: x3, y: y3, z: z3)
        }

        /// Affine x and y (not in Montgomery form), nil for infinity.
        func affine() -> (x: Limbs, y: Limbs)? {
            guard !isInfinity else { return nil }
            let zInverse = field.inverse(z)
            return (field.fromMontgomery(field.mul(x, zInverse)), field.fromMontgomery(field.mul(y, zInverse)))
        }

        /// k * self, always 256 doublings and additions with a masked select, so
        /// the sequence of operations does not depend on k (used with secrets).
        func multiplied(by k: Limbs) -> Point {
            var r = Point.infinity
            for i in stride(from: 255, through: 0, by: -1) {
                r = r.doubled()
                let sum = r + self
                let mask = 0 &- ((k[i / 64] >> UInt64(i % 64)) & 1)
                r = Point(x: select(mask, sum.x, r.x), y: select(mask, sum.y, r.y), z: select(mask, sum.z, r.z))
            }
            return r
        }
    }

    /// u1 * G + u2 * q for public scalars (Shamir's trick: one shared chain of doublings).
    static func linearCombination(_ u1: Limbs, _ u2: Limbs, _ q: Point) -> Point {
        let gq = generator + q
        var r = Point.infinity
        for i in stride(from: 255, through: 0, by: -1) {
            r = r.doubled()
            let b1 = (u1[i / 64] >> UInt64(i % 64)) & 1, b2 = (u2[i / 64] >> UInt64(i % 64)) & 1
            switch (b1, b2) {
            case (1, 1): r = r + gq
            case (1, 0): r = r + generator
            case (0, 1): r = r + q
            default: break
            }
        }
        return r
    }

    // MARK: Keys

    /// A public key from its SEC1 encoding: compressed (33 bytes, 02/03),
    /// uncompressed (65 bytes, 04) or hybrid (65 bytes, 06/07), as libsecp256k1
    /// accepted. Nil unless the point is on the curve.
    static func parse(_ bytes: [UInt8]) -> Point? {
        let f = field
        if bytes.count == 33, bytes[0] == 2 || bytes[0] == 3 {
            let x = limbs(bytes[1...])
            guard isBelow(x, p) else { return nil }
            let xm = f.toMontgomery(x)
            let y2 = f.add(f.mul(f.mul(xm, xm), xm), b)
            // p = 3 mod 4: a square root is y2^((p+1)/4); check it squares back.
            var y = f.pow(y2, Limbs(0xFFFF_FFFF_BFFF_FF0C, .max, .max, 0x3FFF_FFFF_FFFF_FFFF))
            guard f.mul(y, y) == y2 else { return nil }
            if (f.fromMontgomery(y)[0] & 1) != UInt64(bytes[0] & 1) { y = f.sub(Limbs(), y) }
            return Point(x: xm, y: y, z: f.one)
        }
        if bytes.count == 65, [4, 6, 7].contains(bytes[0]) {
            let x = limbs(bytes[1..<33]), y = limbs(bytes[33...])
            guard isBelow(x, p), isBelow(y, p) else { return nil }
            if bytes[0] != 4, (y[0] & 1) != UInt64(bytes[0] & 1) { return nil }
            let xm = f.toMontgomery(x), ym = f.toMontgomery(y)
            guard f.mul(ym, ym) == f.add(f.mul(f.mul(xm, xm), xm), b) else { return nil }
            return Point(x: xm, y: ym, z: f.one)
        }
        return nil
    }

    /// The 33-byte compressed encoding of a finite point.
    static func compressed(_ point: Point) -> [UInt8]? {
        guard let affine = point.affine() else { return nil }
        return [UInt8(2 | (affine.y[0] & 1))] + bytes(affine.x)
    }

    /// Parses a strict DER ECDSA signature (as libsecp256k1 does): SEQUENCE of
    /// two minimal, positive INTEGERs, nothing after; r and s must lie in [1, n-1].
    static func parseDER(_ der: [UInt8]) -> (r: Limbs, s: Limbs)? {
        var index = 0
        func length() -> Int? {
            guard index < der.count else { return nil }
            let first = der[index]
            index += 1
            if first < 0x80 { return Int(first) }
            let count = Int(first & 0x7F)
            // Long form only for lengths >= 128, with no leading zero byte.
            guard count >= 1, count <= 2, index + count <= der.count, der[index] != 0 else { return nil }
            var value = 0
            for _ in 0..<count {
                value = value << 8 | Int(der[index])
                index += 1
            }
            return value >= 0x80 ? value : nil
        }
        func integer() -> Limbs? {
            guard index < der.count, der[index] == 0x02 else { return nil }
            index += 1
            guard let count = length(), count >= 1, index + count <= der.count else { return nil }
            var body = der[index..<index + count]
            index += count
            guard body.first! & 0x80 == 0 else { return nil }  // negative
            if body.count > 1, body.first! == 0 {
                guard body[body.startIndex + 1] & 0x80 != 0 else { return nil }  // needless padding
                body = body.dropFirst()
            }
            guard body.count <= 32 else { return nil }
            return limbs([UInt8](repeating: 0, count: 32 - body.count) + body)
        }
        guard der.first == 0x30 else { return nil }
        index = 1
        guard let total = length(), index + total == der.count else { return nil }
        guard let r = integer(), let s = integer(), index == der.count else { return nil }
        guard !isZero(r), !isZero(s), isBelow(r, n), isBelow(s, n) else { return nil }
        return (r, s)
    }

    /// Minimal DER of (r, s).
    static func der(r: Limbs, s: Limbs) -> [UInt8] {
        func integer(_ value: Limbs) -> [UInt8] {
            var body = Array(bytes(value).drop { $0 == 0 })
            if body.isEmpty || body[0] & 0x80 != 0 { body.insert(0, at: 0) }
            return [0x02, UInt8(body.count)] + body
        }
        let content = integer(r) + integer(s)
        return [0x30, UInt8(content.count)] + content
    }

    /// SHA-256 of the message as a scalar (reduced mod n).
    static func digestScalar(_ message: [UInt8]) -> Limbs {
        let e = limbs(Array(SHA256.hash(data: message)))
        let (reduced, borrow) = subtract(e, n)
        return borrow == 1 ? e : reduced
    }

    /// ECDSA verification; high-S signatures are accepted, as libsecp256k1 did
    /// after normalizing (s and n - s verify the same).
    static func verify(publicKey: [UInt8], derSignature: [UInt8], message: [UInt8]) -> Bool {
        guard let q = parse(publicKey), derSignature.count <= 80, let signature = parseDER(derSignature) else {
            return false
        }
        let (r, s) = signature
        let sc = scalar
        let w = sc.inverse(sc.toMontgomery(s))
        // Montgomery product of a plain value and a Montgomery one is plain.
        let u1 = sc.mul(digestScalar(message), w)
        let u2 = sc.mul(r, w)
        guard let x = linearCombination(u1, u2, q).affine()?.x else { return false }
        let (xModN, borrow) = subtract(x, n)
        return (borrow == 1 ? x : xModN) == r
    }

    /// The compressed public key of a secret in [1, n-1], nil otherwise.
    static func publicKey(secret: [UInt8]) -> [UInt8]? {
        guard secret.count == 32 else { return nil }
        let d = limbs(secret)
        guard !isZero(d), isBelow(d, n) else { return nil }
        return compressed(generator.multiplied(by: d))
    }

    /// ECDSA with an RFC 6979 nonce (HMAC-SHA256), low-S, DER encoded.
    static func sign(secret: [UInt8], message: [UInt8]) -> [UInt8]? {
        guard secret.count == 32 else { return nil }
        let d = limbs(secret)
        guard !isZero(d), isBelow(d, n) else { return nil }
        let e = digestScalar(message)
        let sc = scalar
        var nonces = RFC6979(secret: secret, digest: bytes(e))
        while true {
            let k = nonces.next()
            guard !isZero(k), isBelow(k, n), let x = generator.multiplied(by: k).affine()?.x else { continue }
            let (xModN, borrow) = subtract(x, n)
            let r = borrow == 1 ? x : xModN
            guard !isZero(r) else { continue }
            // s = k^-1 (e + r d)
            let rd = sc.mul(sc.toMontgomery(r), d)  // plain
            let sum = sc.add(e, rd)
            var s = sc.mul(sum, sc.inverse(sc.toMontgomery(k)))  // plain
            guard !isZero(s) else { continue }
            let half = Limbs(0xDFE9_2F46_681B_20A0, 0x5D57_6E73_57A4_501D, .max, 0x7FFF_FFFF_FFFF_FFFF)
            if !isBelow(s, half &+ Limbs(1, 0, 0, 0)) { s = sc.sub(Limbs(), s) }  // low S
            return der(r: r, s: s)
        }
    }

    /// RFC 6979 section 3.2 deterministic nonces with HMAC-SHA256.
    struct RFC6979 {
        var k: SymmetricKey
        var v: [UInt8]

        init(secret: [UInt8], digest: [UInt8]) {
            v = [UInt8](repeating: 1, count: 32)
            k = SymmetricKey(data: [UInt8](repeating: 0, count: 32))
            k = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: v + [0] + secret + digest, using: k)))
            v = Array(HMAC<SHA256>.authenticationCode(for: v, using: k))
            k = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: v + [1] + secret + digest, using: k)))
            v = Array(HMAC<SHA256>.authenticationCode(for: v, using: k))
        }

        mutating func next() -> Limbs {
            v = Array(HMAC<SHA256>.authenticationCode(for: v, using: k))
            let candidate = limbs(v)
            // Prepare the following candidate in case this one is rejected.
            k = SymmetricKey(data: Array(HMAC<SHA256>.authenticationCode(for: v + [0], using: k)))
            v = Array(HMAC<SHA256>.authenticationCode(for: v, using: k))
            return candidate
        }
    }
}
