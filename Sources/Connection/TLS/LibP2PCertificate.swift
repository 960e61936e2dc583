import Crypto
import Foundation
import Identity
import LibP2PSecurity
import SwiftASN1
import X509

/// The self-signed certificates of libp2p TLS: a throwaway certificate key,
/// bound to the host's identity key by the libp2p public key extension.
public enum LibP2PCertificate {
    /// 1.3.6.1.4.1.53594.1.1, allocated by IANA to libp2p.
    public static let extensionOID: ASN1ObjectIdentifier = [1, 3, 6, 1, 4, 1, 53594, 1, 1]
    /// Prefixed to the certificate key's SubjectPublicKeyInfo before the host key signs it.
    public static let signaturePrefix: [UInt8] = Array("libp2p-tls-handshake:".utf8)
    /// How far back a new certificate's validity starts, for remotes whose clocks run behind.
    public static let clockSkewAllowance: TimeInterval = 3600
    /// How long a new certificate stays valid. Keys are fresh per handshake, so
    /// nothing is gained by a short life, and a remote clock far ahead must not reject us.
    public static let lifetime: TimeInterval = 100 * 365 * 24 * 3600

    /// Critical extensions we may meet on an end-entity certificate and accept:
    /// they constrain what the key may do, never who it is.
    static let understoodCriticalExtensions: Set<ASN1ObjectIdentifier> = [
        extensionOID,
        .X509ExtensionID.basicConstraints,
        .X509ExtensionID.keyUsage,
        .X509ExtensionID.extendedKeyUsage,
        .X509ExtensionID.subjectAlternativeName,
    ]

    /// A certificate (DER) and the private key (DER) that signed it.
    public struct Generated: Sendable {
        public let certificateDER: [UInt8]
        public let privateKeyDER: [UInt8]
    }

    /// The peer a valid certificate proves.
    public struct VerifiedPeer: Sendable, Equatable {
        public let peerID: PeerID
        public let publicKey: PublicKey
    }

    /// A fresh ECDSA P-256 key and a self-signed certificate for it that
    /// carries `identity`'s public key and its signature (extension marked critical).
    public static func generate(identity: PrivateKey, now: Date = Date()) throws(TLSError) -> Generated {
        do {
            let key = P256.Signing.PrivateKey()
            let certificateKey = Certificate.PrivateKey(key)
            let spki = try derBytes(certificateKey.publicKey)
            let signature = try identity.sign(signaturePrefix + spki)
            let signedKey = try encodeSignedKey(publicKey: identity.publicKey.marshal(), signature: signature)
            let certificate = try makeCertificate(
                key: certificateKey, notValidBefore: now - clockSkewAllowance, notValidAfter: now + lifetime,
                extensions: [Certificate.Extension(oid: extensionOID, critical: true, value: signedKey[...])])
            return Generated(
                certificateDER: try derBytes(certificate),
                privateKeyDER: Array(key.derRepresentation))
        } catch {
            throw .setupFailed(error)
        }
    }

    static func derBytes(_ value: some DERSerializable) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.serialize(value)
        return serializer.serializedBytes
    }

    /// A self-signed certificate of `key` with `extensions`.
    static func makeCertificate(
        key: Certificate.PrivateKey, notValidBefore: Date, notValidAfter: Date,
        extensions: [Certificate.Extension]
    ) throws -> Certificate {
        // The name says nothing: identity lives in the extension.
        let name = try DistinguishedName { CommonName("libp2p") }
        return try Certificate(
            version: .v3, serialNumber: Certificate.SerialNumber(), publicKey: key.publicKey,
            notValidBefore: notValidBefore, notValidAfter: notValidAfter, issuer: name, subject: name,
            signatureAlgorithm: .ecdsaWithSHA256, extensions: try Certificate.Extensions(extensions),
            issuerPrivateKey: key)
    }

    /// `SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }`.
    static func encodeSignedKey(publicKey: [UInt8], signature: [UInt8]) throws -> [UInt8] {
        var serializer = DER.Serializer()
        try serializer.appendConstructedNode(identifier: .sequence) { sequence in
            try sequence.serialize(ASN1OctetString(contentBytes: publicKey[...]))
            try sequence.serialize(ASN1OctetString(contentBytes: signature[...]))
        }
        return serializer.serializedBytes
    }

    static func decodeSignedKey(_ bytes: ArraySlice<UInt8>) throws -> (publicKey: [UInt8], signature: [UInt8]) {
        try DER.sequence(try DER.parse(bytes), identifier: .sequence) { nodes in
            let publicKey = try ASN1OctetString(derEncoded: &nodes)
            let signature = try ASN1OctetString(derEncoded: &nodes)
            return (Array(publicKey.bytes), Array(signature.bytes))
        }
    }

    /// Checks a presented chain (DER, leaf first) as the spec demands and
    /// returns the peer it proves. Throws `TLSError`, or `PeerIDMismatch`
    /// when `expectedPeer` is given and differs.
    public static func verify(chain: [[UInt8]], expectedPeer: PeerID?, now: Date = Date()) throws -> VerifiedPeer {
        guard chain.count == 1 else { throw chain.isEmpty ? TLSError.noPeerCertificate : .certificateCount(chain.count) }
        let certificate: Certificate
        do {
            certificate = try Certificate(derEncoded: chain[0])
        } catch {
            throw TLSError.malformedCertificate(error)
        }
        guard now >= certificate.notValidBefore else {
            throw TLSError.certificateNotYetValid(notBefore: "\(certificate.notValidBefore)")
        }
        guard now <= certificate.notValidAfter else {
            throw TLSError.certificateExpired(notAfter: "\(certificate.notValidAfter)")
        }
        guard certificate.publicKey.isValidSignature(certificate.signature, for: certificate) else {
            throw TLSError.invalidSelfSignature
        }
        for element in certificate.extensions where element.critical {
            guard understoodCriticalExtensions.contains(element.oid) else {
                throw TLSError.unsupportedCriticalExtension("\(element.oid)")
            }
        }
        guard let element = certificate.extensions[oid: extensionOID] else { throw TLSError.missingLibp2pExtension }
        let signedKey: (publicKey: [UInt8], signature: [UInt8])
        do {
            signedKey = try decodeSignedKey(element.value)
        } catch {
            throw TLSError.malformedLibp2pExtension(error)
        }
        let hostKey: PublicKey
        do {
            hostKey = try PublicKey(marshaled: signedKey.publicKey)
        } catch {
            throw TLSError.invalidHostKey(error)
        }
        let spki: ArraySlice<UInt8>
        do {
            spki = try rawSubjectPublicKeyInfo(certificate)
        } catch {
            throw TLSError.malformedCertificate(error)
        }
        guard hostKey.verify(signature: signedKey.signature, for: signaturePrefix + spki) else {
            throw TLSError.invalidExtensionSignature
        }
        let peer = PeerID(publicKey: hostKey)
        if let expectedPeer, expectedPeer != peer {
            throw PeerIDMismatch(expected: expectedPeer, actual: peer)
        }
        return VerifiedPeer(peerID: peer, publicKey: hostKey)
    }

    /// The SubjectPublicKeyInfo exactly as the certificate encodes it: the
    /// signature covers those bytes, and a re-encoding of the parsed key need
    /// not match them.
    static func rawSubjectPublicKeyInfo(_ certificate: Certificate) throws -> ArraySlice<UInt8> {
        try DER.sequence(try DER.parse(certificate.tbsCertificateBytes), identifier: .sequence) { nodes in
            // TBSCertificate: [0] version (optional), serialNumber, signature,
            // issuer, validity, subject, subjectPublicKeyInfo, ...
            var node = nodes.next()
            if node?.identifier == ASN1Identifier(tagWithNumber: 0, tagClass: .contextSpecific) { node = nodes.next() }
            for _ in 0..<5 { node = nodes.next() }
            while nodes.next() != nil {}  // the rest (extensions) is not ours to check here
            guard let spki = node, spki.identifier == .sequence else {
                throw ASN1Error.invalidASN1Object(reason: "TBSCertificate has no SubjectPublicKeyInfo")
            }
            return spki.encodedBytes
        }
    }
}
