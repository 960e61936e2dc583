import Synchronization
import TestSupport
import Transport
import XCTest

final class TimeoutTests: XCTestCase {
    func testResultBeforeTheDeadline() async throws {
        let value = try await withTimeout(.seconds(5), "quick") { 42 }
        XCTAssertEqual(value, 42)
        do {
            _ = try await withTimeout(.seconds(5), "failing") { () async throws -> Int in throw CancellationError() }
            XCTFail("the body's error was lost")
        } catch is CancellationError {}
    }

    func testDeadlineEvenIfTheBodyIgnoresCancellation() async throws {
        let cancelled = Mutex(false)
        let start = ContinuousClock.now
        do {
            _ = try await withTimeout(.milliseconds(200), "stubborn") {
                // Ignores cancellation for a while (as an await bounded by its own deadline would).
                await withTaskCancellationHandler {
                    let until = ContinuousClock.now + .seconds(3)
                    while ContinuousClock.now < until { try? await Task.sleep(for: .milliseconds(10)) }
                } onCancel: {
                    cancelled.withLock { $0 = true }
                }
                return 1
            }
            XCTFail("no timeout")
        } catch let error as TimeoutError {
            XCTAssertEqual(error.what, "stubborn")
            XCTAssertEqual(error.limit, .milliseconds(200))
            XCTAssertEqual("\(error)", "stubborn timed out after 0.2 s")
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        XCTAssertTrue(cancelled.withLock { $0 }, "the body was not cancelled")
    }

    func testCancellingTheCallerCancelsTheBody() async throws {
        let bodyCancelled = Mutex(false)
        let started = Mutex(false)
        let caller = Task {
            try await withTimeout(.seconds(30), "long") {
                started.withLock { $0 = true }
                do {
                    try await Task.sleep(for: .seconds(30))
                } catch {
                    bodyCancelled.withLock { $0 = true }
                    throw error
                }
            }
        }
        try await waitUntil("the body started") { started.withLock { $0 } }
        caller.cancel()
        do {
            try await caller.value
            XCTFail("a cancelled caller returned normally")
        } catch is CancellationError {}
        XCTAssertTrue(bodyCancelled.withLock { $0 })
    }
}
