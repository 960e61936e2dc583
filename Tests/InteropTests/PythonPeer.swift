import Foundation
import Synchronization
import XCTest

/// A py-libp2p peer (Tests/Interop/py/peer.py) run as a subprocess. Its stdout is
/// one JSON object per line; we wait for lines with deadlines and kill it at the end.
final class PythonPeer: Sendable {
    let process: Process
    private let stdinPipe: Pipe
    /// Parsed stdout lines not yet consumed by `next`.
    private let lines: Locked<[[String: any Sendable]]>
    private let stderrLog: Locked<String>

    static var script: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/peer.py").path
    }

    init(_ arguments: [String]) throws {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: interop with py-libp2p needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = [Self.script] + arguments
        let stdout = Pipe()
        let stderr = Pipe()
        stdinPipe = Pipe()
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = stdinPipe
        let received = Locked<[[String: any Sendable]]>([])
        lines = received
        let log = Locked("")
        stderrLog = log
        let buffer = Locked(Data())
        stdout.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                return
            }
            let complete: [Data] = buffer.withLock { pending in
                pending.append(data)
                var out: [Data] = []
                while let newline = pending.firstIndex(of: UInt8(ascii: "\n")) {
                    out.append(pending[pending.startIndex..<newline])
                    pending.removeSubrange(pending.startIndex...newline)
                }
                return out
            }
            for line in complete {
                if let object = try? JSONSerialization.jsonObject(with: line) as? [String: Any] {
                    let converted = object.mapValues { Self.sendable($0) }
                    received.withLock { $0.append(converted) }
                }
            }
        }
        stderr.fileHandleForReading.readabilityHandler = { handle in
            let data = handle.availableData
            if data.isEmpty {
                handle.readabilityHandler = nil
                return
            }
            log.withLock { $0 += String(decoding: data, as: UTF8.self) }
        }
        try process.run()
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
        let deadline = ContinuousClock.now + .seconds(seconds)
        while ContinuousClock.now < deadline {
            let line = lines.withLock { $0.isEmpty ? nil : $0.removeFirst() }
            guard let line else {
                if !process.isRunning && lines.withLock({ $0.isEmpty }) { break }
                try await Task.sleep(for: .milliseconds(20))
                continue
            }
            if line["event"] as? String == "error" {
                throw InteropError.peerFailed("\(line) stderr: \(stderrTail)")
            }
            if line["event"] as? String == event { return line }
        }
        throw InteropError.timeout(event: event, stderr: stderrTail)
    }

    var stderrTail: String {
        String(stderrLog.withLock { $0 }.suffix(3000))
    }

    /// Waits for the process to exit by itself; its status.
    func waitForExit(within seconds: Double = 60) async throws -> Int32 {
        let deadline = ContinuousClock.now + .seconds(seconds)
        while process.isRunning {
            if ContinuousClock.now > deadline { throw InteropError.timeout(event: "exit", stderr: stderrTail) }
            try await Task.sleep(for: .milliseconds(50))
        }
        return process.terminationStatus
    }

    /// Writes one line to the peer's stdin (pubsub mode publishes it).
    func send(_ line: String) {
        stdinPipe.fileHandleForWriting.write(Data((line + "\n").utf8))
    }

    /// Closes stdin (the peer exits cleanly) and kills it if it lingers.
    func stop() {
        try? stdinPipe.fileHandleForWriting.close()
        let process = self.process
        if process.isRunning {
            DispatchQueue.global().asyncAfter(deadline: .now() + 3) {
                if process.isRunning { process.terminate() }
            }
        }
    }

    deinit {
        if process.isRunning { process.terminate() }
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
