import NIOCore

/// Flow control: receive windows granted back as the application reads, grown
/// (auto-tuned) while a stream's window is what limits it, and the round trip
/// the growth is judged against.
extension YamuxSession {
    /// The application read `bytes` of the stream: grant them back to the remote
    /// once half a window has accumulated (batched window updates).
    ///
    /// With `now` (a monotonic clock), the window grows only when the reader
    /// empties it within `growthRoundTrips` of the measured round trip (none
    /// until one is measured, see `tick(now:)`); without, whenever the reader
    /// keeps up. The window grows by at most `maxGrowth` (what the caller's
    /// memory budget allows).
    public mutating func consumed(streamID id: UInt32, bytes: Int, now: NIODeadline? = nil, maxGrowth: UInt32 = .max) {
        guard bytes > 0, var stream = streams[id] else { return }
        stream.consumedNotGranted += UInt32(clamping: bytes)
        if let now {
            if stream.epochStart == nil {
                stream.epochStart = now
            } else {
                stream.consumedInEpoch += UInt64(bytes)
            }
        }
        if let now, stream.soloGrowth > 0, !isAlone(id, now: now) {
            // Another stream is active: withhold grants until the solo growth is gone.
            let taken = min(stream.soloGrowth, stream.consumedNotGranted)
            stream.soloGrowth -= taken
            stream.windowTarget -= taken
            stream.consumedNotGranted -= taken
        }
        if !stream.state.remoteClosed && stream.consumedNotGranted >= stream.windowTarget / 2 {
            let (wanted, solo) = windowGrowth(for: stream, id: id, now: now)
            let growth = min(wanted, maxGrowth)
            if solo { stream.soloGrowth += growth }
            stream.windowTarget += growth
            let delta = stream.consumedNotGranted + growth
            stream.consumedNotGranted = 0
            stream.receiveWindow += delta
            writeHeader(.windowUpdate, flags: [], stream: id, length: delta)
            // The growth was judged on a whole window: time the next one from here.
            if now != nil, stream.consumedInEpoch >= UInt64(stream.windowTarget - growth) {
                stream.epochStart = now
                stream.consumedInEpoch = 0
            }
        }
        streams[id] = stream
    }

    /// The receive window a stream is granted up to (it grows while the reader keeps up).
    public func windowTarget(streamID id: UInt32) -> UInt32? { streams[id]?.windowTarget }

    /// How much to widen a stream's window at a grant: double it when its
    /// reader keeps up (at most a quarter of the window delivered and unread;
    /// half for the solo rule) and, given the time, when the window is what limits the stream; within
    /// the per-stream and per-session bounds. `solo`: made while the stream is
    /// alone (`soloGrowthTimeFloor`), so taken back once it is not.
    private func windowGrowth(for stream: Stream, id: UInt32, now: NIODeadline?) -> (growth: UInt32, solo: Bool) {
        let unread = Int64(stream.windowTarget) - Int64(stream.receiveWindow) - Int64(stream.consumedNotGranted)
        guard unread <= Int64(stream.windowTarget / 2), stream.windowTarget < configuration.maxStreamWindow else { return (0, false) }
        // The round-trip rule wants the reader to keep up (a quarter unread at
        // most); the solo rule, which makes up for the reader's own scheduling
        // on a fast link, takes half (its reads come in bursts).
        let keepingUp = unread <= Int64(stream.windowTarget / 4)
        var solo = false
        if let now {
            // Did the reader, over at least a whole window, read at a rate that empties
            // one within `growthRoundTrips` round trips? (elapsed / consumed * window < k * rtt)
            guard let rtt = roundTripTime, let start = stream.epochStart,
                stream.consumedInEpoch >= UInt64(stream.windowTarget)
            else { return (0, false) }
            let elapsed = Double(max(0, (now - start).nanoseconds)) * Double(stream.windowTarget)
            func fastEnough(_ span: Double) -> Bool { elapsed < span * Double(stream.consumedInEpoch) }
            let span = max(configuration.growthRoundTrips * Double(rtt.nanoseconds), Double(TimeAmount(configuration.growthTimeFloor).nanoseconds))
            if fastEnough(Double(TimeAmount(configuration.soloGrowthTimeFloor).nanoseconds)), isAlone(id, now: now) {
                // Counted as solo even where the round-trip rule would allow it
                // too (a round trip measured while the connection was busy
                // starting is inflated): it is taken back once another stream
                // talks, and the round-trip rule then grows again what it needs.
                solo = true
            } else {
                guard keepingUp, fastEnough(span) else { return (0, false) }
            }
        } else if !keepingUp {
            return (0, false)
        }
        // Every stream's growth so far, this one's included (its target is unchanged in `streams`).
        let grown = streams.values.reduce(UInt64(0)) { $0 + UInt64($1.windowTarget - configuration.initialWindow) }
        let budget = UInt64(configuration.maxSessionWindowGrowth) - min(grown, UInt64(configuration.maxSessionWindowGrowth))
        let growth = UInt32(min(UInt64(stream.windowTarget), UInt64(configuration.maxStreamWindow - stream.windowTarget), budget))
        return (growth, solo)
    }

    /// Whether no stream but `id` received data within `soloQuietSpan` of `now`.
    private func isAlone(_ id: UInt32, now: NIODeadline) -> Bool {
        let since = now - TimeAmount(configuration.soloQuietSpan)
        return !streams.contains { other, stream in
            other != id && (stream.lastDataAt.map { $0 > since } ?? false)
        }
    }

    // MARK: - Round trip

    /// The round trip measured with the session's pings: the smallest sample of
    /// the last `rttFilterSpan`; nil until the first pong.
    public var roundTripTime: TimeAmount? { rttSamples.lazy.map(\.rtt).min() }

    /// The driver's timer: call it once the session is up and again at the
    /// deadline it returns. It sends a round-trip ping when one is due (at the
    /// first call, then every `rttPingInterval`; an unanswered ping is given up
    /// for the next one), so however often it is called, there is at most one
    /// ping per interval (and `startRTTPings` at the start, each answered
    /// before the next). Without calls no ping is sent and windows grow only
    /// as `consumed` without `now` lets them.
    public mutating func tick(now: NIODeadline) -> NIODeadline {
        if let due = nextRTTPing, now < due { return due }
        sendRTTPing(now: now)
        let next = now + TimeAmount(configuration.rttPingInterval)
        nextRTTPing = next
        return next
    }

    mutating func sendRTTPing(now: NIODeadline) {
        nextPing &+= 1
        writeHeader(.ping, flags: .syn, stream: 0, length: nextPing)
        rttPing = (nextPing, now)
    }

    /// When `tick(now:)` is next due (nil before its first call).
    public var nextTickDeadline: NIODeadline? { nextRTTPing }

    mutating func recordRoundTrip(_ rtt: TimeAmount, at now: NIODeadline) {
        let cutoff = now - TimeAmount(configuration.rttFilterSpan)
        rttSamples.removeAll { $0.at < cutoff }
        rttSamples.append((now, max(rtt, .zero)))
    }
}
