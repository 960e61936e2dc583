extension QUICConnection {
    // MARK: Receiving

    /// Processes one received UDP datagram.
    public mutating func receive(datagram: [UInt8], now: ContinuousClock.Instant) {
        switch phase {
        case .closed, .closing: return
        default: break
        }
        bytesReceived += datagram.count
        let split = PacketParser.split(datagram: datagram, shortHeaderCIDLength: localCID.count)
        for packet in split.packets {
            receive(packet, datagramSize: datagram.count, now: now)
            if case .closing = phase { return }
            if case .closed = phase { return }
        }
    }

    mutating func receive(_ packet: ProtectedPacket, datagramSize: Int, now: ContinuousClock.Instant) {
        let space: Space
        switch packet.header {
        case .long(let header):
            guard header.version == QUICVersion.v1, header.type != .zeroRTT else { return }
            space = header.type == .initial ? .initial : .handshake
            if phase == .awaitingFirstInitial {
                // A client's first Initial fills a 1200-byte datagram (§14.1) and names at least 8
                // unpredictable bytes (§7.2); only one that decrypts decides the connection's IDs.
                guard header.type == .initial, datagramSize >= 1200, header.destination.count >= 8,
                    retryContext == nil || header.destination == localCID,
                    (try? PacketProtection.open(packet, keys: InitialSecrets.keys(destination: header.destination).client, largestReceived: nil)) != nil
                else { return }
                acceptFirstInitial(header)
                if isClosed { return }
            } else if header.destination != localCID && !(space == .initial && header.destination == originalDestination && role == .server) {
                return
            }
        case .short(let header):
            guard header.destination == localCID else { return }
            space = .application
        case .retry(let retry):
            return receiveRetry(retry, packet)
        case .versionNegotiation(let negotiation):
            return receiveVersionNegotiation(negotiation)
        case .unsupportedVersion:
            return
        }
        let index = space.rawValue
        guard !spaces[index].discarded, let keys = spaces[index].receiveKeys else { return }
        var opened: OpenedPacket
        do {
            opened = try PacketProtection.open(packet, keys: keys, largestReceived: spaces[index].largestReceived)
        } catch {
            // Reserved bits set in an authentic packet are a violation (§17.2); anything else that fails to decrypt is dropped (RFC 9001 §5.5).
            if error == .reservedBitsSet { fail(.protocolViolation, "reserved header bits set") }
            guard error == .authenticationFailed, space == .application, isConfirmed else { return }
            if let previous = previousReceiveKeys, now >= previous.until { previousReceiveKeys = nil }
            if let previous = previousReceiveKeys,
                let late = try? PacketProtection.open(packet, keys: previous.keys, largestReceived: spaces[index].largestReceived),
                late.keyPhase != receiveKeyPhase
            {
                // Sent before the peer's last key update, arriving after it (RFC 9001 §6.5).
                opened = late
            } else {
                // The peer's first packet after a key update (RFC 9001 §6.2): the next keys open it.
                guard let updated = try? PacketProtection.open(packet, keys: keys.updated(), largestReceived: spaces[index].largestReceived)
                else { return }
                guard updated.keyPhase != receiveKeyPhase else {
                    return fail(.keyUpdateError, "packet under the next keys without a new key phase")
                }
                opened = updated
                acceptKeyUpdate(now: now)
            }
        }
        processedAnyPacket = true
        idleDeadline = now + idleTimeout
        ackElicitingSentSinceReceipt = false
        if role == .client, space == .initial, !remoteCIDFromServer, case .long(let header) = packet.header {
            // The server's chosen ID replaces the one we made up (§7.2).
            remoteCID = header.source
            remoteCIDFromServer = true
        }
        if role == .server, space == .handshake, !spaces[Space.initial.rawValue].discarded {
            // A Handshake packet proves the client received ours (§8.1), and Initial keys are done with (RFC 9001 §4.9.1).
            addressValidated = true
            discard(.initial)
        }
        guard spaces[index].noteReceived(opened.packetNumber) else { return }
        let frames: [Frame]
        do {
            frames = try Frame.decodeAll(opened.payload)
        } catch {
            return fail(error.transportError, "frame: \(error)")
        }
        guard !frames.isEmpty else { return fail(.protocolViolation, "packet without frames") }
        for frame in frames {
            guard frame.isAllowed(at: space.level) else { return fail(.protocolViolation, "\(frame) not allowed at \(space.level)") }
            if frame.isAckEliciting { spaces[index].ackPending = true }
            handle(frame, in: space, now: now)
            if case .closing = phase { return }
            if case .closed = phase { return }
        }
    }

    mutating func acceptFirstInitial(_ header: LongHeader) {
        if retryContext == nil { originalDestination = header.destination }
        remoteCID = header.source
        var parameters = configuration.transportParameters
        parameters.originalDestinationConnectionID = originalDestination
        parameters.initialSourceConnectionID = localCID
        parameters.retrySourceConnectionID = retryContext?.retrySource
        parameters.statelessResetToken = configuration.statelessResetKey.map { StatelessReset.token(for: localCID, key: $0) }
        do {
            try tls.setTransportParameters(parameters.encoded())
        } catch {
            phase = .closed(.tls(error))
            events.append(.closed(.tls(error)))
            return
        }
        let keys = InitialSecrets.keys(destination: header.destination)
        spaces[Space.initial.rawValue].sendKeys = keys.server
        spaces[Space.initial.rawValue].receiveKeys = keys.client
        phase = .handshaking
    }

    /// A client takes one Retry, before any other server packet, with a valid
    /// tag and a token; it then sends its Initials to the Retry's source ID,
    /// with new Initial keys and the token (RFC 9000 §17.2.5.2, RFC 9001 §5.2).
    mutating func receiveRetry(_ retry: RetryPacket, _ packet: ProtectedPacket) {
        guard role == .client, retrySource == nil, !processedAnyPacket, !retry.token.isEmpty, retry.destination == localCID,
            RetryIntegrity.isValid(packet, originalDestination: originalDestination)
        else { return }
        retrySource = retry.source
        retryToken = retry.token
        remoteCID = retry.source
        let keys = InitialSecrets.keys(destination: retry.source)
        let initial = Space.initial.rawValue
        spaces[initial].sendKeys = keys.client
        spaces[initial].receiveKeys = keys.server
        // The ClientHello goes again under the new keys; packet numbers go on (§17.2.5.3).
        for number in spaces[initial].inFlight.keys.sorted() {
            for frame in spaces[initial].inFlight[number]!.frames { requeue(frame, space: initial) }
        }
        spaces[initial].inFlight = [:]
        spaces[initial].oldestInFlight = spaces[initial].nextPacketNumber
    }

    /// Version Negotiation ends a client's attempt only if it came before any
    /// other server packet and does not list our version (§6.2).
    mutating func receiveVersionNegotiation(_ negotiation: VersionNegotiationPacket) {
        guard role == .client, !processedAnyPacket, retrySource == nil, negotiation.destination == localCID.bytes,
            negotiation.source == originalDestination.bytes, !negotiation.versions.contains(QUICVersion.v1)
        else { return }
        phase = .closed(.noCommonVersion(negotiation.versions))
        events.append(.closed(.noCommonVersion(negotiation.versions)))
    }

    mutating func handle(_ frame: Frame, in space: Space, now: ContinuousClock.Instant) {
        let index = space.rawValue
        switch frame {
        case .padding, .ping, .newToken, .retireConnectionID, .pathResponse, .dataBlocked, .streamDataBlocked, .streamsBlocked:
            // Nothing to do: one path, and no connection IDs of ours beyond the
            // handshake's for the peer to retire; no tokens kept.
            break
        case .newConnectionID(let sequence, let retirePriorTo, let connectionID, _):
            receiveNewConnectionID(sequence: sequence, retirePriorTo: retirePriorTo, connectionID: connectionID)
        case .pathChallenge(let data):
            controlFrames.append(.pathResponse(data))
        case .ack(let ack):
            guard ack.largest < spaces[index].nextPacketNumber else { return fail(.protocolViolation, "ACK of packet \(ack.largest) never sent") }
            var newlyAcked = false
            if let largest = spaces[index].inFlight[ack.largest] {
                // An RTT sample from the largest acknowledged, when it is new (RFC 9002 §5.1); the peer's
                // ACK delay counts only in the application space.
                let exponent = peerParameters?.ackDelayExponent ?? 3
                let reported = Duration.microseconds(Int64(min(ack.delay, 1 << 40) << min(exponent, 20)))
                let maxDelay = Duration.milliseconds(Int64(peerParameters?.maxAckDelay ?? 25))
                rtt.update(sample: now - largest.sentAt, ackDelay: space == .application ? min(reported, maxDelay) : .zero)
            }
            var touchedStreams: Set<UInt64> = []
            for number in ack.ranges.flatMap({ spaces[index].inFlightNumbers(in: $0) }) {
                guard let sent = spaces[index].removeInFlight(number) else { continue }
                congestion.acknowledged(sent.size, sentAt: sent.sentAt)
                for case .stream(let stream) in sent.frames {
                    streams[stream.streamID]?.send.markAcked(offset: stream.offset, length: stream.data.count, fin: stream.fin)
                    touchedStreams.insert(stream.streamID)
                }
                newlyAcked = true
            }
            for id in touchedStreams { retireIfDone(id) }
            spaces[index].largestAcked = max(spaces[index].largestAcked ?? 0, ack.largest)
            if newlyAcked { detectLosses(index, now: now) }
            if newlyAcked {
                probeCount = 0
                restartProbeTimer(now: now)
            }
        case .crypto(let offset, let data):
            do {
                try spaces[index].cryptoReceive.insert(data, at: offset)
            } catch {
                return fail(.cryptoBufferExceeded, "CRYPTO at \(space.level): \(error)")
            }
            let ordered = spaces[index].cryptoReceive.read()
            guard !ordered.isEmpty else { return }
            do {
                handle(try tls.receive(ordered, at: space.level))
            } catch {
                fail(tls: error)
            }
        case .stream(let stream):
            receiveStream(stream)
        case .resetStream(let streamID, let errorCode, _):
            guard streams[streamID] != nil, !streams[streamID]!.receiveFinished else { return }
            streams[streamID]!.receiveFinished = true
            events.append(.streamReset(streamID: streamID, errorCode: errorCode))
            retireIfDone(streamID)
        case .stopSending(let streamID, let errorCode):
            // We stop sending too, with RESET_STREAM carrying the peer's code (§3.5).
            guard streams[streamID] != nil, !streams[streamID]!.send.reset else { return }
            let finalSize = streams[streamID]!.send.resetSending()
            controlFrames.append(.resetStream(streamID: streamID, errorCode: errorCode, finalSize: finalSize))
            retireIfDone(streamID)
        case .maxData(let maximum):
            peerMaxData = max(peerMaxData, maximum)
        case .maxStreamData(let streamID, let maximum):
            if streams[streamID] != nil { streams[streamID]!.sendLimit = max(streams[streamID]!.sendLimit, maximum) }
        case .maxStreams(let bidirectional, let maximum):
            if bidirectional { peerMaxStreamsBidi = max(peerMaxStreamsBidi, maximum) }
        case .handshakeDone:
            guard role == .client else { return fail(.protocolViolation, "HANDSHAKE_DONE from a client") }
            if case .established(false) = phase {
                // Confirmed (RFC 9001 §4.1.2): Handshake keys are done with.
                phase = .established(confirmed: true)
                discard(.handshake)
            }
        case .connectionClose(let close):
            phase = .closed(.peer(close))
            events.append(.closed(.peer(close)))
        }
    }

    mutating func receiveStream(_ frame: StreamFrame) {
        let id = frame.streamID
        if streams[id] == nil {
            if isLocal(id) {
                // One of ours that ended (a late resend) is ignored; one never opened is an error.
                guard id < nextStreamID else { return fail(.streamStateError, "STREAM on stream \(id) we did not open") }
                return
            }
            guard id & 0x02 == 0 else { return fail(.streamLimitError, "unidirectional stream \(id): we allow none") }
            let index = id / 4
            guard index >= peerStreamsOpened else { return }  // ended already
            guard index < peerStreamLimit else { return fail(.streamLimitError, "stream \(id) beyond our limit") }
            // Opening a stream opens every lower one of its kind (§3.2).
            for lower in peerStreamsOpened...index {
                streams[lower * 4 + (role == .client ? 1 : 0)] = Stream(
                    receive: ReassemblyBuffer(limit: configuration.transportParameters.initialMaxStreamDataBidiRemote),
                    sendLimit: peerParameters?.initialMaxStreamDataBidiLocal ?? 0,
                    window: configuration.transportParameters.initialMaxStreamDataBidiRemote)
            }
            peerStreamsOpened = index + 1
        }
        let before = streams[id]!.receive.highestOffset
        do {
            try streams[id]!.receive.insert(frame.data, at: frame.offset, fin: frame.fin)
        } catch {
            switch error {
            case .finalSizeChanged: return fail(.finalSizeError, "stream \(id)")
            case .limitExceeded, .tooFragmented: return fail(.flowControlError, "stream \(id): \(error)")
            }
        }
        let grown = streams[id]!.receive.highestOffset - before
        dataReceived += grown
        guard grown == 0 || dataReceived <= maxDataAdvertised else { return fail(.flowControlError, "connection data beyond MAX_DATA") }
        let stopped = streams[id]!.receiveFinished
        let data = streams[id]!.receive.read()
        if stopped {
            // We stopped reading (reset): the data is dropped, but counted, so the connection's window goes on.
            consumed(streamID: id, bytes: data.count)
            return
        }
        let finished = streams[id]!.receive.isComplete && !streams[id]!.receiveFinished
        if finished { streams[id]!.receiveFinished = true }
        guard !data.isEmpty || finished else { return }
        events.append(.streamData(streamID: id, data: data, fin: finished))
        if finished { retireIfDone(id) }
    }

    /// How many peer streams we allow in all: the initial limit plus one for each that ended.
    var peerStreamLimit: UInt64 { configuration.transportParameters.initialMaxStreamsBidi + peerStreamsEnded }

    /// A stream whose both sides are done is forgotten; for a peer's stream,
    /// MAX_STREAMS lets the peer open another in its place (§4.6).
    mutating func retireIfDone(_ id: UInt64) {
        guard let stream = streams[id], stream.receiveFinished, stream.send.isDone else { return }
        streams[id] = nil
        guard !isLocal(id) else { return }
        peerStreamsEnded += 1
        controlFrames.removeAll { if case .maxStreams(true, _) = $0 { true } else { false } }
        controlFrames.append(.maxStreams(bidirectional: true, maximum: peerStreamLimit))
    }

    /// Installs what TLS produced.
    mutating func handle(_ tlsEvents: [QUICTLSEvent]) {
        for event in tlsEvents {
            switch event {
            case .readSecret(let level, let suite, let secret):
                guard level != .zeroRTT else { continue }
                spaces[Space(level).rawValue].receiveKeys = try? PacketKeys(secret: secret, suite: suite)
            case .writeSecret(let level, let suite, let secret):
                guard level != .zeroRTT else { continue }
                spaces[Space(level).rawValue].sendKeys = try? PacketKeys(secret: secret, suite: suite)
            case .send(let level, let bytes):
                spaces[Space(level).rawValue].cryptoSend.write(bytes, fin: false)
            case .handshakeComplete:
                handshakeCompleted()
            }
        }
    }

    mutating func handshakeCompleted() {
        let parameters: TransportParameters
        do {
            parameters = try TransportParameters(decoding: tls.peerTransportParameters ?? [], fromServer: role == .client)
        } catch {
            return fail(.transportParameterError, "\(error)")
        }
        // The IDs in the parameters must be those the packets carried (§7.3): no one rewrote them.
        guard parameters.initialSourceConnectionID == remoteCID else {
            return fail(.transportParameterError, "initial_source_connection_id does not match")
        }
        if role == .client, parameters.originalDestinationConnectionID != originalDestination {
            return fail(.transportParameterError, "original_destination_connection_id does not match")
        }
        if role == .client, parameters.retrySourceConnectionID != retrySource {
            return fail(.transportParameterError, "retry_source_connection_id does not match the Retry")
        }
        peerParameters = parameters
        peerMaxData = parameters.initialMaxData
        peerMaxStreamsBidi = parameters.initialMaxStreamsBidi
        if role == .server {
            // The server's handshake is confirmed at completion (RFC 9001 §4.1.2); it tells the client.
            handshakeDonePending = true
            phase = .established(confirmed: true)
            discard(.handshake)
        } else {
            phase = .established(confirmed: false)
        }
        events.append(.connected)
    }

    mutating func discard(_ space: Space) {
        spaces[space.rawValue].discarded = true
        spaces[space.rawValue].sendKeys = nil
        spaces[space.rawValue].receiveKeys = nil
        congestion.forget(spaces[space.rawValue].inFlight.values.reduce(0) { $0 + $1.size })
        spaces[space.rawValue].inFlight = [:]
        spaces[space.rawValue].oldestInFlight = spaces[space.rawValue].nextPacketNumber
        spaces[space.rawValue].lossTime = nil
        spaces[space.rawValue].ackPending = false
        if !spaces.contains(where: { !$0.inFlight.isEmpty }), !clientAwaitsConfirmation {
            // Nothing left to probe for.
            probeDeadline = nil
        }
    }

    /// A connection ID the peer offers (§5.1.1). We keep it as a spare and
    /// move to another when the peer retires the one we use (retire_prior_to,
    /// §5.1.2), telling it with RETIRE_CONNECTION_ID; more active IDs than our
    /// active_connection_id_limit is the peer's error.
    mutating func receiveNewConnectionID(sequence: UInt64, retirePriorTo: UInt64, connectionID: ConnectionID) {
        guard retirePriorTo <= sequence else {
            return fail(.frameEncodingError, "NEW_CONNECTION_ID retires beyond its own sequence number")
        }
        if let known = sequence == remoteCIDSequence ? remoteCID : spareRemoteCIDs[sequence] {
            // A repeat (the frame was resent); one number for two IDs is a violation.
            if known != connectionID { fail(.protocolViolation, "connection ID \(sequence) changed") }
            return
        }
        if sequence < remoteRetirePriorTo {
            // Retired already: say so at once (§5.1.2).
            controlFrames.append(.retireConnectionID(sequence: sequence))
            return
        }
        spareRemoteCIDs[sequence] = connectionID
        if retirePriorTo > remoteRetirePriorTo {
            remoteRetirePriorTo = retirePriorTo
            for retired in spareRemoteCIDs.keys.filter({ $0 < retirePriorTo }).sorted() {
                spareRemoteCIDs[retired] = nil
                controlFrames.append(.retireConnectionID(sequence: retired))
            }
            if remoteCIDSequence < retirePriorTo, let next = spareRemoteCIDs.keys.min() {
                // This frame's own ID is at or above retire_prior_to: there is always one.
                controlFrames.append(.retireConnectionID(sequence: remoteCIDSequence))
                remoteCID = spareRemoteCIDs.removeValue(forKey: next)!
                remoteCIDSequence = next
            }
        }
        let limit = configuration.transportParameters.activeConnectionIDLimit
        if UInt64(spareRemoteCIDs.count + 1) > limit {
            fail(.connectionIDLimitError, "more than \(limit) active connection IDs")
        }
    }

    mutating func fail(_ code: TransportErrorCode, _ reason: String) {
        enterClosing(.connectionClose(.transport(code: code, frameType: 0, reason: Array(reason.utf8.prefix(100)))), .local(code, reason: reason))
    }

    mutating func fail(tls error: QUICTLSError) {
        enterClosing(
            .connectionClose(.transport(code: error.transportError, frameType: 0x06, reason: [])), .tls(error))
    }

    mutating func enterClosing(_ frame: Frame, _ error: QUICConnectionError) {
        switch phase {
        case .closing, .closed: return
        default: phase = .closing(frame, error)
        }
    }
}
