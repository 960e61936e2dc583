import Crypto
import Foundation
import Identity
import LibP2PSecurity
import SwiftASN1
import TestKit
import X509
import XCTest

@testable import TLS

final class CertificateTests: XCTestCase {
    /// A certificate built like ours, with parts replaced to break it.
    func certificate(
        identity: PrivateKey = .generateEd25519(), notValidBefore: Date = Date() - 60,
        notValidAfter: Date = Date() + 3600, withExtension: Bool = true, extensionCritical: Bool = true,
        signedSPKI: [UInt8]? = nil, hostKey: PublicKey? = nil, tamperSignature: Bool = false,
        extraExtensions: [Certificate.Extension] = []
    ) throws -> [UInt8] {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        let spki = try LibP2PCertificate.derBytes(key.publicKey)
        var signature = try identity.sign(LibP2PCertificate.signaturePrefix + (signedSPKI ?? spki))
        if tamperSignature { signature[signature.count / 2] ^= 0x01 }
        var extensions = extraExtensions
        if withExtension {
            let value = try LibP2PCertificate.encodeSignedKey(
                publicKey: (hostKey ?? identity.publicKey).marshal(), signature: signature)
            extensions.append(
                Certificate.Extension(oid: LibP2PCertificate.extensionOID, critical: extensionCritical, value: value[...]))
        }
        let certificate = try LibP2PCertificate.makeCertificate(
            key: key, notValidBefore: notValidBefore, notValidAfter: notValidAfter, extensions: extensions)
        return try LibP2PCertificate.derBytes(certificate)
    }

    func assertRefused(
        _ chain: [[UInt8]], file: StaticString = #filePath, line: UInt = #line,
        _ check: (TLSError) -> Bool
    ) {
        XCTAssertThrowsError(try LibP2PCertificate.verify(chain: chain, expectedPeer: nil), file: file, line: line) {
            error in
            guard let error = error as? TLSError else { return XCTFail("not a TLSError: \(error)", file: file, line: line) }
            XCTAssertTrue(check(error), "unexpected: \(error)", file: file, line: line)
            XCTAssertFalse(error.description.isEmpty)
        }
    }

    // MARK: Our own certificates

    func testGeneratedCertificateVerifiesForEveryKeyType() throws {
        for identity in [PrivateKey.generateEd25519(), .generateSecp256k1(), .generateECDSAP256()] {
            let generated = try LibP2PCertificate.generate(identity: identity)
            let peer = try LibP2PCertificate.verify(
                chain: [generated.certificateDER], expectedPeer: PeerID(publicKey: identity.publicKey))
            XCTAssertEqual(peer.peerID, PeerID(publicKey: identity.publicKey))
            XCTAssertEqual(peer.publicKey, identity.publicKey)
        }
    }

    func testGeneratedCertificateShape() throws {
        let identity = PrivateKey.generateEd25519()
        let certificate = try Certificate(derEncoded: try LibP2PCertificate.generate(identity: identity).certificateDER)
        let element = try XCTUnwrap(certificate.extensions[oid: LibP2PCertificate.extensionOID])
        XCTAssertTrue(element.critical, "the spec's extension, marked critical")
        XCTAssertEqual(try LibP2PCertificate.decodeSignedKey(element.value).publicKey, identity.publicKey.marshal())
        XCTAssertNotNil(P256.Signing.PublicKey(certificate.publicKey), "a P-256 certificate key")
        XCTAssertLessThan(certificate.notValidBefore, Date())
        XCTAssertGreaterThan(certificate.notValidAfter, Date() + 365 * 24 * 3600)
    }

    func testFreshKeyPerCertificate() throws {
        let identity = PrivateKey.generateEd25519()
        let a = try Certificate(derEncoded: try LibP2PCertificate.generate(identity: identity).certificateDER)
        let b = try Certificate(derEncoded: try LibP2PCertificate.generate(identity: identity).certificateDER)
        XCTAssertNotEqual(a.publicKey, b.publicKey)
    }

    func testExpectedPeerMismatch() throws {
        let der = try certificate()
        let other = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        XCTAssertThrowsError(try LibP2PCertificate.verify(chain: [der], expectedPeer: other)) { error in
            XCTAssertEqual((error as? PeerIDMismatch)?.expected, other)
        }
    }

    // MARK: The spec's test vectors (tls/tls.md)

    func testSpecVectorEd25519() throws {
        let der = unhex(
            "308201ae30820156a0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea37c307a3078060a2b0601040183a25a0101046a3068042408011220a77f1d92fedb59dddaea5a1c4abd1ac2fbde7d7b879ed364501809923d7c11b90440d90d2769db992d5e6195dbb08e706b6651e024fda6cfb8846694a435519941cac215a8207792e42849cccc6cd8136c6e4bde92a58c5e08cfd4206eb5fe0bf909300a06082a8648ce3d0403020346003043021f50f6b6c52711a881778718238f650c9fb48943ae6ee6d28427dc6071ae55e702203625f116a7a454db9c56986c82a25682f7248ea1cb764d322ea983ed36a31b77"
        )
        let peer = try LibP2PCertificate.verify(chain: [der], expectedPeer: nil)
        XCTAssertEqual(peer.peerID.description, "12D3KooWM6CgA9iBFZmcYAHA6A2qvbAxqfkmrYiRQuz3XEsk4Ksv")
    }

    func testSpecVectorECDSA() throws {
        let der = unhex(
            "308201f63082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f2044730450220064ea8124774caf8f50e57f436aa62350ce652418c019df5d98a3ac666c9386a022100aa59d704a931b5f72fb9222cb6cc51f954d04a4e2e5450f8805fe8918f71eaae300a06082a8648ce3d04030203470030440220799395b0b6c1e940a7e4484705f610ab51ed376f19ff9d7c16757cfbf61b8d4302206205c03fbb0f95205c779be86581d3e31c01871ad5d1f3435bcf375cb0e5088a"
        )
        let peer = try LibP2PCertificate.verify(chain: [der], expectedPeer: nil)
        XCTAssertEqual(peer.peerID.description, "QmfXbAwNjJLXfesgztEHe8HwgVDCMMpZ9Eax1HYq6hn9uE")
    }

    func testSpecVectorSecp256k1() throws {
        let der = unhex(
            "308201ba3082015fa0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea38184308181307f060a2b0601040183a25a01010471306f0425080212210206dc6968726765b820f050263ececf7f71e4955892776c0970542efd689d2382044630440220145e15a991961f0d08cd15425bb95ec93f6ffa03c5a385eedc34ecf464c7a8ab022026b3109b8a3f40ef833169777eb2aa337cfb6282f188de0666d1bcec2a4690dd300a06082a8648ce3d0403020349003046022100e1a217eeef9ec9204b3f774a08b70849646b6a1e6b8b27f93dc00ed58545d9fe022100b00dafa549d0f03547878338c7b15e7502888f6d45db387e5ae6b5d46899cef0"
        )
        let peer = try LibP2PCertificate.verify(chain: [der], expectedPeer: nil)
        XCTAssertEqual(peer.peerID.description, "16Uiu2HAkutTMoTzDw1tCvSRtu6YoixJwS46S1ZFxW8hSx9fWHiPs")
    }

    func testSpecVectorInvalid() throws {
        let der = unhex(
            "308201f73082019da0030201020204499602d2300a06082a8648ce3d040302302031123010060355040a13096c69627032702e696f310a300806035504051301313020170d3735303130313133303030305a180f34303936303130313133303030305a302031123010060355040a13096c69627032702e696f310a300806035504051301313059301306072a8648ce3d020106082a8648ce3d030107034200040c901d423c831ca85e27c73c263ba132721bb9d7a84c4f0380b2a6756fd601331c8870234dec878504c174144fa4b14b66a651691606d8173e55bd37e381569ea381c23081bf3081bc060a2b0601040183a25a01010481ad3081aa045f0803125b3059301306072a8648ce3d020106082a8648ce3d03010703420004bf30511f909414ebdd3242178fd290f093a551cf75c973155de0bb5a96fedf6cb5d52da7563e794b512f66e60c7f55ba8a3acf3dd72a801980d205e8a1ad29f204473045022100bb6e03577b7cc7a3cd1558df0da2b117dfdcc0399bc2504ebe7de6f65cade72802206de96e2a5be9b6202adba24ee0362e490641ac45c240db71fe955f2c5cf8df6e300a06082a8648ce3d0403020348003045022100e847f267f43717358f850355bdcabbefb2cfbf8a3c043b203a14788a092fe8db022027c1d04a2d41fd6b57a7e8b3989e470325de4406e52e084e34a3fd56eef0d0df"
        )
        assertRefused([der]) { if case .invalidExtensionSignature = $0 { true } else { false } }
    }

    // MARK: Refusals

    func testMissingExtension() throws {
        assertRefused([try certificate(withExtension: false)]) {
            if case .missingLibp2pExtension = $0 { true } else { false }
        }
    }

    func testNonCriticalExtensionIsAccepted() throws {
        XCTAssertNoThrow(try LibP2PCertificate.verify(chain: [try certificate(extensionCritical: false)], expectedPeer: nil))
    }

    func testTamperedExtensionSignature() throws {
        assertRefused([try certificate(tamperSignature: true)]) {
            if case .invalidExtensionSignature = $0 { true } else { false }
        }
    }

    func testExtensionSignedForAnotherCertificateKey() throws {
        let otherSPKI = Array(P256.Signing.PrivateKey().publicKey.derRepresentation)
        assertRefused([try certificate(signedSPKI: otherSPKI)]) {
            if case .invalidExtensionSignature = $0 { true } else { false }
        }
    }

    func testExtensionKeyIsNotTheSigner() throws {
        // The extension names one host key, the signature is another's.
        assertRefused([try certificate(hostKey: PrivateKey.generateEd25519().publicKey)]) {
            if case .invalidExtensionSignature = $0 { true } else { false }
        }
    }

    func testExpiredCertificate() throws {
        assertRefused([try certificate(notValidBefore: Date() - 7200, notValidAfter: Date() - 3600)]) {
            if case .certificateExpired = $0 { true } else { false }
        }
    }

    func testNotYetValidCertificate() throws {
        assertRefused([try certificate(notValidBefore: Date() + 3600, notValidAfter: Date() + 7200)]) {
            if case .certificateNotYetValid = $0 { true } else { false }
        }
    }

    func testTwoCertificates() throws {
        assertRefused([try certificate(), try certificate()]) {
            if case .certificateCount(2) = $0 { true } else { false }
        }
        assertRefused([]) { if case .noPeerCertificate = $0 { true } else { false } }
    }

    func testBrokenSelfSignature() throws {
        var der = try certificate()
        der[der.count - 3] ^= 0x01  // inside the ECDSA signature's last integer
        assertRefused([der]) {
            switch $0 {
            case .invalidSelfSignature, .malformedCertificate: true
            default: false
            }
        }
    }

    func testUnknownCriticalExtension() throws {
        let unknown = Certificate.Extension(oid: [1, 2, 3, 4, 5], critical: true, value: [0x05, 0x00])
        assertRefused([try certificate(extraExtensions: [unknown])]) {
            if case .unsupportedCriticalExtension("1.2.3.4.5") = $0 { true } else { false }
        }
        // Unknown but not critical: ignored, as the spec says.
        let ignorable = Certificate.Extension(oid: [1, 2, 3, 4, 5], critical: false, value: [0x05, 0x00])
        XCTAssertNoThrow(
            try LibP2PCertificate.verify(chain: [try certificate(extraExtensions: [ignorable])], expectedPeer: nil))
    }

    func testMalformedExtensionAndHostKey() throws {
        let key = Certificate.PrivateKey(P256.Signing.PrivateKey())
        func build(_ value: [UInt8]) throws -> [UInt8] {
            let element = Certificate.Extension(oid: LibP2PCertificate.extensionOID, critical: true, value: value[...])
            return try LibP2PCertificate.derBytes(
                LibP2PCertificate.makeCertificate(
                    key: key, notValidBefore: Date() - 60, notValidAfter: Date() + 60, extensions: [element]))
        }
        assertRefused([try build([0x30, 0x03, 0x04, 0x01])]) {
            if case .malformedLibp2pExtension = $0 { true } else { false }
        }
        let garbageKey = try LibP2PCertificate.encodeSignedKey(publicKey: [1, 2, 3], signature: [4, 5, 6])
        assertRefused([try build(garbageKey)]) { if case .invalidHostKey = $0 { true } else { false } }
    }

    func testGarbageCertificates() throws {
        for length in [0, 1, 10, 500] {
            assertRefused([randomBytes(length)]) { if case .malformedCertificate = $0 { true } else { false } }
        }
        let der = try certificate()
        for cut in [1, 10, der.count / 2, der.count - 1] {
            assertRefused([Array(der.prefix(cut))]) { if case .malformedCertificate = $0 { true } else { false } }
        }
    }
}
