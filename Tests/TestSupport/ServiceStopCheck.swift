import Host
import NIOCore
import TestKit
import Transport
import XCTest

/// Checks what a service's `stop()` promises, over `connection` to the host
/// that runs the service: opens a stream for `protocolID` and lets `block`
/// leave its handler waiting mid-stream; once `running()` (the tasks the
/// service has started) reaches `busy`, `stop` must return in time with
/// `running()` at 0, the blocked stream must end (reset, or closed by the
/// handler), and a new stream for each of `refused` must be refused.
public func assertStopEndsService(
    _ protocolID: String, over connection: Connection, refused: [String]? = nil, busy: Int = 1,
    running: @escaping @Sendable () -> Int, block: @escaping @Sendable (MuxedStream) async throws -> Void = { _ in },
    stop: @escaping @Sendable () async -> Void, file: StaticString = #filePath, line: UInt = #line
) async throws {
    let stream = try await connection.newStream(protocols: [protocolID])
    try await block(stream)
    try await waitUntil("the handler serves the stream", file: file, line: line) { running() >= busy }
    try await withDeadline(10, file: file, line: line) { await stop() }
    XCTAssertEqual(running(), 0, "tasks the service started still run after stop", file: file, line: line)
    // The handler was ended: what we read ends (a reset throws) instead of waiting on.
    try await withDeadline(10, file: file, line: line) {
        do {
            while try await stream.read() != nil {}
        } catch {
            // Reset by the stopped service: ended.
        }
    }
    for other in refused ?? [protocolID] {
        do {
            let late = try await connection.newStream(protocols: [other])
            XCTFail("a stream for \(other) was accepted after stop", file: file, line: line)
            late.reset()
        } catch {
            // Refused at negotiation: the handler is gone.
        }
    }
}
