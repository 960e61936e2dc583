import SwiftASN1
import _CryptoExtras

/// RSA public keys from DER, parsed here and handed to swift-crypto as n and e.
///
/// swift-crypto 3.12's `_RSA.Signing.PublicKey(unsafeDERRepresentation:)`
/// frees its key twice when BoringSSL refuses the bytes (once in the failed
/// initializer, again in `deinit`): a peer sending a malformed RSA key could
/// crash the process. Its `init(n:e:)` has no such path, so untrusted bytes
/// never reach the DER initializer.
enum RSAPublicKeyDER {
    /// rsaEncryption (PKCS #1).
    static let rsaEncryption: ASN1ObjectIdentifier = [1, 2, 840, 113_549, 1, 1, 1]

    /// The key of a PKIX SubjectPublicKeyInfo (libp2p's encoding) or of a bare
    /// PKCS #1 RSAPublicKey; nil for anything else.
    static func parse(_ der: [UInt8]) -> _RSA.Signing.PublicKey? {
        guard let (n, e) = components(der) else { return nil }
        return try? _RSA.Signing.PublicKey(n: n, e: e)
    }

    static func components(_ der: [UInt8]) -> (n: ArraySlice<UInt8>, e: ArraySlice<UInt8>)? {
        guard let root = try? DER.parse(der) else { return nil }
        if let spki = try? subjectPublicKeyInfo(root) { return spki }
        return try? rsaPublicKey(root)
    }

    /// SEQUENCE { SEQUENCE { rsaEncryption, NULL (optional) }, BIT STRING { RSAPublicKey } }
    private static func subjectPublicKeyInfo(_ node: ASN1Node) throws -> (n: ArraySlice<UInt8>, e: ArraySlice<UInt8>) {
        try DER.sequence(node, identifier: .sequence) { nodes in
            guard let algorithm = nodes.next() else { throw ASN1Error.invalidASN1Object(reason: "no algorithm") }
            try DER.sequence(algorithm, identifier: .sequence) { parts in
                guard let oid = parts.next(),
                    try ASN1ObjectIdentifier(derEncoded: oid) == rsaEncryption
                else { throw ASN1Error.invalidASN1Object(reason: "not rsaEncryption") }
                if let parameters = parts.next() { _ = try ASN1Null(derEncoded: parameters) }
            }
            guard let keyNode = nodes.next() else { throw ASN1Error.invalidASN1Object(reason: "no key") }
            let bits = try ASN1BitString(derEncoded: keyNode)
            guard bits.paddingBits == 0 else { throw ASN1Error.invalidASN1Object(reason: "padded key bits") }
            return try rsaPublicKey(DER.parse(bits.bytes))
        }
    }

    /// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }
    private static func rsaPublicKey(_ node: ASN1Node) throws -> (n: ArraySlice<UInt8>, e: ArraySlice<UInt8>) {
        try DER.sequence(node, identifier: .sequence) { nodes in
            guard let n = nodes.next(), let e = nodes.next() else {
                throw ASN1Error.invalidASN1Object(reason: "need modulus and exponent")
            }
            return (try ArraySlice<UInt8>(derEncoded: n), try ArraySlice<UInt8>(derEncoded: e))
        }
    }
}
