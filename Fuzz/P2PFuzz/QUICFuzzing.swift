import QUIC
import TLS

/// QUIC's decoders of network input (issue 23): datagrams split into
/// packets and opened, frames, transport parameters, and the TLS handshake
/// machine fed CRYPTO data.
enum QUICFuzzing {
    /// Initial keys of a fixed destination ID, the keys a server opens a client's first datagram with.
    static let initialKeys = InitialSecrets.keys(destination: try! ConnectionID([0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08]))

    /// A datagram split into packets, each opened with the Initial keys of
    /// both directions (the RFC vectors decrypt; mutations mostly fail
    /// authentication), and what opens decoded as frames.
    static func packet(_ bytes: [UInt8]) {
        let split = PacketParser.split(datagram: bytes, shortHeaderCIDLength: 8)
        var end = 0
        for packet in split.packets {
            guard packet.bytes.startIndex == end, packet.bytes.endIndex <= bytes.count else {
                fatalError("packet \(packet.bytes.startIndex)..<\(packet.bytes.endIndex) outside the datagram or out of order")
            }
            end = packet.bytes.endIndex
            for keys in [initialKeys.client, initialKeys.server] {
                if let opened = try? PacketProtection.open(packet, keys: keys, largestReceived: nil) {
                    _ = try? Frame.decodeAll(opened.payload)
                }
            }
            if case .retry = packet.header {
                _ = RetryIntegrity.isValid(packet, originalDestination: .empty)
            }
        }
    }

    /// A packet payload: what decodes must encode to bytes that decode to the same frames.
    static func frames(_ bytes: [UInt8]) {
        guard let frames = try? Frame.decodeAll(bytes) else { return }
        var again: [UInt8] = []
        for frame in frames { frame.encode(into: &again) }
        guard (try? Frame.decodeAll(again)) == frames else { fatalError("frames do not round-trip: \(frames)") }
    }

    /// The quic_transport_parameters extension, from either side; decoded parameters round-trip.
    static func transportParameters(_ bytes: [UInt8]) {
        for fromServer in [false, true] {
            guard let parameters = try? TransportParameters(decoding: bytes, fromServer: fromServer) else { continue }
            guard (try? TransportParameters(decoding: parameters.encoded(), fromServer: fromServer)) == parameters else {
                fatalError("transport parameters do not round-trip: \(parameters)")
            }
        }
    }

    /// A server connection's configuration, with a libp2p certificate made once.
    static let serverConfiguration: QUICConnection.Configuration = {
        guard let certificate = try? LibP2PCertificate.generate(identity: FuzzTarget.identity) else {
            fatalError("no libp2p certificate for the QUIC fuzz target")
        }
        let tls = QUICTLSConfiguration(
            certificateDER: certificate.certificateDER, privateKeyDER: certificate.privateKeyDER, transportParameters: [0x0f, 0x00],
            verifyPeer: { chain in (try? LibP2PCertificate.verify(chain: chain, expectedPeer: nil)) != nil })
        return QUICConnection.Configuration(tls: tls)
    }()

    static let clientDestination = try! ConnectionID([0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08])

    /// The input as pieces, each a 2-byte big-endian length and that many
    /// bytes (the last piece takes what is left): frames cannot hold the
    /// 0x5A 0xA5 separator of `FuzzTarget.chunks` at a piece's edge.
    static func pieces(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var pieces: [ArraySlice<UInt8>] = []
        var rest = bytes[...]
        while rest.count >= 2, pieces.count < 64 {
            let length = Int(rest[rest.startIndex]) << 8 | Int(rest[rest.startIndex + 1])
            rest = rest.dropFirst(2)
            pieces.append(rest.prefix(length))
            rest = rest.dropFirst(length)
        }
        if !rest.isEmpty { pieces.append(rest) }
        return pieces
    }

    static func framed(_ pieces: [[UInt8]]) -> [UInt8] {
        pieces.flatMap { [UInt8($0.count >> 8), UInt8($0.count & 0xFF)] + $0 }
    }

    /// A server connection fed client Initial packets whose payloads (the
    /// frames: CRYPTO into TLS, ACKs, anything) are the input's pieces, sealed
    /// with the Initial keys so they pass the AEAD and reach the frame handling.
    static func connection(_ bytes: [UInt8]) {
        guard var server = try? QUICConnection(server: serverConfiguration) else { fatalError("no QUIC server connection") }
        let now = ContinuousClock.now
        let client = try! ConnectionID([1, 2, 3, 4, 5, 6, 7, 8])
        for (number, piece) in pieces(bytes).enumerated() {
            // A first datagram must fill 1200 bytes; PADDING after the input's frames does it.
            // (Header 27 bytes, tag 16: 1180 bytes of payload are enough.)
            let payload = Array(piece) + [UInt8](repeating: 0, count: max(0, 1180 - piece.count))
            let packet = PacketProtection.seal(
                LongHeader(type: .initial, destination: clientDestination, source: client), packetNumber: UInt64(number), largestAcked: nil,
                payload: payload, keys: initialKeys.client)
            server.receive(datagram: packet, now: now)
            _ = server.send(now: now)
            _ = server.takeEvents()
            if server.isClosed { return }
        }
    }

    /// Seeds: the RFC 9001 sample packets, one of each frame, full transport parameters.
    static func seeds(_ target: FuzzTarget) -> [String: [UInt8]] {
        let cid = try! ConnectionID([1, 2, 3, 4, 5, 6, 7, 8])
        switch target {
        case .quicPacket:
            let initial = PacketProtection.seal(
                LongHeader(type: .initial, destination: try! ConnectionID([0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08]), source: cid, token: [7, 7]),
                packetNumber: 0, largestAcked: nil, payload: Frame.crypto(offset: 0, data: Array("hello".utf8)).encoded + Frame.padding(count: 40).encoded,
                keys: initialKeys.client)
            let handshake = PacketProtection.seal(
                LongHeader(type: .handshake, destination: cid, source: cid), packetNumber: 1, largestAcked: nil, payload: Frame.ping.encoded,
                keys: initialKeys.server)
            let short = PacketProtection.seal(
                ShortHeader(destination: cid), packetNumber: 2, largestAcked: nil, keyPhase: false, payload: Frame.ping.encoded, keys: initialKeys.server)
            let retry = RetryIntegrity.seal(RetryPacket(destination: cid, source: cid, token: [1, 2, 3], integrityTag: []), originalDestination: .empty)
            return [
                "initial": initial,
                "coalesced": initial + handshake + short,
                "retry": retry,
                "version-negotiation": VersionNegotiationPacket(destination: cid.bytes, source: cid.bytes, versions: [1, 0x0a0a_0a0a]).encoded(),
            ]
        case .quicFrame:
            var frames: [Frame] = [
                .padding(count: 2), .ping,
                .ack(try! ACKFrame(ranges: [90...100, 50...80, 0...3], delay: 9, ecn: ECNCounts(ect0: 1, ect1: 2, ce: 3))),
                .resetStream(streamID: 4, errorCode: 1, finalSize: 100), .stopSending(streamID: 4, errorCode: 2),
                .crypto(offset: 10, data: [1, 2, 3]), .newToken([9, 9]), .maxData(1 << 20), .maxStreamData(streamID: 0, maximum: 99),
                .maxStreams(bidirectional: true, maximum: 10), .dataBlocked(limit: 5), .streamDataBlocked(streamID: 8, limit: 6),
                .streamsBlocked(bidirectional: false, limit: 7),
                .newConnectionID(sequence: 2, retirePriorTo: 1, connectionID: cid, resetToken: [UInt8](repeating: 1, count: 16)),
                .retireConnectionID(sequence: 1), .pathChallenge([UInt8](repeating: 2, count: 8)), .pathResponse([UInt8](repeating: 3, count: 8)),
                .connectionClose(.transport(code: .protocolViolation, frameType: 6, reason: Array("why".utf8))),
                .connectionClose(.application(code: 1, reason: [])), .handshakeDone,
            ]
            frames.append(.stream(StreamFrame(streamID: 0, offset: 7, data: Array("data".utf8), fin: true, explicitLength: false)))
            var all: [UInt8] = []
            for frame in frames { frame.encode(into: &all) }
            return ["all-frames": all, "stream": Frame.stream(StreamFrame(streamID: 4, data: [1], fin: true)).encoded]
        case .quicTransportParameters:
            var parameters = TransportParameters()
            parameters.originalDestinationConnectionID = cid
            parameters.maxIdleTimeout = 30000
            parameters.statelessResetToken = [UInt8](repeating: 4, count: 16)
            parameters.initialMaxData = 1 << 20
            parameters.initialMaxStreamDataBidiLocal = 1 << 18
            parameters.initialMaxStreamsBidi = 100
            parameters.disableActiveMigration = true
            parameters.preferredAddress = PreferredAddress(
                ipv4Address: [192, 0, 2, 1], ipv4Port: 443, ipv6Address: [UInt8](repeating: 0x20, count: 16), ipv6Port: 443, connectionID: cid,
                statelessResetToken: [UInt8](repeating: 5, count: 16))
            parameters.initialSourceConnectionID = cid
            return ["server": parameters.encoded()]
        case .quicConnection:
            // A real ClientHello in a CRYPTO frame, and the same cut in two out-of-order pieces.
            guard let hello = try? clientHello() else { return [:] }
            let half = hello.count / 2
            let second = Frame.crypto(offset: UInt64(half), data: Array(hello[half...])).encoded
            let first = Frame.crypto(offset: 0, data: Array(hello[..<half])).encoded
            return [
                "client-hello": framed([Frame.crypto(offset: 0, data: hello).encoded + Frame.ping.encoded]),
                "client-hello-split": framed([second, first]),
            ]
        default:
            return [:]
        }
    }

    /// A client's first CRYPTO data, from a real QUICTLS.
    static func clientHello() throws -> [UInt8] {
        var parameters = TransportParameters.defaultLimits
        parameters.initialSourceConnectionID = try ConnectionID([1, 2, 3, 4, 5, 6, 7, 8])
        var configuration = serverConfiguration.tls
        configuration.transportParameters = parameters.encoded()
        var client = try QUICTLS(role: .client, configuration: configuration)
        for case .send(.initial, let bytes) in try client.start() { return bytes }
        return []
    }
}
