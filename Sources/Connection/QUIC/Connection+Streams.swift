/// What the application does with streams beyond writing: taking data (which
/// grants the peer more), resetting, and seeing what still waits to go out.
extension QUICConnection {
    /// The application took `bytes` of a stream's data: once half a window is
    /// taken, MAX_STREAM_DATA and MAX_DATA give the peer room again. Data the
    /// application has not taken is never granted, so a reader that stops
    /// stops the peer (backpressure) and bounds what we buffer.
    public mutating func consumed(streamID id: UInt64, bytes: Int) {
        guard bytes > 0 else { return }
        dataConsumed += UInt64(bytes)
        if var stream = streams[id], !stream.receiveFinished {
            stream.consumed += UInt64(bytes)
            if stream.receive.limit - min(stream.consumed, stream.receive.limit) < stream.window / 2 {
                stream.receive.limit = stream.consumed + stream.window
                controlFrames.removeAll { if case .maxStreamData(id, _) = $0 { true } else { false } }
                controlFrames.append(.maxStreamData(streamID: id, maximum: stream.receive.limit))
            }
            streams[id] = stream
        }
        let window = configuration.transportParameters.initialMaxData
        if maxDataAdvertised - min(dataConsumed, maxDataAdvertised) < window / 2 {
            maxDataAdvertised = dataConsumed + window
            controlFrames.removeAll { if case .maxData = $0 { true } else { false } }
            controlFrames.append(.maxData(maxDataAdvertised))
        }
    }

    /// Ends our side of a stream cleanly (FIN after what was written).
    public mutating func finish(streamID id: UInt64) throws(QUICStreamError) {
        try write([], to: id, fin: true)
    }

    /// Abandons a stream both ways: RESET_STREAM for what we send, STOP_SENDING
    /// for what the peer sends (RFC 9000 §3.5). Unknown or finished streams are ignored.
    public mutating func reset(streamID id: UInt64, errorCode: UInt64 = 0) {
        guard isConnected, var stream = streams[id] else { return }
        if !stream.send.reset, !stream.send.isDone {
            let finalSize = stream.send.resetSending()
            controlFrames.append(.resetStream(streamID: id, errorCode: errorCode, finalSize: finalSize))
        }
        if !stream.receiveFinished {
            stream.receiveFinished = true
            controlFrames.append(.stopSending(streamID: id, errorCode: errorCode))
        }
        streams[id] = stream
        retireIfDone(id)
    }

    /// Bytes written to a stream that have not gone out yet (flow control or
    /// the congestion window holds them): what a writer's backpressure counts.
    public func unsentBytes(streamID id: UInt64) -> Int {
        streams[id]?.send.unsentBytes ?? 0
    }

    /// Whether a stream is still known (not both sides ended).
    public func hasStream(_ id: UInt64) -> Bool { streams[id] != nil }

    /// Streams we may still open before the peer's MAX_STREAMS stops us.
    public var openableStreams: UInt64 {
        guard isConnected else { return 0 }
        let opened = nextStreamID / 4
        return peerMaxStreamsBidi > opened ? peerMaxStreamsBidi - opened : 0
    }

    /// The connection ID the peer puts on packets to us (routing at a shared socket).
    public var localConnectionID: ConnectionID { localCID }

    /// The destination ID of the client's first Initial: a server's packets
    /// may still arrive under it until the client learns ours.
    public var originalDestinationConnectionID: ConnectionID { originalDestination }
}
