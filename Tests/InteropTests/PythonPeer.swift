import ChildProcess
import Foundation
import Synchronization
import XCTest

/// A py-libp2p peer (Tests/Interop/py/peer.py) run as a subprocess. Its stdout is
/// one JSON object per line; we wait for lines with deadlines and kill it at the end.
final class PythonPeer: Sendable {
    let process: ChildProcess
    /// Index of the first stdout line `next` has not consumed yet.
    private let consumed = Locked(0)

    static var script: String { script(named: "peer.py") }

    /// A script of Tests/Interop/py.
    static func script(named name: String) -> String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/\(name)").path
    }

    init(_ arguments: [String], script: String = PythonPeer.script) throws {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: interop with py-libp2p needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        process = try ChildProcess(python, [script] + arguments, stdinPipe: true)
    }

    /// The stdout lines not consumed yet, parsed as JSON objects (others are skipped); marks them consumed.
    private func takeLines() -> [[String: any Sendable]] {
        let all = process.outputLines
        let start = consumed.withLock { index in
            defer { index = all.count }
            return index
        }
        return all[min(start, all.count)...].compactMap { line in
            (try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])?.mapValues { Self.sendable($0) }
        }
    }

    private static func sendable(_ value: Any) -> any Sendable {
        switch value {
        case let string as String: return string
        case let number as NSNumber: return number.doubleValue
        case let array as [Any]: return array.map { sendable($0) as? String ?? "\(sendable($0))" }
        default: return "\(value)"
        }
    }

    /// The next JSON line whose "event" is `event`, within `seconds`
    /// (lines of other events before it are consumed; an error line fails).
    func next(_ event: String, within seconds: Double = 60) async throws -> [String: any Sendable] {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var pending: [[String: any Sendable]] = []
        while ContinuousClock.now < deadline {
            if pending.isEmpty { pending = takeLines() }
            guard !pending.isEmpty else {
                if !process.isRunning && process.outputLines.count <= consumed.withLock({ $0 }) { break }
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            let line = pending.removeFirst()
            if line["event"] as? String == "error" {
                throw InteropError.peerFailed("\(line) stderr: \(stderrTail)")
            }
            if line["event"] as? String == event {
                // Lines after this one stay unconsumed for the next call.
                if !pending.isEmpty { consumed.withLock { $0 -= pending.count } }
                return line
            }
        }
        throw InteropError.timeout(event: event, stderr: stderrTail)
    }

    var stderrTail: String {
        String(process.stderrText.suffix(3000))
    }

    /// Waits for the process to exit by itself; its status.
    func waitForExit(within seconds: Double = 60) async throws -> Int32 {
        do {
            return try await process.waitForExit(within: seconds)
        } catch {
            throw InteropError.timeout(event: "exit", stderr: stderrTail)
        }
    }

    /// Writes one line to the peer's stdin (pubsub mode publishes it).
    func send(_ line: String) {
        process.send(line)
    }

    /// Closes stdin (the peer exits cleanly) and kills it if it lingers.
    func stop() {
        process.stop(grace: 3)
    }
}

enum InteropError: Error, CustomStringConvertible {
    case timeout(event: String, stderr: String)
    case peerFailed(String)

    var description: String {
        switch self {
        case .timeout(let event, let stderr): return "timed out waiting for \(event); python stderr:\n\(stderr)"
        case .peerFailed(let line): return "python peer failed: \(line)"
        }
    }
}


/// A mutex-protected value that closures can share.
final class Locked<Value: Sendable>: Sendable {
    private let mutex: Mutex<Value>

    init(_ value: Value) {
        mutex = Mutex(value)
    }

    func withLock<T>(_ body: (inout Value) -> T) -> T {
        mutex.withLock { body(&$0) }
    }
}
