import ChildProcess
import Foundation
import Glibc
import XCTest

/// What to throw when a test's tool is missing: a skip, or a failure too when
/// P2PCHAT_REQUIRE_INTEROP is set (./scripts/test and CI set it: there a missing
/// tool is a broken setup).
func missingTool(_ what: String, hint: String) -> XCTSkip {
    if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
        XCTFail("\(what) is missing but interop is required (P2PCHAT_REQUIRE_INTEROP): \(hint)")
        return XCTSkip("FAILED: \(what) is missing")
    }
    return XCTSkip("SKIPPED: \(what) is missing: \(hint)")
}

/// An executable on PATH (or in the usual system folders), if there.
func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let folders = path.split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
    return folders.map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
}

/// A free TCP port on 127.0.0.1 (bound, read back and released).
func freeLoopbackPort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EMFILE) }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = 0
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let bound = withUnsafeMutablePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { pointer in
            bind(fd, pointer, length) == 0 && getsockname(fd, pointer, &length) == 0
        }
    }
    guard bound else { throw POSIXError(.EADDRINUSE) }
    return Int(UInt16(bigEndian: address.sin_port))
}

/// A network namespace made for one test: loopback, and one veth pair inside
/// it whose first end has `address` (documentation range, exists only here), so
/// peers that publish their first non-loopback address publish that one.
/// Removed by `remove()`; every process in it is run through `ip netns exec`.
final class TestNamespace {
    let name: String
    static let address = "198.51.100.1"
    static let ipPath = findExecutable("ip") ?? "/usr/sbin/ip"

    init() throws {
        guard getuid() == 0 else { throw XCTSkip("SKIPPED: this test needs root (ip netns); CI runs it as root") }
        guard FileManager.default.isExecutableFile(atPath: Self.ipPath) else {
            throw missingTool("ip (iproute2)", hint: "apt-get install iproute2")
        }
        name = "p2pti\(getpid() % 100_000)x\(Int.random(in: 0..<1000))"
        try Self.ip(["netns", "add", name])
        do {
            try Self.ip(["-n", name, "link", "set", "lo", "up"])
            try Self.ip(["-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1"])
            try Self.ip(["-n", name, "addr", "add", "\(Self.address)/24", "dev", "v0"])
            try Self.ip(["-n", name, "link", "set", "v1", "up"])
            try Self.ip(["-n", name, "link", "set", "v0", "up"])
        } catch {
            remove()
            throw error
        }
    }

    /// The command that runs `executable` in the namespace.
    func wrap(_ executable: String, _ arguments: [String]) -> (String, [String]) {
        (Self.ipPath, ["netns", "exec", name, executable] + arguments)
    }

    func remove() {
        _ = try? ChildProcess.run(Self.ipPath, ["netns", "del", name])
    }

    static func ip(_ arguments: [String]) throws {
        let status = try ChildProcess.run(ipPath, arguments).status
        guard status == 0 else {
            throw NSError(domain: "ip", code: Int(status), userInfo: [
                NSLocalizedDescriptionKey: "ip \(arguments.joined(separator: " ")) failed (\(status))"
            ])
        }
    }
}

/// Debian's redis-server, started for one test on a free port (or on 6379 in a
/// namespace of its own) with persistence off, and stopped by `stop()`.
final class RedisServer {
    let process: ChildProcess
    let port: Int
    var address: String { "127.0.0.1:\(port)" }

    static var executable: String {
        get throws {
            guard let path = findExecutable("redis-server") else {
                throw missingTool("redis-server", hint: "apt-get install redis-server (./scripts/test does it)")
            }
            return path
        }
    }

    private init(process: ChildProcess, port: Int) {
        self.process = process
        self.port = port
    }

    /// Starts it and waits (up to 15 s) until it says it accepts connections.
    static func start(in namespace: TestNamespace? = nil) async throws -> RedisServer {
        let executable = try Self.executable
        var lastError = ""
        for _ in 0..<3 {
            let port = namespace == nil ? try freeLoopbackPort() : 6379
            let arguments = [
                "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", NSTemporaryDirectory(), "--daemonize", "no", "--loglevel", "notice",
            ]
            let (command, commandArguments) = namespace?.wrap(executable, arguments) ?? (executable, arguments)
            let process = try ChildProcess(command, commandArguments)
            let deadline = ContinuousClock.now + .seconds(15)
            while ContinuousClock.now < deadline {
                if process.outputLines.contains(where: { $0.contains("Ready to accept connections") }) {
                    return RedisServer(process: process, port: port)
                }
                if !process.isRunning { break }
                try await Task.sleep(for: .milliseconds(20))
            }
            lastError = process.outputLines.suffix(10).joined(separator: "\n") + process.stderrText
            process.stop(grace: 2)
        }
        throw NSError(domain: "redis-server", code: 1, userInfo: [NSLocalizedDescriptionKey: "did not start: \(lastError)"])
    }

    func stop() {
        process.stop(grace: 3)
    }
}

/// One side of the ping test as a process: `executable` with exactly the
/// environment given (plus PATH), in `namespace` when one is given.
final class PeerProcess {
    let process: ChildProcess
    let label: String

    init(
        _ label: String, executable: String, arguments: [String] = [], environment: [String: String],
        namespace: TestNamespace? = nil
    ) throws {
        self.label = label
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        let assignments = (environment.merging(["PATH": path]) { mine, _ in mine })
            .sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }
        let envArguments = ["-i"] + assignments + [executable] + arguments
        let (command, commandArguments) = namespace?.wrap("/usr/bin/env", envArguments) ?? ("/usr/bin/env", envArguments)
        process = try ChildProcess(command, commandArguments)
    }

    /// Waits for it to exit by itself within `seconds`; its status.
    func waitForExit(within seconds: Double) async throws -> Int32 {
        do {
            return try await process.waitForExit(within: seconds)
        } catch {
            XCTFail("\(label) did not exit within \(seconds) s; stderr:\n\(stderrTail)")
            throw error
        }
    }

    var stdoutLines: [String] { process.outputLines }

    var stderrTail: String { String(process.stderrText.suffix(4000)) }

    func stop() { process.stop(grace: 2) }
}
