import Identity
import LibP2PSecurity
import NIOCore
import TLS
import XCTest

@testable import Transport

/// The sans-IO upgrade over /tls/1.0.0: ALPN replaces the muxer round when both list Yamux.
extension ConnectionUpgradeTests {
    /// TLS offering no muxer in ALPN (only "libp2p"), as py-libp2p does by default.
    struct TLSWithoutMuxers: SecurityProtocol {
        var protocolID: String { TLSSecurity.protocolID }
        func makeHandshake(role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]) throws
            -> any SecurityHandshake
        {
            try TLSSecurity().makeHandshake(role: role, localKey: localKey, expectedRemotePeer: expectedRemotePeer, muxers: [])
        }
    }

    func testTLSWithEarlyMuxerNegotiationAtEveryFragmentation() throws {
        let alice = PrivateKey.generateEd25519()
        let bob = PrivateKey.generateEd25519()
        for step in [1, 100, .max] {
            var a = machine(.initiator, key: alice, expecting: PeerID(publicKey: bob.publicKey), security: [TLSSecurity()])
            var b = machine(.responder, key: bob, security: [TLSSecurity()])
            let outcome = try run(&a, &b, step: step)
            XCTAssertEqual(outcome.initiator.remotePeer, PeerID(publicKey: bob.publicKey))
            XCTAssertEqual(outcome.responder.remotePeer, PeerID(publicKey: alice.publicKey))
            XCTAssertEqual(outcome.initiator.securityProtocol, "/tls/1.0.0")
            XCTAssertEqual(outcome.initiator.muxer, yamux)
            XCTAssertEqual(outcome.responder.muxer, yamux)
            XCTAssertTrue(outcome.initiator.earlyMuxerNegotiation)
            XCTAssertTrue(outcome.responder.earlyMuxerNegotiation)
        }
    }

    func testTLSWithALPNLibp2pFallsBackToMultistream() throws {
        var a = machine(.initiator, key: .generateEd25519(), security: [TLSSecurity()])
        var b = machine(.responder, key: .generateEd25519(), security: [TLSWithoutMuxers()])
        let outcome = try run(&a, &b)
        XCTAssertFalse(outcome.initiator.earlyMuxerNegotiation)
        XCTAssertFalse(outcome.responder.earlyMuxerNegotiation)
        XCTAssertEqual(outcome.initiator.muxer, yamux)
        XCTAssertEqual(outcome.responder.muxer, yamux)
    }

    func testTLSPeerIDMismatchIsItsOwnError() throws {
        let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let bob = PrivateKey.generateEd25519()
        var a = machine(.initiator, key: .generateEd25519(), expecting: impostor, security: [TLSSecurity()])
        var b = machine(.responder, key: bob, security: [TLSSecurity()])
        XCTAssertThrowsError(try run(&a, &b)) { error in
            guard case .peerIDMismatch(let expected, let actual) = error as? TransportError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(expected, impostor)
            XCTAssertEqual(actual, PeerID(publicKey: bob.publicKey))
        }
    }
}
