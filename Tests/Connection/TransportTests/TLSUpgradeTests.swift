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
        XCTAssertEqual(TLSSecurity().protocolID, "/tls/1.0.0")
        try assertEarlyMuxerNegotiation(over: TLSSecurity(), steps: [1, 100, .max])
    }

    func testTLSWithALPNLibp2pFallsBackToMultistream() throws {
        try assertMultistreamChoosesTheMuxer(local: TLSSecurity(), remote: TLSWithoutMuxers())
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
