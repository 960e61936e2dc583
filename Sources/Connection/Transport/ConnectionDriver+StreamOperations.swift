import Logging
import NIOCore

/// What `Connection` and `MuxedStream` ask of the driver, on its event loop.
extension ConnectionDriver {
    func openStream(protocols: [String]) -> EventLoopFuture<MuxedStream> {
        guard case .established = state else {
            return eventLoop.makeFailedFuture(closeError ?? .connectionClosed)
        }
        let promise = eventLoop.makePromise(of: MuxedStream.self)
        do {
            var opened: UInt32 = 0
            try withEstablished { established throws(TransportError) in
                opened = try established.streams.open(protocols: protocols)
            }
            endpoints[opened] = .opening(promise, deadline: scheduleNegotiationDeadline(opened))
            try drainSession()
            flushOutput()
        } catch {
            if case .limitReached(let limit) = error { reportLimit(limit) }
            promise.fail(error)
        }
        return promise.futureResult
    }

    /// Inbound streams get a negotiation deadline as soon as the table sees them.
    func trackInbound(_ id: UInt32) {
        endpoints[id] = .accepting(deadline: scheduleNegotiationDeadline(id))
    }

    /// The reader took `bytes` from a stream's inbox: grant them back.
    func consumed(streamID id: UInt32, bytes: Int) {
        guard case .open(let stream)? = endpoints[id] else { return }
        var target: UInt32?
        try? withEstablished { established in
            established.streams.consumed(id, bytes: bytes, now: .now())
            target = established.streams.windowTarget(id)
        }
        // Reports scale with the window: fewer hops to the event loop for a fast reader.
        if let target { stream.inbox.setReportThreshold(Int(target / 8)) }
        try? drainSession()
        flushOutput()
    }

    /// The reader reached the end of a stream.
    func endOfStreamRead(streamID id: UInt32) {
        try? withEstablished { events.append(contentsOf: $0.streams.endOfStreamRead(id)) }
    }

    /// Takes a write the stream's writer handed over (and counted in `credit`)
    /// without waiting; a failure goes to the credit, which the next write throws.
    func write(streamID id: UInt32, data: ByteBuffer, credit: StreamWriteCredit) {
        guard case .established = state else { return credit.fail(closeError ?? .connectionClosed) }
        var outcome: Result<Void, TransportError> = .success(())
        try? withEstablished { outcome = $0.streams.write(id, data) }
        if case .failure(let error) = outcome {
            if case .limitReached(let limit) = error { reportLimit(limit) }
            return credit.fail(error)
        }
        do { try drainSession() } catch { return credit.fail(error) }
        flushOutput()
        // Flushing can close the connection (write error).
        guard case .established(let established) = state else { return credit.fail(closeError ?? .connectionClosed) }
        credit.processed(data.readableBytes, queued: established.streams.queuedBytes(id))
    }

    func closeWrite(streamID id: UInt32) -> EventLoopFuture<Void> {
        guard case .established = state else { return eventLoop.makeFailedFuture(closeError ?? .connectionClosed) }
        if case .open(let stream)? = endpoints[id] { stream.credit.fail(.streamClosedForWriting) }
        try? withEstablished { events.append(contentsOf: $0.streams.closeWrite(id)) }
        try? drainSession()
        flushOutput()
        return eventLoop.makeSucceededVoidFuture()
    }

    func reset(streamID id: UInt32) {
        guard case .open(let stream)? = endpoints.removeValue(forKey: id) else { return }
        stream.inbox.fail(.streamReset)
        stream.credit.fail(.streamReset)
        try? withEstablished { _ = $0.streams.reset(id) }
        try? drainSession()
        flushOutput()
    }

    /// The memory budget reclaimed an idle stream of ours for a newcomer: it is reset, whatever its phase.
    func reclaimed(streamID id: UInt32) {
        var known = false
        try? withEstablished { known = $0.streams.reset(id) }
        guard known else { return }
        logger.debug("idle stream reset to make room in the memory budget", metadata: ["stream": "\(id)"])
        switch endpoints.removeValue(forKey: id) {
        case .opening(let promise, let deadline)?:
            deadline?.cancel()
            promise.fail(TransportError.streamReset)
        case .accepting(let deadline)?:
            deadline?.cancel()
        case .open(let stream)?:
            stream.inbox.fail(.streamReset)
            stream.credit.fail(.streamReset)
        case nil:
            break
        }
        try? drainSession()
        flushOutput()
    }

    func discardInbound(streamID id: UInt32) {
        guard case .open(let stream)? = endpoints[id] else { return }
        let released = stream.inbox.discardAll()
        try? withEstablished { events.append(contentsOf: $0.streams.discardInbound(id, released: released, now: .now())) }
        try? drainSession()
        flushOutput()
    }

    /// Streams the connection still tracks (finished ones are dropped).
    var trackedStreamCount: Int {
        guard case .established(let established) = state else { return 0 }
        return established.streams.count
    }

    /// Closes: Yamux go-away, then the byte stream.
    func closeGracefully(_ error: TransportError) -> EventLoopFuture<Void> {
        try? withEstablished { $0.streams.goAway() }
        try? drainSession()
        flushOutput()
        teardown(error)
        closeSink()
        return closed.futureResult
    }
}
