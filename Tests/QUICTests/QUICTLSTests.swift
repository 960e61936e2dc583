import Identity
import TLS
import TestKit
import XCTest

@testable import QUIC

/// Two QUICTLS machines driven against each other in memory: the handshake
/// of RFC 9001 with libp2p's certificates, ALPN and transport parameters.
final class QUICTLSTests: XCTestCase {
    struct Endpoint {
        let identity = PrivateKey.generateEd25519()
        var peerID: PeerID { PeerID(publicKey: identity.publicKey) }

        func configuration(
            parameters: TransportParameters, protocols: [String] = ["libp2p"], verifyPeer: (@Sendable ([[UInt8]]) -> Bool)? = nil
        ) throws -> QUICTLSConfiguration {
            let certificate = try LibP2PCertificate.generate(identity: identity)
            return QUICTLSConfiguration(
                certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, applicationProtocols: protocols,
                transportParameters: parameters.encoded(),
                verifyPeer: verifyPeer ?? { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: nil)) != nil })
        }
    }

    /// What one side was told, event by event.
    struct Record {
        var readSecrets: [EncryptionLevel: (CipherSuite, [UInt8])] = [:]
        var writeSecrets: [EncryptionLevel: (CipherSuite, [UInt8])] = [:]
        var sent: [(EncryptionLevel, [UInt8])] = []
        var complete = false

        mutating func note(_ events: [QUICTLSEvent]) {
            for event in events {
                switch event {
                case .readSecret(let level, let suite, let secret): readSecrets[level] = (suite, secret)
                case .writeSecret(let level, let suite, let secret): writeSecrets[level] = (suite, secret)
                case .send(let level, let bytes): sent.append((level, bytes))
                case .handshakeComplete: complete = true
                }
            }
        }
    }

    /// Delivers each side's CRYPTO data to the other until neither has more; returns the records.
    func run(_ client: inout QUICTLS, _ server: inout QUICTLS) throws -> (client: Record, server: Record) {
        var clientRecord = Record()
        var serverRecord = Record()
        clientRecord.note(try client.start())
        serverRecord.note(try server.start())
        var toServer = clientRecord.sent
        var toClient: [(EncryptionLevel, [UInt8])] = serverRecord.sent
        var rounds = 0
        while !toServer.isEmpty || !toClient.isEmpty {
            rounds += 1
            guard rounds < 10 else { XCTFail("handshake does not converge"); break }
            for (level, bytes) in toServer {
                let before = serverRecord.sent.count
                serverRecord.note(try server.receive(bytes, at: level))
                toClient += serverRecord.sent[before...]
            }
            toServer = []
            for (level, bytes) in toClient {
                let before = clientRecord.sent.count
                clientRecord.note(try client.receive(bytes, at: level))
                toServer += clientRecord.sent[before...]
            }
            toClient = []
        }
        return (clientRecord, serverRecord)
    }

    func testClientAndServerCompleteTheHandshake() throws {
        let alice = Endpoint()
        let bob = Endpoint()
        var clientParameters = TransportParameters()
        clientParameters.initialSourceConnectionID = ConnectionID.random()
        clientParameters.initialMaxData = 1 << 20
        var serverParameters = TransportParameters()
        serverParameters.initialSourceConnectionID = ConnectionID.random()
        serverParameters.originalDestinationConnectionID = ConnectionID.random()
        serverParameters.initialMaxStreamsBidi = 100
        var client = try QUICTLS(role: .client, configuration: alice.configuration(parameters: clientParameters))
        var server = try QUICTLS(role: .server, configuration: bob.configuration(parameters: serverParameters))
        let (clientRecord, serverRecord) = try run(&client, &server)

        XCTAssertTrue(clientRecord.complete)
        XCTAssertTrue(serverRecord.complete)
        XCTAssertTrue(client.isHandshakeComplete && server.isHandshakeComplete)
        // The client's first flight is its ClientHello at Initial; the server answers at Initial and Handshake.
        XCTAssertEqual(clientRecord.sent.first?.0, .initial)
        XCTAssertEqual(serverRecord.sent.map(\.0), [.initial, .handshake])
        XCTAssertEqual(clientRecord.sent.last?.0, .handshake)  // client Certificate, CertificateVerify, Finished

        XCTAssertEqual(client.applicationProtocol, "libp2p")
        XCTAssertEqual(server.applicationProtocol, "libp2p")
        XCTAssertEqual(try TransportParameters(decoding: XCTUnwrap(client.peerTransportParameters), fromServer: true), serverParameters)
        XCTAssertEqual(try TransportParameters(decoding: XCTUnwrap(server.peerTransportParameters), fromServer: false), clientParameters)

        // Each side's write secret is the other's read secret, for Handshake and 1-RTT.
        for level in [EncryptionLevel.handshake, .oneRTT] {
            let clientWrite = try XCTUnwrap(clientRecord.writeSecrets[level], "\(level)")
            let serverRead = try XCTUnwrap(serverRecord.readSecrets[level], "\(level)")
            XCTAssertEqual(clientWrite.0, serverRead.0)
            XCTAssertEqual(clientWrite.1, serverRead.1)
            let serverWrite = try XCTUnwrap(serverRecord.writeSecrets[level])
            XCTAssertEqual(serverWrite.1, try XCTUnwrap(clientRecord.readSecrets[level]).1)
            XCTAssertNotEqual(clientWrite.1, serverWrite.1)
            // Keys made from them protect packets the other side opens.
            let sealing = try PacketKeys(secret: clientWrite.1, suite: clientWrite.0)
            let opening = try PacketKeys(secret: serverRead.1, suite: serverRead.0)
            let packet = PacketProtection.seal(ShortHeader(destination: .empty), packetNumber: 3, largestAcked: nil, keyPhase: false, payload: [1, 1, 1, 1], keys: sealing)
            XCTAssertEqual(try PacketProtection.open(try PacketParser.parse(packet[...], shortHeaderCIDLength: 0), keys: opening, largestReceived: 2).payload, [1, 1, 1, 1])
        }
        XCTAssertNil(clientRecord.writeSecrets[.initial], "Initial keys come from the connection ID, not TLS")

        // Each side saw the other's libp2p certificate and it proves the other's peer ID.
        XCTAssertEqual(try LibP2PCertificate.verify(chain: server.peerCertificates, expectedPeer: nil).peerID, alice.peerID)
        XCTAssertEqual(try LibP2PCertificate.verify(chain: client.peerCertificates, expectedPeer: nil).peerID, bob.peerID)
    }

    func testServerWithoutACommonProtocolRefuses() throws {
        var client = try QUICTLS(role: .client, configuration: Endpoint().configuration(parameters: .defaultLimits))
        var server = try QUICTLS(role: .server, configuration: Endpoint().configuration(parameters: .defaultLimits, protocols: ["other"]))
        XCTAssertThrowsError(try run(&client, &server)) { error in
            guard case .handshakeFailed(let alert, _)? = error as? QUICTLSError else { return XCTFail("\(error)") }
            XCTAssertEqual(alert, 120)  // no_application_protocol
            XCTAssertEqual((error as? QUICTLSError)?.transportError, .cryptoError(alert: 120))
        }
    }

    func testRejectedCertificateFailsTheHandshake() throws {
        var client = try QUICTLS(
            role: .client, configuration: Endpoint().configuration(parameters: .defaultLimits, verifyPeer: { _ in false }))
        var server = try QUICTLS(role: .server, configuration: Endpoint().configuration(parameters: .defaultLimits))
        XCTAssertThrowsError(try run(&client, &server)) { error in
            XCTAssertEqual(error as? QUICTLSError, .peerCertificateRejected)
        }
        // And a server refusing the client's certificate.
        client = try QUICTLS(role: .client, configuration: Endpoint().configuration(parameters: .defaultLimits))
        server = try QUICTLS(role: .server, configuration: Endpoint().configuration(parameters: .defaultLimits, verifyPeer: { _ in false }))
        XCTAssertThrowsError(try run(&client, &server)) { error in
            XCTAssertEqual(error as? QUICTLSError, .peerCertificateRejected)
        }
    }

    func testGarbageAndMisplacedCryptoDataAreErrors() throws {
        var server = try QUICTLS(role: .server, configuration: Endpoint().configuration(parameters: .defaultLimits))
        XCTAssertEqual(try server.start(), [])
        // Handshake-level data before the server has Handshake read keys.
        XCTAssertThrowsError(try server.receive([1, 0, 0, 1, 0], at: .handshake)) { error in
            guard case .unexpectedData(.handshake, _)? = error as? QUICTLSError else { return XCTFail("\(error)") }
        }
        var other = try QUICTLS(role: .server, configuration: Endpoint().configuration(parameters: .defaultLimits))
        // A ClientHello of four bytes of nonsense.
        XCTAssertThrowsError(try other.receive([0x01, 0x00, 0x00, 0x04, 1, 2, 3, 4], at: .initial)) { error in
            guard case .handshakeFailed? = error as? QUICTLSError else { return XCTFail("\(error)") }
        }
        do {
            _ = try QUICTLS(role: .client, configuration: QUICTLSConfiguration(
                certificateDER: [1, 2, 3], privateKeyDER: [4, 5, 6], transportParameters: [1, 1, 0], verifyPeer: { _ in true }))
            XCTFail("a garbage certificate was accepted")
        } catch {
            guard case .setupFailed = error else { return XCTFail("\(error)") }
        }
    }

    func testRandomCryptoDataNeverTraps() throws {
        var generator = SplitMix(seed: 6)
        let configuration = try Endpoint().configuration(parameters: .defaultLimits)
        for _ in 0..<200 {
            var server = try QUICTLS(role: .server, configuration: configuration)
            var bytes = generator.bytes(Int.random(in: 0..<400, using: &generator))
            if !bytes.isEmpty { bytes[0] = 1 }  // a ClientHello's type, so parsing goes further
            _ = try? server.receive(bytes, at: .initial)
        }
    }
}
