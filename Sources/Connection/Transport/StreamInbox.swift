import NIOCore
import Synchronization

/// The data received on one stream and not yet read.
///
/// The connection's event loop fills it; the reader's task drains it under a
/// lock, without a hop to the event loop while data is waiting. Crossing
/// threads costs far more than the bytes themselves, so a reader that keeps up
/// with the sender only ever parks when the inbox is empty.
///
/// Bounded by the Yamux receive window: the remote cannot send more than we
/// granted, and we grant only what the reader has taken.
package final class StreamInbox: Sendable {
    private struct State {
        var chunks = CircularBuffer<ByteBuffer>()
        /// The remote closed its write side: after the chunks comes the end.
        var finished = false
        /// The stream failed (reset, connection closed): after the chunks comes this error.
        var error: TransportError?
        /// The reader's continuation while it waits for data.
        var waiter: CheckedContinuation<ByteBuffer?, Error>?
        /// Bytes read and not yet reported to the event loop for window updates.
        var unreported = 0
        /// Bytes the reader gathers before reporting them (each report is a hop to the event loop).
        var reportThreshold = 0
        var discarding = false
        /// Data arrived for a waiting reader; it is resumed by `wake` (once per socket read).
        var wakePending = false
    }

    private let state = Mutex(State())

    package init(reportThreshold: Int) {
        state.withLock { $0.reportThreshold = reportThreshold }
    }

    /// Sets how many bytes the reader gathers before reporting them. At most an
    /// eighth of the stream's window: the session grants at half a window, so
    /// reading everything the remote may send always reaches a grant.
    package func setReportThreshold(_ bytes: Int) {
        state.withLock { $0.reportThreshold = bytes }
    }

    /// Whether a reader is parked waiting for data (tests wait for this state).
    var hasWaitingReader: Bool { state.withLock { $0.waiter != nil } }

    // MARK: Event loop side

    /// Adds arriving data. A waiting reader is not resumed here but by `wake`,
    /// which the event loop calls once per socket read: waking a thread costs
    /// more than the bytes of one frame, so one wake hands over every chunk of
    /// the read. Returns whether `wake` is needed, and the bytes to count as
    /// consumed at once (when the inbox discards).
    package func push(_ chunk: ByteBuffer) -> (needsWake: Bool, discarded: Int) {
        state.withLock { state in
            if state.discarding { return (false, chunk.readableBytes) }
            state.chunks.append(chunk)
            guard state.waiter != nil, !state.wakePending else { return (false, 0) }
            state.wakePending = true
            return (true, 0)
        }
    }

    /// Resumes a waiting reader with the first buffered chunk.
    package func wake() {
        let (waiter, chunk) = state.withLock { state -> (CheckedContinuation<ByteBuffer?, Error>?, ByteBuffer?) in
            state.wakePending = false
            guard let waiter = state.waiter, let chunk = state.chunks.popFirst() else { return (nil, nil) }
            state.waiter = nil
            return (waiter, chunk)
        }
        if let waiter, let chunk { waiter.resume(returning: chunk) }
    }

    /// The remote's end of data: the reader sees nil after the buffered chunks.
    package func finish() {
        let (waiter, chunk) = state.withLock { state -> (CheckedContinuation<ByteBuffer?, Error>?, ByteBuffer?) in
            state.finished = true
            defer { state.waiter = nil }
            // A reader still waiting gets the data before the end.
            return (state.waiter, state.waiter == nil ? nil : state.chunks.popFirst())
        }
        waiter?.resume(returning: chunk)
    }

    /// The stream failed: the reader gets `error` after the buffered chunks
    /// (or, if the remote had already finished, the clean end).
    package func fail(_ error: TransportError) {
        let (waiter, chunk) = state.withLock { state -> (CheckedContinuation<ByteBuffer?, Error>?, ByteBuffer?) in
            guard !state.finished, state.error == nil else { return (nil, nil) }
            state.error = error
            defer { state.waiter = nil }
            return (state.waiter, state.waiter == nil ? nil : state.chunks.popFirst())
        }
        if let chunk {
            waiter?.resume(returning: chunk)
        } else {
            waiter?.resume(throwing: error)
        }
    }

    /// The reader wants no more: drops what is buffered and everything that
    /// arrives later. Returns the dropped bytes (to grant back to the remote).
    package func discardAll() -> Int {
        let (dropped, waiter) = state.withLock { state -> (Int, CheckedContinuation<ByteBuffer?, Error>?) in
            state.discarding = true
            var dropped = state.unreported
            state.unreported = 0
            while let chunk = state.chunks.popFirst() { dropped += chunk.readableBytes }
            defer { state.waiter = nil }
            return (dropped, state.waiter)
        }
        waiter?.resume(returning: nil)
        return dropped
    }

    // MARK: Reader side

    private enum Next {
        case chunk(ByteBuffer)
        case end
        case failure(TransportError)
        case wait
    }

    /// The next chunk, or nil at the end; throws the stream's error. Waits when
    /// nothing is there; a cancelled task stops waiting with `CancellationError`
    /// (nothing is lost: a later read gets the data). `report` is nonzero when
    /// enough was read to tell the event loop (for window updates).
    func next() async throws -> (ByteBuffer?, report: Int) {
        let chunk: ByteBuffer?
        switch take(waiter: nil) {
        case .chunk(let first): chunk = first
        case .end: return (nil, 0)
        case .failure(let error): throw error
        case .wait:
            try Task.checkCancellation()
            chunk = try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    switch take(waiter: continuation) {
                    case .chunk(let first): continuation.resume(returning: first)
                    case .end: continuation.resume(returning: nil)
                    case .failure(let error): continuation.resume(throwing: error)
                    case .wait:
                        // Cancelled between the check above and installing the waiter.
                        if Task.isCancelled { cancelWaiter() }
                    }
                }
            } onCancel: {
                cancelWaiter()
            }
        }
        guard let chunk else { return (nil, 0) }
        return (chunk, account(chunk.readableBytes))
    }

    /// Ends a waiting read with `CancellationError` (no-op when none waits).
    private func cancelWaiter() {
        let waiter = state.withLock { state -> CheckedContinuation<ByteBuffer?, Error>? in
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(throwing: CancellationError())
    }

    private func take(waiter: CheckedContinuation<ByteBuffer?, Error>?) -> Next {
        state.withLock { state in
            if let chunk = state.chunks.popFirst() { return .chunk(chunk) }
            if state.finished || state.discarding { return .end }
            if let error = state.error { return .failure(error) }
            if state.waiter != nil {
                return .failure(.concurrentReads)
            }
            state.waiter = waiter
            return .wait
        }
    }

    /// Counts bytes handed to the reader.
    private func account(_ bytes: Int) -> Int {
        state.withLock { state in
            state.unreported += bytes
            guard state.unreported >= state.reportThreshold else { return 0 }
            defer { state.unreported = 0 }
            return state.unreported
        }
    }
}
