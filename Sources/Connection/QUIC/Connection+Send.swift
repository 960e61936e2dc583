extension QUICConnection {
    // MARK: Sending

    /// The datagrams to send now: ACKs, CRYPTO data, stream data, control frames.
    public mutating func send(now: ContinuousClock.Instant) -> [[UInt8]] {
        if case .closing(let frame, let error) = phase {
            let datagram = closeDatagram(frame)
            phase = .closed(error)
            events.append(.closed(error))
            return datagram.isEmpty ? [] : [datagram]
        }
        guard case .closed = phase else {
            // Next keys well before the AEAD's limit; refused (and tried at the
            // next send) until the peer answered our previous update.
            if packetsUnderSendKeys >= configuration.keyUpdateInterval { try? initiateKeyUpdate() }
            var datagrams: [[UInt8]] = []
            while datagrams.count < 64, let datagram = nextDatagram(now: now) {
                datagrams.append(datagram)
            }
            return datagrams
        }
        return []
    }

    /// A CONNECTION_CLOSE in every space we have keys for, the peer may lack the later ones (§10.2.3).
    mutating func closeDatagram(_ frame: Frame) -> [UInt8] {
        var datagram: [UInt8] = []
        let spacesWithKeys = Space.allCases.filter { spaces[$0.rawValue].sendKeys != nil }
        // A client's datagram with an Initial in it is padded to 1200 bytes (§14.1), in its last packet.
        let pad = role == .client && spacesWithKeys.contains(.initial)
        for space in spacesWithKeys {
            var close = frame
            if space != .application, case .connectionClose(.application) = frame {
                close = .connectionClose(.transport(code: .applicationError, frameType: 0, reason: []))
            }
            let target = pad && space == spacesWithKeys.last ? 1200 - datagram.count : nil
            datagram += seal(space: space, frames: [close], padTo: target, now: nil)
        }
        return datagram
    }

    mutating func nextDatagram(now: ContinuousClock.Instant) -> [UInt8]? {
        var budget = configuration.maxDatagramSize
        if role == .server, !addressValidated {
            budget = min(budget, 3 * bytesReceived - bytesSent)
        }
        var packets: [(Space, [Frame])] = []
        var used = 0
        // Past the congestion window only ACKs go, and what a probe must send.
        let ackOnly = !congestion.canSend && probeCredit == 0
        for space in Space.allCases {
            let index = space.rawValue
            guard !spaces[index].discarded, spaces[index].sendKeys != nil else { continue }
            let overhead = headerSize(space) + PacketProtection.tagLength
            let room = budget - used - overhead
            guard room > 32 else { break }
            let frames = collectFrames(space, room: room, ackOnly: ackOnly)
            guard !frames.isEmpty else { continue }
            packets.append((space, frames))
            used += overhead + frames.reduce(0) { $0 + $1.encodedSize }
            // A client's Initial is padded to fill its datagram (§14.1): nothing is coalesced after it.
            if role == .client, space == .initial { break }
        }
        guard !packets.isEmpty else { return nil }
        if !congestion.canSend, packets.contains(where: { $0.1.contains(where: \.isAckEliciting) }) {
            probeCredit = max(0, probeCredit - 1)
        }
        let hasInitial = packets.contains { $0.0 == .initial && $0.1.contains(where: \.isAckEliciting) }
        let mustPad = hasInitial || (role == .client && packets.contains { $0.0 == .initial })
        var datagram: [UInt8] = []
        for (position, (space, frames)) in packets.enumerated() {
            let isLast = position == packets.count - 1
            let padTarget = isLast && mustPad ? max(0, min(1200, budget) - datagram.count) : nil
            datagram += seal(space: space, frames: frames, padTo: padTarget, now: now)
            if role == .client, space == .handshake, !spaces[Space.initial.rawValue].discarded {
                // The client is done with Initial keys once it sends a Handshake packet (RFC 9001 §4.9.1).
                discard(.initial)
            }
        }
        bytesSent += datagram.count
        return datagram
    }

    func headerSize(_ space: Space) -> Int {
        switch space {
        case .application: 1 + remoteCID.count + 4
        case .handshake: 1 + 4 + 1 + remoteCID.count + 1 + localCID.count + 2 + 4
        case .initial: 1 + 4 + 1 + remoteCID.count + 1 + localCID.count + VarInt.encodedLength(UInt64(retryToken.count))! + retryToken.count + 2 + 4
        }
    }

    /// Frames for one packet of `space`, at most `room` bytes encoded.
    mutating func collectFrames(_ space: Space, room: Int, ackOnly: Bool = false) -> [Frame] {
        let index = space.rawValue
        var frames: [Frame] = []
        var left = room
        func add(_ frame: Frame) {
            frames.append(frame)
            left -= frame.encodedSize
        }
        if spaces[index].ackPending, let ack = try? ACKFrame(ranges: spaces[index].received) {
            add(.ack(ack))
            spaces[index].ackPending = false
        }
        guard !ackOnly else { return frames }
        while left > 16, let piece = spaces[index].cryptoSend.next(maxLength: left - 12, limit: .max) {
            add(.crypto(offset: piece.offset, data: piece.data))
        }
        if probeSpace == space {
            if !frames.contains(where: \.isAckEliciting) { add(.ping) }
            probeSpace = nil
        }
        guard space == .application, isConnected else { return frames }
        if handshakeDonePending, left > 1 {
            add(.handshakeDone)
            handshakeDonePending = false
        }
        while let frame = controlFrames.first, frame.encodedSize <= left {
            add(frame)
            controlFrames.removeFirst()
        }
        // Streams take turns, packet by packet, from the one after the last served:
        // a bulk stream cannot keep a small one (a ping, a chat line) waiting behind it.
        let ids = streams.keys.sorted()
        let first = ids.firstIndex { $0 > lastStreamServed } ?? 0
        for id in ids[first...] + ids[..<first] where left > 24 {
            while left > 24 {
                let overhead = 1 + VarInt.encodedLength(id)! + 8 + 2
                let connectionRoom = peerMaxData > dataSent ? peerMaxData - dataSent : 0
                let newLimit = min(streams[id]!.sendLimit, streams[id]!.send.sentOffset + connectionRoom)
                let before = streams[id]!.send.sentOffset
                guard let piece = streams[id]!.send.next(maxLength: left - overhead, limit: newLimit) else { break }
                dataSent += streams[id]!.send.sentOffset - before
                add(.stream(StreamFrame(streamID: id, offset: piece.offset, data: piece.data, fin: piece.fin)))
                lastStreamServed = id
            }
        }
        return frames
    }

    /// Seals one packet and records it for loss recovery.
    mutating func seal(space: Space, frames: [Frame], padTo target: Int?, now: ContinuousClock.Instant?) -> [UInt8] {
        let index = space.rawValue
        guard let keys = spaces[index].sendKeys else { return [] }
        let number = spaces[index].nextPacketNumber
        spaces[index].nextPacketNumber += 1
        var payload: [UInt8] = []
        for frame in frames { frame.encode(into: &payload) }
        let numberLength = PacketNumber.encodedLength(number, largestAcked: spaces[index].largestAcked)
        if let target {
            // Header bytes are known before sealing (the Length field is always 2 bytes here), so the padding is exact.
            let size = (space == .application ? 1 + remoteCID.count : headerSize(space) - 4) + numberLength + payload.count + PacketProtection.tagLength
            if size < target { payload += [UInt8](repeating: 0, count: target - size) }
        }
        let packet: [UInt8]
        switch space {
        case .application:
            packetsUnderSendKeys += 1
            packet = PacketProtection.seal(
                ShortHeader(destination: remoteCID), packetNumber: number, largestAcked: spaces[index].largestAcked, keyPhase: sendKeyPhase,
                payload: payload, keys: keys, packetNumberLength: numberLength)
        case .initial, .handshake:
            let header = LongHeader(
                type: space == .initial ? .initial : .handshake, destination: remoteCID, source: localCID, token: space == .initial ? retryToken : [])
            packet = PacketProtection.seal(
                header, packetNumber: number, largestAcked: spaces[index].largestAcked, payload: payload, keys: keys,
                packetNumberLength: numberLength)
        }
        if let now, frames.contains(where: \.isAckEliciting) {
            spaces[index].inFlight[number] = SentPacket(frames: frames, size: packet.count, sentAt: now)
            congestion.sent(packet.count)
            if probeDeadline == nil { restartProbeTimer(now: now) }
            // Only the first ack-eliciting packet after a receipt restarts the idle timer (§10.1):
            // a peer that went away cannot keep it running by our own retransmissions.
            if let interval = configuration.keepAliveInterval { keepAliveDeadline = now + interval }
            if processedAnyPacket, !ackElicitingSentSinceReceipt {
                idleDeadline = now + idleTimeout
                ackElicitingSentSinceReceipt = true
            }
        }
        return packet
    }

    /// Declares lost what was sent three packets or 9/8 RTT before the largest
    /// acknowledged (RFC 9002 §6.1), resends its frames, and tells congestion control.
    mutating func detectLosses(_ index: Int, now: ContinuousClock.Instant) {
        spaces[index].lossTime = nil
        guard let largestAcked = spaces[index].largestAcked else { return }
        let rttBasis = max(rtt.smoothed, rtt.latest ?? rtt.smoothed)
        let lossDelay = max(rttBasis * 9 / 8, .milliseconds(1))
        var lostBytes = 0
        var newestLost: ContinuousClock.Instant?
        for number in spaces[index].inFlightNumbers(in: 0...largestAcked) where number < largestAcked {
            let sent = spaces[index].inFlight[number]!
            if largestAcked - number >= 3 || sent.sentAt + lossDelay <= now {
                for frame in sent.frames { requeue(frame, space: index) }
                _ = spaces[index].removeInFlight(number)
                lostBytes += sent.size
                newestLost = max(newestLost ?? sent.sentAt, sent.sentAt)
            } else {
                let due = sent.sentAt + lossDelay
                spaces[index].lossTime = min(spaces[index].lossTime ?? due, due)
            }
        }
        if let newestLost { congestion.lost(lostBytes, newestSentAt: newestLost, now: now) }
    }

    // MARK: Time

    mutating func restartProbeTimer(now: ContinuousClock.Instant) {
        let outstanding = spaces.contains { !$0.inFlight.isEmpty }
        probeDeadline = outstanding || clientAwaitsConfirmation ? now + probeTimeout : nil
    }

    /// The probe timeout, doubled for each one that expired in a row (RFC 9002 §6.2.1).
    var probeTimeout: Duration {
        let maxAckDelay = isConnected ? Duration.milliseconds(Int64(peerParameters?.maxAckDelay ?? 25)) : .zero
        return rtt.probeTimeout(maxAckDelay: maxAckDelay) * (1 << min(probeCount, 16))
    }

    /// The smaller of both sides' max_idle_timeout (0 is none), and at least
    /// three probe timeouts so that loss alone does not end the connection (§10.1).
    var idleTimeout: Duration {
        let offers = [configuration.transportParameters.maxIdleTimeout, peerParameters?.maxIdleTimeout ?? 0].filter { $0 > 0 }
        guard let agreed = offers.min() else { return .seconds(3600 * 24 * 365) }
        return max(.milliseconds(Int64(min(agreed, 1 << 40))), rtt.probeTimeout(maxAckDelay: .zero) * 3)
    }

    /// A client keeps its timer armed until the handshake is confirmed even
    /// with nothing in flight (RFC 9002 §6.2.2.1): a server stopped by the
    /// anti-amplification limit can only go on once the client sends again.
    var clientAwaitsConfirmation: Bool {
        guard role == .client else { return false }
        switch phase {
        case .handshaking, .established(confirmed: false): return true
        default: return false
        }
    }

    /// Call at `nextDeadline`: what is unacknowledged is sent again (RFC 9002 §6.2, simplified: all of it).
    public mutating func handleTimeout(now: ContinuousClock.Instant) {
        guard !isClosed else { return }
        if let idleDeadline, now >= idleDeadline {
            // Silently: the peer's own idle timer ends its side (§10.1).
            phase = .closed(.idleTimeout)
            events.append(.closed(.idleTimeout))
            return
        }
        if let keepAlive = keepAliveDeadline, now >= keepAlive {
            // Nothing ack-eliciting went out for a while: a PING keeps both idle timers (and NAT mappings) alive.
            keepAliveDeadline = nil
            if isConnected, probeSpace == nil { probeSpace = .application }
        }
        // The loss timer comes before the probe timer (RFC 9002 §6.2.1).
        var detected = false
        for index in spaces.indices {
            if let lossTime = spaces[index].lossTime, now >= lossTime {
                detectLosses(index, now: now)
                detected = true
            }
        }
        if detected { return }
        guard let deadline = probeDeadline, now >= deadline else { return }
        let outstanding = spaces.contains { !$0.inFlight.isEmpty }
        guard outstanding || clientAwaitsConfirmation else {
            // What was outstanding was acknowledged or its space discarded.
            probeDeadline = nil
            return
        }
        probeCount += 1
        guard probeCount <= configuration.maxProbeTimeouts else {
            phase = .closed(.timedOut)
            events.append(.closed(.timedOut))
            probeDeadline = nil
            return
        }
        if !outstanding {
            let handshake = spaces[Space.handshake.rawValue]
            probeSpace = handshake.sendKeys != nil && !handshake.discarded ? .handshake : .initial
        }
        for index in spaces.indices {
            for number in spaces[index].inFlight.keys.sorted() {
                for frame in spaces[index].inFlight[number]!.frames { requeue(frame, space: index) }
            }
            congestion.forget(spaces[index].inFlight.values.reduce(0) { $0 + $1.size })
            spaces[index].inFlight = [:]
            spaces[index].oldestInFlight = spaces[index].nextPacketNumber
            spaces[index].lossTime = nil
        }
        // Two datagrams may go past the congestion window to probe (RFC 9002 §6.2.4).
        probeCredit = 2
        probeDeadline = now + probeTimeout
    }

    mutating func requeue(_ frame: Frame, space index: Int) {
        switch frame {
        case .crypto(let offset, let data):
            spaces[index].cryptoSend.markLost(offset: offset, length: data.count, fin: false)
        case .stream(let stream):
            streams[stream.streamID]?.send.markLost(offset: stream.offset, length: stream.data.count, fin: stream.fin)
        case .handshakeDone:
            handshakeDonePending = true
        case .maxData, .maxStreamData, .pathResponse, .resetStream, .stopSending:
            controlFrames.append(frame)
        case .maxStreams:
            // Only the latest limit matters; a later one may already be queued.
            if !controlFrames.contains(where: { if case .maxStreams = $0 { true } else { false } }) {
                controlFrames.append(.maxStreams(bidirectional: true, maximum: peerStreamLimit))
            }
        default:
            // ACKs are rebuilt from what was received; PING and PADDING carry nothing.
            break
        }
    }
}
