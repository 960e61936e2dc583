import Foundation
import Glibc
import Synchronization

/// A child process for tests, on posix_spawn and waitpid.
///
/// Foundation's `Process` on Linux can miss a child's exit (seen here: a `tmux
/// new-session -d` client stayed a zombie and `waitUntilExit()` never returned, which
/// hung the whole suite). Here every wait polls `waitpid(pid, WNOHANG)` against a
/// deadline, so no wait can outlive its test, and a child that outlives its owner is
/// killed and reaped: a test only ever kills its own children.
public final class ChildProcess: Sendable {
    public enum Stream: Sendable {
        /// Not connected: /dev/null.
        case discard
        /// Collected by a reader thread (stdout: as lines; stderr: as text).
        case capture
    }

    public enum Failure: Error, CustomStringConvertible {
        case spawnFailed(executable: String, errno: Int32)
        case timedOut(command: String, seconds: Double)

        public var description: String {
            switch self {
            case .spawnFailed(let executable, let code):
                return "cannot start \(executable): \(String(cString: strerror(code)))"
            case .timedOut(let command, let seconds):
                return "\(command) did not exit within \(seconds) s"
            }
        }
    }

    /// How a process ended.
    public enum Termination: Equatable, Sendable {
        case exited(Int32)
        case signalled(Int32)
    }

    private struct State {
        var termination: Termination?
        var lines: [String] = []
        var partialLine: [UInt8] = []
        var stderrText: [UInt8] = []
        var stdinFD: Int32 = -1
        /// Output pipes not yet read to end of file.
        var openReaders = 0
    }

    public let pid: pid_t
    public let command: String
    private let state: Mutex<State>

    /// Starts `executable` (an absolute path) with `arguments`. With `stdinPipe`, the
    /// child's stdin is a pipe written by `send` and closed by `closeInput`.
    public init(
        _ executable: String, _ arguments: [String], stdinPipe: Bool = false,
        stdout: Stream = .capture, stderr: Stream = .capture
    ) throws {
        Self.ignoreSIGPIPE
        command = ([executable] + arguments).joined(separator: " ")
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        // The child starts with default signal handling and nothing blocked.
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var allSignals = sigset_t()
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        // Parent ends of the pipes. Both ends are close-on-exec so no other child
        // inherits them; spawns are serialised so none starts between pipe and fcntl.
        Self.spawnLock.lock()
        defer { Self.spawnLock.unlock() }
        var parentEnds: [Int32] = []
        var childEnds: [Int32] = []
        func pipeFor(_ fd: Int32, childReads: Bool) -> Int32 {
            var ends: [Int32] = [-1, -1]
            _ = pipe(&ends)
            for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            let (child, parent) = childReads ? (ends[0], ends[1]) : (ends[1], ends[0])
            posix_spawn_file_actions_adddup2(&actions, child, fd)
            childEnds.append(child)
            parentEnds.append(parent)
            return parent
        }
        var stdinWrite: Int32 = -1
        if stdinPipe {
            stdinWrite = pipeFor(0, childReads: true)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        var stdoutRead: Int32 = -1
        if stdout == .capture {
            stdoutRead = pipeFor(1, childReads: false)
        } else {
            posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0)
        }
        var stderrRead: Int32 = -1
        if stderr == .capture {
            stderrRead = pipeFor(2, childReads: false)
        } else {
            posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        }

        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        var child: pid_t = 0
        let result = posix_spawn(&child, executable, &actions, &attributes, argv, environ)
        for fd in childEnds { close(fd) }
        guard result == 0 else {
            for fd in parentEnds { close(fd) }
            throw Failure.spawnFailed(executable: executable, errno: result)
        }
        pid = child
        state = Mutex(State(stdinFD: stdinWrite, openReaders: (stdoutRead >= 0 ? 1 : 0) + (stderrRead >= 0 ? 1 : 0)))
        if stdoutRead >= 0 { startReader(stdoutRead, isStdout: true) }
        if stderrRead >= 0 { startReader(stderrRead, isStdout: false) }
    }

    private static let spawnLock = NSLock()

    /// Writing to a pipe whose reader has gone must be an error, not the end of the test process.
    private static let ignoreSIGPIPE: Void = { signal(SIGPIPE, SIG_IGN) }()

    private func startReader(_ fd: Int32, isStdout: Bool) {
        // A plain thread doing blocking reads: it ends at end of file. (If a grandchild
        // that daemonised keeps the pipe open, the thread stays parked in read; it
        // holds no lock and never blocks a test.)
        let reader = ChildOutputReader(fd: fd, finished: { [weak self] in
            self?.state.withLock { $0.openReaders -= 1 }
        }) { [weak self] bytes in
            guard let self else { return }
            self.state.withLock { state in
                if isStdout {
                    state.partialLine += bytes
                    while let newline = state.partialLine.firstIndex(of: UInt8(ascii: "\n")) {
                        state.lines.append(String(decoding: state.partialLine[..<newline], as: UTF8.self))
                        state.partialLine.removeSubrange(...newline)
                    }
                } else {
                    state.stderrText += bytes
                    if state.stderrText.count > 1 << 20 { state.stderrText.removeFirst(state.stderrText.count - (1 << 19)) }
                }
            }
        }
        reader.start()
    }

    deinit {
        // Never leave a child of ours running or unreaped.
        let stdinFD = state.withLock { $0.stdinFD }
        if stdinFD >= 0 { close(stdinFD) }
        if termination == nil {
            Glibc.kill(pid, SIGKILL)
            var status: Int32 = 0
            _ = waitpid(pid, &status, 0)
        }
    }

    /// How the child ended, or nil while it runs (reaps it once it has ended).
    public var termination: Termination? {
        state.withLock { state in
            if let done = state.termination { return done }
            var status: Int32 = 0
            let result = waitpid(pid, &status, WNOHANG)
            guard result == pid else { return nil }
            let signal = status & 0x7f
            state.termination = signal == 0 ? .exited((status >> 8) & 0xff) : .signalled(signal)
            return state.termination
        }
    }

    public var isRunning: Bool { termination == nil }

    /// The exit status (128 + signal for a child killed by a signal); -1 while it runs.
    public var terminationStatus: Int32 {
        switch termination {
        case .exited(let code): return code
        case .signalled(let signal): return 128 + signal
        case nil: return -1
        }
    }

    /// Complete stdout lines so far.
    public var outputLines: [String] { state.withLock { $0.lines } }

    public var stderrText: String { state.withLock { String(decoding: $0.stderrText, as: UTF8.self) } }

    /// Sends SIGTERM if the child still runs.
    public func terminate() { send(signal: SIGTERM) }

    public func send(signal number: Int32) {
        if isRunning { Glibc.kill(pid, number) }
    }

    /// Writes `line` and a newline to the child's stdin (ignored once stdin is closed).
    public func send(_ line: String) {
        state.withLock { state in
            guard state.stdinFD >= 0 else { return }
            var bytes = Array((line + "\n").utf8)[...]
            while !bytes.isEmpty {
                let written = bytes.withUnsafeBytes { write(state.stdinFD, $0.baseAddress, $0.count) }
                if written < 0 {
                    if errno == EINTR { continue }
                    return
                }
                bytes = bytes.dropFirst(written)
            }
        }
    }

    /// Closes the child's stdin: it reads end of file.
    public func closeInput() {
        state.withLock { state in
            if state.stdinFD >= 0 { close(state.stdinFD) }
            state.stdinFD = -1
        }
    }

    /// Waits until the child exits; its status. Throws if it runs longer than `seconds`.
    @discardableResult
    public func waitForExit(within seconds: Double) async throws -> Int32 {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while isRunning {
            guard ContinuousClock.now < deadline else { throw Failure.timedOut(command: command, seconds: seconds) }
            try await Task.sleep(for: .milliseconds(10))
        }
        return terminationStatus
    }

    /// Blocking form of `waitForExit`, for synchronous callers (set-up and tear-down).
    @discardableResult
    public func waitForExitBlocking(within seconds: Double) throws -> Int32 {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while isRunning {
            guard ContinuousClock.now < deadline else { throw Failure.timedOut(command: command, seconds: seconds) }
            usleep(5_000)
        }
        return terminationStatus
    }

    /// Ends the child: SIGTERM, then SIGKILL after `grace` seconds; always reaps it.
    public func stop(grace: Double = 3) {
        closeInput()
        terminate()
        if (try? waitForExitBlocking(within: grace)) == nil {
            send(signal: SIGKILL)
            _ = try? waitForExitBlocking(within: 5)
        }
    }

    /// Runs a command to completion within `seconds` (killed after that); its status
    /// and stdout (empty unless `captureOutput`: a daemon the command starts would
    /// inherit the pipe).
    public static func run(
        _ executable: String, _ arguments: [String], captureOutput: Bool = true, within seconds: Double = 30
    ) throws -> (status: Int32, output: String) {
        let child = try ChildProcess(executable, arguments, stdout: captureOutput ? .capture : .discard, stderr: .discard)
        do {
            let status = try child.waitForExitBlocking(within: seconds)
            // The reader may still hold the last bytes for a moment after the exit.
            let deadline = ContinuousClock.now + .milliseconds(500)
            while !child.readersDone && ContinuousClock.now < deadline { usleep(1_000) }
            var lines = child.outputLines
            let rest = child.state.withLock { String(decoding: $0.partialLine, as: UTF8.self) }
            if !rest.isEmpty { lines.append(rest) }
            return (status, lines.map { $0 + "\n" }.joined())
        } catch {
            child.stop(grace: 0)
            throw error
        }
    }

    private var readersDone: Bool { state.withLock { $0.openReaders == 0 } }
}

/// Reads a file descriptor to end of file on its own thread.
final class ChildOutputReader: Sendable {
    private let fd: Int32
    private let deliver: @Sendable ([UInt8]) -> Void
    private let finished: @Sendable () -> Void

    init(fd: Int32, finished: @escaping @Sendable () -> Void, deliver: @escaping @Sendable ([UInt8]) -> Void) {
        self.fd = fd
        self.finished = finished
        self.deliver = deliver
    }

    func start() {
        var thread = pthread_t()
        let box = Unmanaged.passRetained(self)
        _ = pthread_create(&thread, nil, { argument in
            let reader = Unmanaged<ChildOutputReader>.fromOpaque(argument!).takeRetainedValue()
            reader.loop()
            return nil
        }, box.toOpaque())
        pthread_detach(thread)
    }

    private func loop() {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 && errno == EINTR { continue }
            guard count > 0 else { break }
            deliver(Array(buffer[..<count]))
        }
        close(fd)
        finished()
    }
}

extension ChildProcess {
    public enum JSONEventFailure: Error, CustomStringConvertible {
        /// The process printed `{"event": "error", ...}`, or never the event asked for.
        case peer(String)

        public var description: String {
            switch self {
            case .peer(let text): return "peer process: \(text)"
            }
        }
    }

    /// The first line of stdout that is a JSON object whose `event` is `event`,
    /// waiting up to `seconds`; an `error` event, an exit or the deadline throws
    /// with the process's stderr.
    public func jsonEvent(_ event: String, within seconds: Double = 20) async throws -> [String: Any] {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            for text in outputLines {
                guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else { continue }
                if object["event"] as? String == "error" { throw JSONEventFailure.peer("\(object) \(stderrText.suffix(2000))") }
                if object["event"] as? String == event { return object }
            }
            guard isRunning else { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        throw JSONEventFailure.peer("no \(event) line within \(seconds) s; stderr: \(stderrText.suffix(2000))")
    }
}
