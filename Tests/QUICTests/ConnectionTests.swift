import Identity
import TLS
import TestKit
import XCTest

@testable import QUIC

/// Two QUICConnections run against each other in memory: datagrams are
/// handed across, time moves only when both sides are idle and a deadline waits.
final class ConnectionTests: XCTestCase {
    static func configuration(identity: PrivateKey = .generateEd25519()) throws -> QUICConnection.Configuration {
        let certificate = try LibP2PCertificate.generate(identity: identity)
        let tls = QUICTLSConfiguration(
            certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, transportParameters: [],
            verifyPeer: { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: nil)) != nil })
        return QUICConnection.Configuration(tls: tls)
    }

    struct Stats {
        var clientDatagrams: [Int] = []
        var serverDatagrams: [Int] = []
        var timeouts = 0
        var clientEvents: [QUICConnectionEvent] = []
        var serverEvents: [QUICConnectionEvent] = []
    }

    /// Runs both until `done` or nothing moves. `drop` may discard a datagram
    /// (by direction and index) to exercise loss. The server echoes every
    /// stream's bytes back on the same stream, FIN included.
    func run(
        _ client: inout QUICConnection, _ server: inout QUICConnection, maxSteps: Int = 10_000,
        drop: (_ fromClient: Bool, _ index: Int, _ datagram: inout [UInt8]) -> Bool = { _, _, _ in false },
        onClientEvent: (QUICConnectionEvent, inout QUICConnection) -> Void = { _, _ in },
        done: (Stats) -> Bool
    ) -> Stats {
        var stats = Stats()
        var now = ContinuousClock.now
        for _ in 0..<maxSteps {
            let fromClient = client.send(now: now)
            for var datagram in fromClient {
                defer { stats.clientDatagrams.append(datagram.count) }
                if drop(true, stats.clientDatagrams.count, &datagram) { continue }
                server.receive(datagram: datagram, now: now)
            }
            for event in server.takeEvents() {
                stats.serverEvents.append(event)
                if case .streamData(let id, let data, let fin) = event {
                    XCTAssertNoThrow(try server.write(data, to: id, fin: fin))
                    server.consumed(streamID: id, bytes: data.count)
                }
            }
            let fromServer = server.send(now: now)
            for var datagram in fromServer {
                defer { stats.serverDatagrams.append(datagram.count) }
                if drop(false, stats.serverDatagrams.count, &datagram) { continue }
                client.receive(datagram: datagram, now: now)
            }
            for event in client.takeEvents() {
                stats.clientEvents.append(event)
                if case .streamData(let id, let data, _) = event { client.consumed(streamID: id, bytes: data.count) }
                onClientEvent(event, &client)
            }
            if done(stats) { return stats }
            if fromClient.isEmpty, fromServer.isEmpty {
                let deadlines = [client.nextDeadline, server.nextDeadline].compactMap { $0 }
                guard let next = deadlines.min() else { return stats }
                now = max(now, next)
                stats.timeouts += 1
                client.handleTimeout(now: now)
                server.handleTimeout(now: now)
            }
        }
        XCTFail("no end after \(maxSteps) steps")
        return stats
    }

    /// Exchanges what both have to send, without moving time, until neither has more (the last ACKs cross).
    func settle(_ client: inout QUICConnection, _ server: inout QUICConnection, now: ContinuousClock.Instant = .now) {
        for _ in 0..<20 {
            let toServer = client.send(now: now)
            for datagram in toServer { server.receive(datagram: datagram, now: now) }
            let toClient = server.send(now: now)
            for datagram in toClient { client.receive(datagram: datagram, now: now) }
            if toServer.isEmpty && toClient.isEmpty { return }
        }
    }

    static func echoed(_ stats: Stats, streamID: UInt64 = 0) -> [UInt8]? {
        var bytes: [UInt8] = []
        for case .streamData(let id, let data, let fin) in stats.clientEvents where id == streamID {
            bytes += data
            if fin { return bytes }
        }
        return nil
    }

    /// Opens stream 0 on `.connected` and writes `message` with FIN.
    static func writer(_ message: [UInt8]) -> (QUICConnectionEvent, inout QUICConnection) -> Void {
        { event, client in
            guard event == .connected else { return }
            do {
                let id = try client.openStream()
                XCTAssertEqual(id, 0)
                try client.write(message, to: id, fin: true)
            } catch {
                XCTFail("\(error)")
            }
        }
    }

    func testHandshakeThenAStreamEchoes() throws {
        let serverIdentity = PrivateKey.generateEd25519()
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration(identity: serverIdentity))
        let message = Array("hello over quic".utf8)
        let stats = run(&client, &server, onClientEvent: Self.writer(message)) { Self.echoed($0) != nil }

        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertEqual(stats.timeouts, 0, "nothing was lost, so no timer fired")
        XCTAssertTrue(client.isConnected && server.isConnected)
        XCTAssertEqual(stats.serverEvents.first, .connected)
        XCTAssertEqual(client.applicationProtocol, "libp2p")
        XCTAssertEqual(try LibP2PCertificate.verify(chain: client.peerCertificates, expectedPeer: nil).peerID, PeerID(publicKey: serverIdentity.publicKey))
        // The client's first datagram carries its Initial padded to 1200 bytes (RFC 9000 §14.1),
        // and the server stayed within 3× what it had received before the client's Handshake packet.
        XCTAssertEqual(stats.clientDatagrams.first, 1200)
        XCTAssertLessThanOrEqual(stats.serverDatagrams.prefix(3).reduce(0, +), 3 * 1200)
        XCTAssertTrue(stats.clientDatagrams.allSatisfy { $0 <= 1200 } && stats.serverDatagrams.allSatisfy { $0 <= 1200 })
        // After HANDSHAKE_DONE both sides are down to 1-RTT keys only.
        XCTAssertTrue(client.spaces[0].discarded && client.spaces[1].discarded)
        XCTAssertTrue(server.spaces[0].discarded && server.spaces[1].discarded)
        print("echo: client sent \(stats.clientDatagrams.count) datagrams (\(stats.clientDatagrams.reduce(0, +)) bytes), server \(stats.serverDatagrams.count) (\(stats.serverDatagrams.reduce(0, +)) bytes)")
    }

    /// A server with a reset key gives the token of its connection ID; the
    /// client matches a reset to it and ends at once, sending nothing more.
    func testAStatelessResetEndsTheClientsConnection() throws {
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        var serverConfiguration = try Self.configuration()
        serverConfiguration.statelessResetKey = key
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: serverConfiguration)
        _ = run(&client, &server) { $0.clientEvents.contains(.connected) && $0.serverEvents.contains(.connected) }
        settle(&client, &server)
        let token = StatelessReset.token(for: server.localConnectionID, key: key)
        XCTAssertEqual(client.peerStatelessResetToken, token)
        XCTAssertNil(server.peerStatelessResetToken, "a client gives no token in its parameters")
        // What a restarted server would send: a reset answering a 1-RTT packet.
        let reset = try XCTUnwrap(StatelessReset.packet(token: token, answering: 60))
        XCTAssertEqual(StatelessReset.candidateToken(reset).map(Array.init), token)
        client.receiveStatelessReset()
        XCTAssertTrue(client.isClosed)
        XCTAssertEqual(client.takeEvents().last, .closed(.statelessReset))
        XCTAssertTrue(client.send(now: .now).isEmpty, "a reset connection sends nothing, not even CONNECTION_CLOSE")
    }

    /// Tokens follow the key and the ID; resets are shorter than what they
    /// answer (no loop between two endpoints), look like short-header
    /// packets, and a trigger too small gets none.
    func testStatelessResetPacketsAndTokens() throws {
        let key = (0..<32).map { _ in UInt8.random(in: 0...255) }
        let id = try ConnectionID(Array(1...8))
        XCTAssertEqual(StatelessReset.token(for: id, key: key), StatelessReset.token(for: id, key: key))
        XCTAssertNotEqual(StatelessReset.token(for: id, key: key), StatelessReset.token(for: id, key: (0..<32).map { _ in UInt8.random(in: 0...255) }))
        XCTAssertNotEqual(StatelessReset.token(for: id, key: key), StatelessReset.token(for: try ConnectionID(Array(2...9)), key: key))
        let token = StatelessReset.token(for: id, key: key)
        for size in [22, 30, 43, 44, 100, 1200] {
            let reset = try XCTUnwrap(StatelessReset.packet(token: token, answering: size), "\(size)")
            XCTAssertLessThan(reset.count, size)
            XCTAssertGreaterThanOrEqual(reset.count, StatelessReset.minimumSize)
            XCTAssertLessThanOrEqual(reset.count, 43)
            XCTAssertEqual(reset[0] & 0xC0, 0x40)
            XCTAssertEqual(Array(reset.suffix(16)), token)
        }
        XCTAssertNil(StatelessReset.packet(token: token, answering: 21))
        XCTAssertNil(StatelessReset.packet(token: token, answering: 0))
        XCTAssertNil(StatelessReset.candidateToken(Array(repeating: 0x40, count: 20)))
        XCTAssertNil(StatelessReset.candidateToken([0xC0] + Array(repeating: 0, count: 40)), "a long header is no reset")
    }

    func testLargeEchoCrossesFlowControlWindows() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        // 600 KiB: more than the 256 KiB stream window, so MAX_STREAM_DATA must widen it.
        var generator = SplitMix(seed: 7)
        let message = generator.bytes(600 * 1024)
        let started = ContinuousClock.now
        let stats = run(&client, &server, onClientEvent: Self.writer(message)) { Self.echoed($0) != nil }
        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertEqual(stats.timeouts, 0)
        print("600 KiB echo: \(stats.clientDatagrams.count) + \(stats.serverDatagrams.count) datagrams in \(ContinuousClock.now - started)")
    }

    func testLostServerFlightIsResentAfterTheProbeTimeout() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        let message = Array("after a loss".utf8)
        // The server's first datagram (Initial with the ServerHello) never arrives.
        let stats = run(&client, &server, drop: { fromClient, index, _ in !fromClient && index == 0 }, onClientEvent: Self.writer(message)) {
            Self.echoed($0) != nil
        }
        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertGreaterThanOrEqual(stats.timeouts, 1)
    }

    /// Each datagram of the handshake lost in turn, either way: the probe
    /// timer resends (or, for a client whose server is held by the
    /// anti-amplification limit, probes) until the echo gets through.
    func testAnyLostHandshakeDatagramIsRecovered() throws {
        for fromClient in [true, false] {
            for lost in 0..<4 {
                var client = try QUICConnection(client: Self.configuration())
                var server = try QUICConnection(server: Self.configuration())
                let message = Array("lost \(fromClient ? "client" : "server") datagram \(lost)".utf8)
                let stats = run(&client, &server, drop: { side, index, _ in side == fromClient && index == lost }, onClientEvent: Self.writer(message)) {
                    Self.echoed($0) != nil
                }
                XCTAssertEqual(Self.echoed(stats), message, "\(fromClient ? "client" : "server") datagram \(lost) lost")
                XCTAssertFalse(client.isClosed || server.isClosed)
            }
        }
    }

    func testDamagedDatagramsAreDroppedAndRecovered() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        let message = Array("through noise".utf8)
        // Every third datagram each way has a byte flipped: AEAD refuses it, the probe timer resends.
        let stats = run(
            &client, &server,
            drop: { _, index, datagram in
                if index % 3 == 1 { datagram[datagram.count / 2] ^= 0x40 }
                return false
            }, onClientEvent: Self.writer(message)
        ) { Self.echoed($0) != nil }
        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertFalse(client.isClosed || server.isClosed)
    }

    func testApplicationCloseReachesThePeer() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        // Closed after the echo, when the handshake is confirmed: the close goes in a 1-RTT packet only.
        let writer = Self.writer(Array("then close".utf8))
        let stats = run(&client, &server, onClientEvent: { event, client in
            writer(event, &client)
            if case .streamData(_, _, true) = event { client.close(code: 7, reason: "bye") }
        }) { stats in stats.serverEvents.contains { if case .closed = $0 { true } else { false } } }
        XCTAssertEqual(stats.serverEvents.last, .closed(.peer(.application(code: 7, reason: Array("bye".utf8)))))
        XCTAssertEqual(stats.clientEvents.last, .closed(.application(code: 7, reason: "bye")))
        XCTAssertTrue(client.isClosed && server.isClosed)
    }

    func testUnverifiedServerFailsTheHandshake() throws {
        var configuration = try Self.configuration()
        configuration.tls.verifyPeer = { _ in false }
        var client = try QUICConnection(client: configuration)
        var server = try QUICConnection(server: Self.configuration())
        let stats = run(&client, &server) { stats in stats.serverEvents.contains { if case .closed = $0 { true } else { false } } }
        XCTAssertEqual(stats.clientEvents.last, .closed(.tls(.peerCertificateRejected)))
        // The client's CONNECTION_CLOSE carries CRYPTO_ERROR with bad_certificate.
        guard case .closed(.peer(.transport(let code, _, _)))? = stats.serverEvents.last else { return XCTFail("\(stats.serverEvents)") }
        XCTAssertEqual(code, .cryptoError(alert: 42))
    }

    /// A listener answered the client's first Initial with a Retry (made here
    /// by hand); the client starts over toward the Retry's ID with the token,
    /// and the server created after it names both IDs in its parameters.
    func testHandshakeAfterARetry() throws {
        var client = try QUICConnection(client: Self.configuration())
        let now = ContinuousClock.now
        // BoringSSL's ClientHello (with a post-quantum key share) may take more than one datagram.
        let firstFlight = client.send(now: now)
        let first = try XCTUnwrap(firstFlight.first)
        guard case .long(let initial) = try PacketParser.parse(first[...], shortHeaderCIDLength: 8).header else { return XCTFail("not an Initial") }
        let retrySource = ConnectionID.random()
        let token = Array("address-validation-token".utf8)
        let retry = RetryIntegrity.seal(
            RetryPacket(destination: initial.source, source: retrySource, token: token, integrityTag: []), originalDestination: initial.destination)
        // A Retry with a damaged tag is ignored.
        var damaged = retry
        damaged[damaged.count - 1] ^= 1
        client.receive(datagram: damaged, now: now)
        XCTAssertEqual(client.send(now: now), [])
        client.receive(datagram: retry, now: now)
        let secondFlight = client.send(now: now)
        XCTAssertEqual(secondFlight.count, firstFlight.count)
        let second = try XCTUnwrap(secondFlight.first)
        XCTAssertEqual(second.count, 1200)
        let packet = try PacketParser.parse(second[...], shortHeaderCIDLength: 8)
        guard case .long(let again) = packet.header else { return XCTFail("not an Initial") }
        XCTAssertEqual(again.destination, retrySource)
        XCTAssertEqual(again.token, token)
        // Under Initial keys of the new ID, and with a packet number after the first one.
        let opened = try PacketProtection.open(packet, keys: InitialSecrets.keys(destination: retrySource).client, largestReceived: nil)
        XCTAssertEqual(opened.packetNumber, UInt64(firstFlight.count))

        var server = try QUICConnection(
            server: Self.configuration(), afterRetry: .init(originalDestination: initial.destination, retrySource: retrySource))
        for datagram in secondFlight { server.receive(datagram: datagram, now: now) }
        let message = Array("after retry".utf8)
        let stats = run(&client, &server, onClientEvent: Self.writer(message)) { Self.echoed($0) != nil }
        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertEqual(client.peerTransportParameters?.retrySourceConnectionID, retrySource)
        XCTAssertEqual(client.peerTransportParameters?.originalDestinationConnectionID, initial.destination)
        // A server made after a Retry still drops its Initial keys at the client's first Handshake packet.
        XCTAssertTrue(server.spaces[0].discarded && server.spaces[1].discarded)
    }

    func testAClientClosingDuringTheHandshakePadsItsInitial() throws {
        var client = try QUICConnection(client: Self.configuration())
        _ = client.send(now: .now)
        client.close(code: 3, reason: "changed my mind")
        let datagrams = client.send(now: .now)
        XCTAssertEqual(datagrams.map(\.count), [1200])
        XCTAssertEqual(client.takeEvents(), [.closed(.application(code: 3, reason: "changed my mind"))])
        // A server sees a transport CONNECTION_CLOSE with APPLICATION_ERROR in the Initial (§10.2.3).
        let packet = try PacketParser.parse(datagrams[0][...], shortHeaderCIDLength: 8)
        guard case .long(let header) = packet.header else { return XCTFail("not an Initial") }
        let opened = try PacketProtection.open(packet, keys: InitialSecrets.keys(destination: header.destination).client, largestReceived: nil)
        XCTAssertEqual(try Frame.decodeAll(opened.payload).first, .connectionClose(.transport(code: .applicationError, frameType: 0, reason: [])))
    }

    func testVersionNegotiationWithoutOurVersionEndsTheAttempt() throws {
        var client = try QUICConnection(client: Self.configuration())
        let now = ContinuousClock.now
        let first = try XCTUnwrap(client.send(now: now).first)
        guard case .long(let initial) = try PacketParser.parse(first[...], shortHeaderCIDLength: 8).header else { return XCTFail("not an Initial") }
        // One that lists version 1 is ignored (§6.2); one that does not ends the attempt.
        let listing = VersionNegotiationPacket(destination: initial.source.bytes, source: initial.destination.bytes, versions: [0x6b33_43cf, 1])
        client.receive(datagram: listing.encoded(), now: now)
        XCTAssertFalse(client.isClosed)
        let refusing = VersionNegotiationPacket(destination: initial.source.bytes, source: initial.destination.bytes, versions: [0x6b33_43cf])
        client.receive(datagram: refusing.encoded(), now: now)
        XCTAssertTrue(client.isClosed)
        XCTAssertEqual(client.takeEvents(), [.closed(.noCommonVersion([0x6b33_43cf]))])
        XCTAssertNil(client.nextDeadline)
    }

    func testIdleConnectionsTimeOut() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        let start = ContinuousClock.now
        _ = run(&client, &server, onClientEvent: Self.writer([1, 2, 3])) { Self.echoed($0) != nil }
        // The last ACKs cross; then nothing is in flight and the idle deadline is what waits.
        for _ in 0..<10 {
            let toServer = client.send(now: start)
            for datagram in toServer { server.receive(datagram: datagram, now: start) }
            let toClient = server.send(now: start)
            for datagram in toClient { client.receive(datagram: datagram, now: start) }
            if toServer.isEmpty && toClient.isEmpty { break }
        }
        // Both offered 30 s.
        let deadline = try XCTUnwrap(client.nextDeadline)
        XCTAssertGreaterThanOrEqual(deadline, start + .seconds(29))
        client.handleTimeout(now: deadline - .seconds(1))
        XCTAssertFalse(client.isClosed)
        client.handleTimeout(now: deadline)
        XCTAssertTrue(client.isClosed)
        XCTAssertEqual(client.takeEvents().last, .closed(.idleTimeout))
        XCTAssertEqual(client.send(now: deadline), [], "an idle timeout closes silently")
    }

    /// A peer that goes silent: our own resends do not keep the idle timer
    /// running, so the connection ends at the idle timeout, long before the
    /// probe timeouts would give up.
    func testASilentPeerEndsAtTheIdleTimeout() throws {
        // Probes would give up after 8 timeouts (13 s at this loopback RTT); here only the idle timer may end it.
        var configuration = try Self.configuration()
        configuration.maxProbeTimeouts = 100
        var client = try QUICConnection(client: configuration)
        var server = try QUICConnection(server: Self.configuration())
        let settled = ContinuousClock.now
        _ = run(&client, &server, onClientEvent: Self.writer([1])) { Self.echoed($0) != nil }
        for _ in 0..<10 {
            let toServer = client.send(now: settled)
            for datagram in toServer { server.receive(datagram: datagram, now: settled) }
            let toClient = server.send(now: settled)
            for datagram in toClient { client.receive(datagram: datagram, now: settled) }
            if toServer.isEmpty && toClient.isEmpty { break }
        }
        let stream = try client.openStream()
        try client.write([1, 2, 3], to: stream)
        let start = ContinuousClock.now
        var now = start
        var sent = client.send(now: now).count  // all lost from here on
        while !client.isClosed, let deadline = client.nextDeadline {
            now = max(now, deadline)
            client.handleTimeout(now: now)
            sent += client.send(now: now).count
        }
        XCTAssertEqual(client.takeEvents().last, .closed(.idleTimeout))
        XCTAssertGreaterThan(sent, 2, "the data was probed for a while")
        let elapsed: Duration = now - start
        XCTAssertLessThan(elapsed, Duration.seconds(31))
    }

    /// Streams that end on both sides are forgotten, and each of the peer's
    /// gives it room for another (MAX_STREAMS): 12 streams in turn through a
    /// server that allows 3 at a time.
    func testEndedStreamsMakeRoomForMore() throws {
        var serverConfiguration = try Self.configuration()
        serverConfiguration.transportParameters.initialMaxStreamsBidi = 3
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: serverConfiguration)
        var now = ContinuousClock.now
        var current: UInt64?
        var opened: [UInt64] = []
        var echoed = 0
        for _ in 0..<2000 where echoed < 12 {
            if client.isConnected, current == nil, let id = try? client.openStream() {
                try client.write(Array("stream \(id)".utf8), to: id, fin: true)
                current = id
                opened.append(id)
            }
            let toServer = client.send(now: now)
            for datagram in toServer { server.receive(datagram: datagram, now: now) }
            for case .streamData(let id, let data, let fin) in server.takeEvents() {
                try server.write(data, to: id, fin: fin)
                server.consumed(streamID: id, bytes: data.count)
            }
            let toClient = server.send(now: now)
            for datagram in toClient { client.receive(datagram: datagram, now: now) }
            for case .streamData(let id, _, true) in client.takeEvents() where id == current {
                echoed += 1
                current = nil
            }
            if toServer.isEmpty, toClient.isEmpty, let deadline = [client.nextDeadline, server.nextDeadline].compactMap({ $0 }).min() {
                now = max(now, deadline)
                client.handleTimeout(now: now)
                server.handleTimeout(now: now)
            }
        }
        XCTAssertEqual(echoed, 12)
        XCTAssertEqual(opened, (0..<12).map { UInt64($0 * 4) })
        XCTAssertGreaterThanOrEqual(server.peerStreamsEnded, 11)
        XCTAssertLessThanOrEqual(server.streams.count, 1, "ended streams are forgotten")
        XCTAssertLessThanOrEqual(client.streams.count, 1)
    }

    /// STOP_SENDING is answered by RESET_STREAM with the same code (§3.5).
    func testStopSendingIsAnsweredWithAReset() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        let stats = run(&client, &server, onClientEvent: { event, client in
            switch event {
            case .connected:
                // The server echoes these bytes; then the client asks it to stop.
                let id = try! client.openStream()
                try! client.write([1, 2, 3], to: id)
            case .streamData(let id, _, _):
                client.controlFrames.append(.stopSending(streamID: id, errorCode: 9))
            default:
                break
            }
        }) { stats in stats.clientEvents.contains(.streamReset(streamID: 0, errorCode: 9)) }
        XCTAssertTrue(stats.clientEvents.contains(.streamReset(streamID: 0, errorCode: 9)))
        XCTAssertTrue(try XCTUnwrap(server.streams[0]).send.reset)
    }

    /// A key update led by either side: the other follows on seeing the new
    /// phase, and streams go on under the next keys (RFC 9001 §6).
    func testKeyUpdatesLedByEitherSide() throws {
        for clientLeads in [true, false] {
            var client = try QUICConnection(client: Self.configuration())
            var server = try QUICConnection(server: Self.configuration())
            _ = run(&client, &server, onClientEvent: Self.writer([1])) { Self.echoed($0) != nil }
            // The server is confirmed at once; the client once HANDSHAKE_DONE came, which the echo implies.
            if clientLeads {
                try client.initiateKeyUpdate()
                XCTAssertThrowsError(try client.initiateKeyUpdate(), "not again before the peer answered")
            } else {
                try server.initiateKeyUpdate()
            }
            let message = Array("under the next keys".utf8)
            let id = try client.openStream()
            try client.write(message, to: id, fin: true)
            let stats = run(&client, &server) { Self.echoed($0, streamID: id) != nil }
            XCTAssertEqual(Self.echoed(stats, streamID: id), message, clientLeads ? "client led" : "server led")
            settle(&client, &server)
            XCTAssertTrue(client.sendKeyPhase && client.receiveKeyPhase && server.sendKeyPhase && server.receiveKeyPhase)
        }
    }

    /// Each side starts the next keys after `keyUpdateInterval` packets (RFC
    /// 9001 §6.6), one update at a time, and a long transfer goes on across them.
    func testKeysAreUpdatedBeforeTheAEADLimit() throws {
        var clientConfiguration = try Self.configuration()
        clientConfiguration.keyUpdateInterval = 40
        var serverConfiguration = try Self.configuration()
        serverConfiguration.keyUpdateInterval = 40
        var client = try QUICConnection(client: clientConfiguration)
        var server = try QUICConnection(server: serverConfiguration)
        var generator = SplitMix(seed: 21)
        let message = generator.bytes(400 * 1024)
        let stats = run(&client, &server, onClientEvent: Self.writer(message)) { Self.echoed($0) != nil }
        XCTAssertEqual(Self.echoed(stats), message)
        // 400 KiB each way is over 340 packets each way: several generations.
        XCTAssertGreaterThanOrEqual(client.keyUpdates, 4, "client")
        XCTAssertGreaterThanOrEqual(server.keyUpdates, 4, "server")
        XCTAssertLessThanOrEqual(client.packetsUnderSendKeys, 40 + 64, "an update follows the interval within one send")
        XCTAssertFalse(client.isClosed)
    }

    /// A packet sent before a key update that arrives after the peer's first
    /// packet under the new keys still opens (the old keys are kept a while).
    func testAPacketFromBeforeAKeyUpdateStillOpensAfterIt() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        _ = run(&client, &server, onClientEvent: Self.writer([1])) { Self.echoed($0) != nil }
        settle(&client, &server)
        _ = server.takeEvents()
        let id = try client.openStream()
        try client.write(Array("sent before".utf8), to: id)
        let before = client.send(now: .now)
        try client.initiateKeyUpdate()
        try client.write(Array(" and after".utf8), to: id, fin: true)
        let after = client.send(now: .now)
        XCTAssertFalse(before.isEmpty)
        XCTAssertFalse(after.isEmpty)
        for datagram in after + before { server.receive(datagram: datagram, now: .now) }
        var received: [UInt8] = []
        for case .streamData(id, let data, _) in server.takeEvents() { received += data }
        XCTAssertEqual(String(decoding: received, as: UTF8.self), "sent before and after")
        XCTAssertTrue(server.receiveKeyPhase, "the server followed the update")
        XCTAssertFalse(server.isClosed)
    }

    /// A NEW_CONNECTION_ID whose retire_prior_to covers the ID we send to: we
    /// move to the new ID and retire the old one (RFC 9000 §5.1.2); a repeat
    /// changes nothing.
    func testThePeerRetiringOurDestinationIDMovesUsToItsNewOne() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        _ = run(&client, &server, onClientEvent: Self.writer([1])) { Self.echoed($0) != nil }
        settle(&client, &server)
        let old = client.remoteCID
        let fresh = try ConnectionID([UInt8](repeating: 7, count: 8))
        let offer = Frame.newConnectionID(sequence: 1, retirePriorTo: 1, connectionID: fresh, resetToken: [UInt8](repeating: 1, count: 16))
        server.controlFrames += [offer, offer]
        for datagram in server.send(now: .now) { client.receive(datagram: datagram, now: .now) }
        XCTAssertEqual(client.remoteCID, fresh)
        XCTAssertNotEqual(old, fresh)
        XCTAssertEqual(client.controlFrames.filter { $0 == .retireConnectionID(sequence: 0) }.count, 1)
        let id = try client.openStream()
        try client.write([1, 2, 3], to: id)
        let datagrams = client.send(now: .now)
        let packet = try XCTUnwrap(PacketParser.split(datagram: XCTUnwrap(datagrams.first), shortHeaderCIDLength: fresh.count).packets.first)
        guard case .short(let header) = packet.header else { return XCTFail("\(packet.header)") }
        XCTAssertEqual(header.destination, fresh)
        XCTAssertFalse(client.isClosed)
    }

    /// The peer may not give more IDs than our active_connection_id_limit (2),
    /// nor retire beyond the ID it gives.
    func testConnectionIDsBeyondOurLimitOrRetiringTooFarCloseTheConnection() throws {
        for frames in [
            (1...2).map { Frame.newConnectionID(sequence: UInt64($0), retirePriorTo: 0, connectionID: try! ConnectionID([UInt8($0)]), resetToken: [UInt8](repeating: 0, count: 16)) },
            [Frame.newConnectionID(sequence: 1, retirePriorTo: 2, connectionID: try ConnectionID([9]), resetToken: [UInt8](repeating: 0, count: 16))],
        ] {
            var client = try QUICConnection(client: Self.configuration())
            var server = try QUICConnection(server: Self.configuration())
            _ = run(&client, &server, onClientEvent: Self.writer([1])) { Self.echoed($0) != nil }
            settle(&client, &server)
            _ = client.takeEvents()
            server.controlFrames += frames
            for datagram in server.send(now: .now) { client.receive(datagram: datagram, now: .now) }
            _ = client.send(now: .now)
            let expected: TransportErrorCode = frames.count == 2 ? .connectionIDLimitError : .frameEncodingError
            XCTAssertTrue(
                client.takeEvents().contains { if case .closed(.local(expected, _)) = $0 { true } else { false } }, "\(expected)")
        }
    }

    /// Data goes out no faster than the congestion window allows: the first
    /// burst is about the initial window (12 000 bytes), and slow start grows it.
    func testTheCongestionWindowPacesData() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        _ = run(&client, &server, onClientEvent: Self.writer([0])) { Self.echoed($0) != nil }
        settle(&client, &server)
        let initialWindow = NewReno().window
        XCTAssertEqual(initialWindow, 12000)
        let id = try client.openStream()
        var generator = SplitMix(seed: 12)
        let message = generator.bytes(300 * 1024)
        try client.write(message, to: id, fin: true)
        let burst = client.send(now: .now)
        XCTAssertLessThanOrEqual(burst.map(\.count).reduce(0, +), client.congestion.window + 1200)
        XCTAssertGreaterThanOrEqual(burst.map(\.count).reduce(0, +), client.congestion.window - 1200)
        XCTAssertFalse(client.congestion.canSend)
        for datagram in burst { server.receive(datagram: datagram, now: .now) }
        let stats = run(&client, &server) { Self.echoed($0, streamID: id) != nil }
        XCTAssertEqual(Self.echoed(stats, streamID: id), message)
        XCTAssertGreaterThan(client.congestion.window, 4 * initialWindow, "slow start grew the window")
        XCTAssertEqual(client.congestion.slowStartThreshold, .max, "nothing was lost")
    }

    /// A datagram lost in the middle of a transfer is found lost by the
    /// packet threshold once three later packets are acknowledged, and resent
    /// with no probe timeout; the window is halved once.
    func testAMidStreamLossIsRepairedWithoutATimeout() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        var generator = SplitMix(seed: 13)
        let message = generator.bytes(300 * 1024)
        let stats = run(&client, &server, drop: { fromClient, index, _ in fromClient && index == 60 }, onClientEvent: Self.writer(message)) {
            Self.echoed($0) != nil
        }
        XCTAssertEqual(Self.echoed(stats), message)
        XCTAssertEqual(stats.timeouts, 0)
        XCTAssertLessThan(client.congestion.slowStartThreshold, .max, "the loss was a congestion event")
    }

    func testAPeerUnidirectionalStreamIsRefused() throws {
        var client = try QUICConnection(client: Self.configuration())
        var server = try QUICConnection(server: Self.configuration())
        let stats = run(&client, &server, onClientEvent: { event, client in
            // Stream 2 is the client's first unidirectional stream; the server allows none.
            if event == .connected { client.controlFrames.append(.stream(StreamFrame(streamID: 2, data: [1]))) }
        }) { stats in stats.serverEvents.contains { if case .closed = $0 { true } else { false } } }
        guard case .closed(.local(let code, _))? = stats.serverEvents.last else { return XCTFail("\(stats.serverEvents)") }
        XCTAssertEqual(code, .streamLimitError)
        guard case .closed(.peer(.transport(let peerCode, _, _)))? = stats.clientEvents.last else { return XCTFail("\(stats.clientEvents)") }
        XCTAssertEqual(peerCode, .streamLimitError)
    }

    func testRTTEstimatorFollowsRFC9002() {
        var rtt = RTTEstimator()
        XCTAssertEqual(rtt.probeTimeout(maxAckDelay: .zero), .milliseconds(333) + .milliseconds(666))
        rtt.update(sample: .milliseconds(100), ackDelay: .zero)
        XCTAssertEqual(rtt.smoothed, .milliseconds(100))
        XCTAssertEqual(rtt.variance, .milliseconds(50))
        // 200 ms with 20 ms of reported delay: adjusted 180, deviation 80.
        rtt.update(sample: .milliseconds(200), ackDelay: .milliseconds(20))
        XCTAssertEqual(rtt.minimum, .milliseconds(100))
        XCTAssertEqual(rtt.smoothed, .milliseconds(110))
        XCTAssertEqual(rtt.variance, .microseconds(57500))
        XCTAssertEqual(rtt.probeTimeout(maxAckDelay: .milliseconds(25)), .milliseconds(110 + 230 + 25))
        // A delay that would take the sample below the minimum is not subtracted.
        rtt.update(sample: .milliseconds(101), ackDelay: .milliseconds(20))
        XCTAssertEqual(rtt.latest, .milliseconds(101))
    }

    func testRandomDatagramsNeverTrapAServer() throws {
        var generator = SplitMix(seed: 8)
        let configuration = try Self.configuration()
        for round in 0..<50 {
            var server = try QUICConnection(server: configuration)
            for _ in 0..<20 {
                var datagram = generator.bytes(Int.random(in: 1...1300, using: &generator))
                if round % 2 == 0 { datagram[0] = 0xC0 | (datagram[0] & 0x0F) }  // Initial-looking
                if round % 4 == 0, datagram.count > 5 { datagram[1...4] = [0, 0, 0, 1] }
                server.receive(datagram: datagram, now: .now)
                _ = server.send(now: .now)
            }
            XCTAssertFalse(server.isConnected)
        }
    }
}
