import Identity
import Multistream
import NIOCore
import Noise
import TLS
import LibP2PSecurity
import TestSupport
import XCTest

@testable import Transport

/// The sans-IO upgrade, two machines against each other, no sockets.
final class ConnectionUpgradeTests: XCTestCase {
    let yamux = TransportConfiguration.yamuxProtocolID

    /// A security protocol that only exists to be refused or to be listed first.
    struct UnknownSecurity: SecurityProtocol {
        var protocolID: String { "/p2pchat/test/unknown-security/1.0.0" }
        func makeHandshake(role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]) throws
            -> any SecurityHandshake
        {
            throw DescribedError(description: "never chosen")
        }
    }

    /// Noise without the early muxer list, as py-libp2p sends it.
    struct NoiseWithoutExtensions: SecurityProtocol {
        var protocolID: String { NoiseSecurity.protocolID }
        func makeHandshake(role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]) throws
            -> any SecurityHandshake
        {
            try NoiseSecurity().makeHandshake(role: role, localKey: localKey, expectedRemotePeer: expectedRemotePeer, muxers: [])
        }
    }

    struct Outcome {
        var initiator: ConnectionUpgrade.Upgraded
        var responder: ConnectionUpgrade.Upgraded
        /// Bytes that crossed in each direction.
        var bytesToResponder = 0
        var bytesToInitiator = 0
    }

    /// Runs both machines, delivering `step` bytes at a time.
    func run(_ a: inout ConnectionUpgrade, _ b: inout ConnectionUpgrade, step: Int = .max) throws -> Outcome {
        var toB = ByteBuffer()
        var toA = ByteBuffer()
        a.start(output: &toB)
        b.start(output: &toA)
        var resultA: ConnectionUpgrade.Upgraded?
        var resultB: ConnectionUpgrade.Upgraded?
        var sentToB = 0
        var sentToA = 0
        for _ in 0..<100_000 where resultA == nil || resultB == nil {
            if toB.readableBytes > 0 {
                var chunk = toB.readSlice(length: min(step, toB.readableBytes))!
                sentToB += chunk.readableBytes
                if let done = try b.receive(&chunk, output: &toA) { resultB = done }
            }
            if toA.readableBytes > 0 {
                var chunk = toA.readSlice(length: min(step, toA.readableBytes))!
                sentToA += chunk.readableBytes
                if let done = try a.receive(&chunk, output: &toB) { resultA = done }
            }
            if toA.readableBytes == 0 && toB.readableBytes == 0 { break }
        }
        let aInitiates = a.securityRole == .initiator
        let initiator = try XCTUnwrap(aInitiates ? resultA : resultB, "initiator did not finish")
        let responder = try XCTUnwrap(aInitiates ? resultB : resultA, "responder did not finish")
        return Outcome(
            initiator: initiator, responder: responder,
            bytesToResponder: aInitiates ? sentToB : sentToA,
            bytesToInitiator: aInitiates ? sentToA : sentToB)
    }

    func machine(
        _ role: UpgradeRole, key: PrivateKey, expecting peer: PeerID? = nil,
        security: [any SecurityProtocol] = [NoiseSecurity()], muxers: [String]? = nil
    ) -> ConnectionUpgrade {
        ConnectionUpgrade(
            role: role, localKey: key, expectedRemotePeer: peer, security: security, muxers: muxers ?? [yamux])
    }

    /// Upgrades over `security` at each fragmentation in `steps`: each side
    /// learns the other's peer id, and both listed Yamux in the security
    /// handshake, so no multistream round chooses the muxer.
    func assertEarlyMuxerNegotiation(over security: any SecurityProtocol, steps: [Int]) throws {
        let alice = PrivateKey.generateEd25519()
        let bob = PrivateKey.generateEd25519()
        for step in steps {
            var a = machine(.initiator, key: alice, expecting: PeerID(publicKey: bob.publicKey), security: [security])
            var b = machine(.responder, key: bob, security: [security])
            let outcome = try run(&a, &b, step: step)
            XCTAssertEqual(outcome.initiator.remotePeer, PeerID(publicKey: bob.publicKey))
            XCTAssertEqual(outcome.responder.remotePeer, PeerID(publicKey: alice.publicKey))
            XCTAssertEqual(outcome.initiator.securityProtocol, security.protocolID)
            XCTAssertEqual(outcome.initiator.muxer, yamux)
            XCTAssertEqual(outcome.responder.muxer, yamux)
            XCTAssertTrue(outcome.initiator.earlyMuxerNegotiation)
            XCTAssertTrue(outcome.responder.earlyMuxerNegotiation)
        }
    }

    /// The responder (over `remote`) lists no muxer in the security handshake:
    /// multistream chooses Yamux after it.
    func assertMultistreamChoosesTheMuxer(local: any SecurityProtocol, remote: any SecurityProtocol) throws {
        var a = machine(.initiator, key: .generateEd25519(), security: [local])
        var b = machine(.responder, key: .generateEd25519(), security: [remote])
        let outcome = try run(&a, &b)
        XCTAssertFalse(outcome.initiator.earlyMuxerNegotiation)
        XCTAssertFalse(outcome.responder.earlyMuxerNegotiation)
        XCTAssertEqual(outcome.initiator.muxer, yamux)
        XCTAssertEqual(outcome.responder.muxer, yamux)
    }

    func testNoiseWithEarlyMuxerNegotiationAtEveryFragmentation() throws {
        XCTAssertEqual(NoiseSecurity().protocolID, "/noise")
        try assertEarlyMuxerNegotiation(over: NoiseSecurity(), steps: [1, 3, 64, .max])
    }

    func testMultistreamChoosesTheMuxerWhenTheRemoteListsNone() throws {
        try assertMultistreamChoosesTheMuxer(local: NoiseSecurity(), remote: NoiseWithoutExtensions())
    }

    func testEarlyNegotiationSavesBytesAndARoundTrip() throws {
        var early1 = machine(.initiator, key: .generateEd25519())
        var early2 = machine(.responder, key: .generateEd25519())
        let early = try run(&early1, &early2)
        var late1 = machine(.initiator, key: .generateEd25519(), security: [NoiseWithoutExtensions()])
        var late2 = machine(.responder, key: .generateEd25519(), security: [NoiseWithoutExtensions()])
        let late = try run(&late1, &late2)
        // The multistream round for the muxer is two sealed Noise frames each way.
        XCTAssertLessThan(early.bytesToInitiator, late.bytesToInitiator)
    }

    /// The role is an input: the side that accepted the byte stream can initiate (DCUtR).
    func testRolesAreInputsNotDirections() throws {
        let alice = PrivateKey.generateEd25519()
        let bob = PrivateKey.generateEd25519()
        // The first machine `run` drives responds; nothing ties the role to who spoke first.
        var b = machine(.responder, key: bob)
        var a = machine(.initiator, key: alice, expecting: PeerID(publicKey: bob.publicKey))
        let outcome = try run(&b, &a)
        XCTAssertEqual(outcome.initiator.remotePeer, PeerID(publicKey: bob.publicKey))
        XCTAssertEqual(outcome.responder.remotePeer, PeerID(publicKey: alice.publicKey))
    }

    /// Both ends dialled (a hole punch met in one TCP connection): with the
    /// simultaneous-open extension the nonces pick the roles, whichever
    /// security protocol, and the muxer follows the handshake's roles.
    func testSimultaneousOpenOnBothEndsDecidesTheRoles() throws {
        for security in [[NoiseSecurity()], [TLSSecurity()], [NoiseWithoutExtensions()]] as [[any SecurityProtocol]] {
            for step in [1, 7, .max] {
                let alice = PrivateKey.generateEd25519()
                let bob = PrivateKey.generateEd25519()
                var a = ConnectionUpgrade(
                    role: .simultaneousOpen, localKey: alice, expectedRemotePeer: PeerID(publicKey: bob.publicKey),
                    security: security, muxers: [yamux], nonce: 1)
                var b = ConnectionUpgrade(
                    role: .simultaneousOpen, localKey: bob, expectedRemotePeer: PeerID(publicKey: alice.publicKey),
                    security: security, muxers: [yamux], nonce: 2)
                let outcome = try run(&a, &b, step: step)
                // The smaller nonce listens (go-multistream's rule): alice responds.
                XCTAssertEqual(a.securityRole, .responder)
                XCTAssertEqual(b.securityRole, .initiator)
                XCTAssertEqual(outcome.initiator.role, .initiator)
                XCTAssertEqual(outcome.responder.role, .responder)
                XCTAssertEqual(outcome.initiator.remotePeer, PeerID(publicKey: alice.publicKey))
                XCTAssertEqual(outcome.initiator.muxer, yamux)
                XCTAssertEqual(outcome.responder.muxer, yamux)
            }
        }
    }

    /// A simultaneous-open dialler meets a listener (a spec-following DCUtR peer) as an initiator.
    func testSimultaneousOpenAgainstAListener() throws {
        let bob = PrivateKey.generateEd25519()
        var a = machine(.simultaneousOpen, key: .generateEd25519(), expecting: PeerID(publicKey: bob.publicKey))
        var b = machine(.responder, key: bob)
        let outcome = try run(&a, &b, step: 5)
        XCTAssertEqual(a.securityRole, .initiator)
        XCTAssertEqual(outcome.responder.role, .responder)
        XCTAssertEqual(outcome.initiator.remotePeer, PeerID(publicKey: bob.publicKey))
    }

    func testSecurityIsChosenFromTheList() throws {
        var a = machine(.initiator, key: .generateEd25519(), security: [UnknownSecurity(), NoiseSecurity()])
        var b = machine(.responder, key: .generateEd25519(), security: [NoiseSecurity()])
        let outcome = try run(&a, &b)
        XCTAssertEqual(outcome.initiator.securityProtocol, "/noise")
        XCTAssertEqual(outcome.responder.securityProtocol, "/noise")
    }

    func testNoCommonSecurityFailsWithTheNegotiationError() throws {
        var a = machine(.initiator, key: .generateEd25519(), security: [UnknownSecurity()])
        var b = machine(.responder, key: .generateEd25519(), security: [NoiseSecurity()])
        XCTAssertThrowsError(try run(&a, &b)) { error in
            guard case .negotiationFailed(let phase, let underlying) = error as? TransportError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(phase, "security")
            guard case .protocolsNotSupported = underlying as? MultistreamError else {
                return XCTFail("unexpected cause \(underlying)")
            }
        }
    }

    func testPeerIDMismatchIsItsOwnError() throws {
        let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let bob = PrivateKey.generateEd25519()
        var a = machine(.initiator, key: .generateEd25519(), expecting: impostor)
        var b = machine(.responder, key: bob)
        XCTAssertThrowsError(try run(&a, &b)) { error in
            guard case .peerIDMismatch(let expected, let actual) = error as? TransportError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertEqual(expected, impostor)
            XCTAssertEqual(actual, PeerID(publicKey: bob.publicKey))
        }
    }

    func testGarbageInEveryPhaseFailsWithItsCause() throws {
        // In security negotiation.
        var responder = machine(.responder, key: .generateEd25519())
        var output = ByteBuffer()
        responder.start(output: &output)
        var garbage = ByteBuffer(bytes: [0x05] + Array("hello".utf8))
        XCTAssertThrowsError(try responder.receive(&garbage, output: &output)) { error in
            guard case .negotiationFailed("security", _) = error as? TransportError else {
                return XCTFail("unexpected \(error)")
            }
        }
        // In the handshake: agree on Noise, then send a frame of noise.
        var a = machine(.initiator, key: .generateEd25519())
        var b = machine(.responder, key: .generateEd25519())
        var toB = ByteBuffer()
        var toA = ByteBuffer()
        a.start(output: &toB)
        b.start(output: &toA)
        _ = try b.receive(&toB, output: &toA)
        XCTAssertTrue(b.phase.contains("handshake"), b.phase)
        var frame = ByteBuffer(bytes: [0x00, 0x10] + [UInt8](repeating: 7, count: 16))
        XCTAssertThrowsError(try b.receive(&frame, output: &toA)) { error in
            guard case .securityFailed("/noise", let cause) = error as? TransportError else {
                return XCTFail("unexpected \(error)")
            }
            XCTAssertTrue(cause is NoiseError, "\(cause)")
        }
    }

    func testRandomInputNeverCrashes() throws {
        var generator = SplitMix(seed: 34)
        for round in 0..<300 {
            var m = machine(round % 2 == 0 ? .responder : .initiator, key: .generateEd25519())
            var output = ByteBuffer()
            m.start(output: &output)
            let count = Int.random(in: 0...300, using: &generator)
            var input = ByteBuffer(bytes: (0..<count).map { _ in UInt8.random(in: 0...255, using: &generator) })
            // Either waits for more, or fails with a typed error; never crashes.
            do {
                _ = try m.receive(&input, output: &output)
            } catch {
                XCTAssertNotNil(error as TransportError?)
            }
        }
    }
}
