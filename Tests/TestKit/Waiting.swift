import Synchronization
import XCTest

/// Waits until `condition` holds, polling every few milliseconds; fails the
/// test (and throws `DeadlineExceeded`) after `seconds`.
/// The condition runs in the caller's isolation (an actor's state can be polled from it).
public func waitUntil(
    _ what: String, seconds: Double = 10, isolation: isolated (any Actor)? = #isolation, file: StaticString = #filePath,
    line: UInt = #line, _ condition: () async throws -> Bool
) async throws {
    _ = try await waitFor(what, seconds: seconds, file: file, line: line) { try await condition() ? true : nil }
}

/// Polls `probe` until it returns a value, and returns that value; fails the
/// test (and throws `DeadlineExceeded`) after `seconds`.
public func waitFor<T>(
    _ what: String, seconds: Double = 10, isolation: isolated (any Actor)? = #isolation, file: StaticString = #filePath,
    line: UInt = #line, _ probe: () async throws -> T?
) async throws -> T {
    let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
    while true {
        if let value = try await probe() { return value }
        guard ContinuousClock.now < deadline else {
            XCTFail("timed out after \(seconds) s waiting until \(what)", file: file, line: line)
            throw DeadlineExceeded(seconds: seconds)
        }
        try await Task.sleep(for: .milliseconds(2))
    }
}

/// Fails the test if `body` does not finish within `seconds`. On time-out the body's
/// task is cancelled and left behind: the test goes on even if the body ignores
/// cancellation (a task group would wait for it).
public func withDeadline<T: Sendable>(
    _ seconds: Double, file: StaticString = #filePath, line: UInt = #line,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let outcome = FirstOutcome<T>()
    let result: Result<T, Error> = await withCheckedContinuation { continuation in
        outcome.install(continuation)
        let work = Task { outcome.deliver(await Result { try await body() }) }
        let timer = Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            if outcome.deliver(.failure(DeadlineExceeded(seconds: seconds))) { work.cancel() }
        }
        outcome.onDelivered { timer.cancel() }
    }
    if case .failure(let error as DeadlineExceeded) = result {
        XCTFail("timed out after \(error.seconds) s", file: file, line: line)
    }
    return try result.get()
}

/// A wait that ran out of time.
public struct DeadlineExceeded: Error {
    public let seconds: Double

    public init(seconds: Double) {
        self.seconds = seconds
    }
}

extension Result where Failure == Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}

/// The first of several racing outcomes, handed to one continuation.
private final class FirstOutcome<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<Result<T, Error>, Never>?
        var pending: Result<T, Error>?
        var delivered = false
        var onDelivered: (@Sendable () -> Void)?
    }
    private let state = Mutex(State())

    func install(_ continuation: CheckedContinuation<Result<T, Error>, Never>) {
        let ready = state.withLock { state -> Result<T, Error>? in
            state.continuation = continuation
            return state.pending
        }
        if let ready { continuation.resume(returning: ready) }
    }

    func onDelivered(_ action: @escaping @Sendable () -> Void) {
        let already = state.withLock { state -> Bool in
            if state.delivered { return true }
            state.onDelivered = action
            return false
        }
        if already { action() }
    }

    /// Delivers `result` if nothing was delivered before; whether it was.
    @discardableResult
    func deliver(_ result: Result<T, Error>) -> Bool {
        let (first, continuation, action) = state.withLock {
            state -> (Bool, CheckedContinuation<Result<T, Error>, Never>?, (@Sendable () -> Void)?) in
            guard !state.delivered else { return (false, nil, nil) }
            state.delivered = true
            if state.continuation == nil { state.pending = result }
            defer { state.continuation = nil }
            return (true, state.continuation, state.onDelivered)
        }
        continuation?.resume(returning: result)
        action?()
        return first
    }
}

/// A thread-safe count for tests.
public final class Counter: Sendable {
    private let count = Mutex(0)
    public init() {}
    public var value: Int { count.withLock { $0 } }
    public func add(_ amount: Int) { count.withLock { $0 += amount } }
}
