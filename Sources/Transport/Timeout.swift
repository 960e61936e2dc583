/// An operation that did not finish in time.
public struct TimeoutError: Error, CustomStringConvertible, Sendable {
    /// What was being waited for.
    public let operation: String
    public let after: Duration

    public init(operation: String, after: Duration) {
        self.operation = operation
        self.after = after
    }

    public var description: String { "\(operation) timed out after \(after)" }
}

/// Runs `body`, cancelling it and throwing `TimeoutError` if it takes longer
/// than `limit`. The body must end when cancelled (stream reads do).
public func withTimeout<T: Sendable>(
    _ limit: Duration, _ operation: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: limit)
            throw TimeoutError(operation: operation, after: limit)
        }
        defer { group.cancelAll() }
        guard let first = try await group.next() else { throw CancellationError() }
        return first
    }
}
