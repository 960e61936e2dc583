import ChildProcess
import Foundation
import XCTest

/// The environment of one side, as each harness sets it.
enum Harness {
    case testPlans
    case unified(testKey: String)

    /// The variables for one side (test-plans: lower-case; unified-testing: upper-case and TEST_KEY).
    func environment(
        transport: String, security: String?, isDialer: Bool, redis: String, ip: String = "127.0.0.1", timeout: Int = 30
    ) -> [String: String] {
        switch self {
        case .testPlans:
            var environment = [
                "transport": transport, "is_dialer": "\(isDialer)", "ip": ip,
                "redis_addr": redis, "test_timeout_seconds": "\(timeout)",
            ]
            if let security {
                environment["security"] = security
                environment["muxer"] = "yamux"
            }
            return environment
        case .unified(let testKey):
            var environment = [
                "TRANSPORT": transport, "IS_DIALER": "\(isDialer)",
                "LISTENER_IP": ip, "REDIS_ADDR": redis, "TEST_KEY": testKey, "DEBUG": "false",
                "TEST_TIMEOUT_SECS": "\(timeout)",
            ]
            if let security {
                environment["SECURE_CHANNEL"] = security
                environment["MUXER"] = "yamux"
            }
            return environment
        }
    }
}

/// Checks a dialer's stdout against the harness's format: test-plans' single
/// JSON line, or unified-testing's YAML block (as its runner greps it); the two
/// durations in milliseconds, handshake plus one round trip at least the round trip.
func assertResult(_ lines: [String], harness: Harness, file: StaticString = #filePath, line: UInt = #line) {
    switch harness {
    case .testPlans:
        XCTAssertEqual(lines.count, 1, "stdout: \(lines)", file: file, line: line)
        guard let text = lines.first,
            let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any],
            let handshake = (object["handshakePlusOneRTTMillis"] as? NSNumber)?.doubleValue,
            let ping = (object["pingRTTMilllis"] as? NSNumber)?.doubleValue
        else {
            return XCTFail("not the JSON result: \(lines)", file: file, line: line)
        }
        XCTAssertEqual(object.count, 2, "\(text)", file: file, line: line)
        XCTAssertGreaterThan(ping, 0, file: file, line: line)
        XCTAssertGreaterThanOrEqual(handshake, ping, file: file, line: line)
        XCTAssertLessThan(handshake, 30_000, file: file, line: line)
    case .unified:
        XCTAssertEqual(lines.count, 4, "stdout: \(lines)", file: file, line: line)
        guard lines.count == 4 else { return }
        XCTAssertEqual(lines[0], "latency:", file: file, line: line)
        XCTAssertEqual(lines[3], "  unit: ms", file: file, line: line)
        func number(_ line: String, _ key: String) -> Double? {
            guard line.hasPrefix("  \(key): ") else { return nil }
            return Double(line.dropFirst(key.count + 4))
        }
        guard let handshake = number(lines[1], "handshake_plus_one_rtt"), let ping = number(lines[2], "ping_rtt") else {
            return XCTFail("not the YAML result: \(lines)", file: file, line: line)
        }
        XCTAssertGreaterThan(ping, 0, file: file, line: line)
        XCTAssertGreaterThanOrEqual(handshake, ping, file: file, line: line)
        XCTAssertLessThan(handshake, 30_000, file: file, line: line)
    }
}

/// p2pchat-interop against itself, as the matrix runs it: a real redis-server,
/// the listener and the dialer as processes, every transport x security pair we
/// declare (tcp, ws x noise, tls; yamux), under both harnesses' environments;
/// and the failures the contract asks for (non-zero exits).
final class TransportInteropBinaryTests: XCTestCase {
    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("p2pchat-interop").path
    }

    var redis: RedisServer!
    var processes: [PeerProcess] = []

    override func setUp() async throws {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: Self.binary), "build p2pchat-interop first")
        redis = try await RedisServer.start()
    }

    override func tearDown() {
        for process in processes { process.stop() }
        redis?.stop()
    }

    func start(_ label: String, _ environment: [String: String]) throws -> PeerProcess {
        let process = try PeerProcess(label, executable: Self.binary, environment: environment)
        processes.append(process)
        return process
    }

    /// Our listener and our dialer: the dialer exits 0 with the result; the
    /// listener is still waiting (the harness kills it).
    /// `security` nil: not set at all, as the harnesses do for QUIC.
    func pingPair(_ harness: Harness, transport: String, security: String?) async throws {
        let listener = try start(
            "listener", harness.environment(transport: transport, security: security, isDialer: false, redis: redis.address))
        let dialer = try start(
            "dialer", harness.environment(transport: transport, security: security, isDialer: true, redis: redis.address))
        let status = try await dialer.waitForExit(within: 60)
        XCTAssertEqual(status, 0, "dialer stderr:\n\(dialer.stderrTail)\nlistener stderr:\n\(listener.stderrTail)")
        assertResult(dialer.stdoutLines, harness: harness)
        XCTAssertTrue(listener.process.isRunning, "the listener waits until it is stopped: \(listener.stderrTail)")
        XCTAssertEqual(listener.stdoutLines, [], "the listener writes nothing on stdout")
    }

    func testTestPlansTCPNoise() async throws { try await pingPair(.testPlans, transport: "tcp", security: "noise") }
    func testTestPlansQUIC() async throws { try await pingPair(.testPlans, transport: "quic-v1", security: nil) }
    func testUnifiedQUIC() async throws { try await pingPair(.unified(testKey: "9uic0001"), transport: "quic-v1", security: nil) }
    func testTestPlansTCPTLS() async throws { try await pingPair(.testPlans, transport: "tcp", security: "tls") }
    func testTestPlansWSNoise() async throws { try await pingPair(.testPlans, transport: "ws", security: "noise") }
    func testTestPlansWSTLS() async throws { try await pingPair(.testPlans, transport: "ws", security: "tls") }
    func testUnifiedTCPNoise() async throws { try await pingPair(.unified(testKey: "a5b50d5e"), transport: "tcp", security: "noise") }
    func testUnifiedTCPTLS() async throws { try await pingPair(.unified(testKey: "0badcafe"), transport: "tcp", security: "tls") }
    func testUnifiedWSNoise() async throws { try await pingPair(.unified(testKey: "1234abcd"), transport: "ws", security: "noise") }
    func testUnifiedWSTLS() async throws { try await pingPair(.unified(testKey: "ffff0000"), transport: "ws", security: "tls") }

    /// Under unified-testing the key is namespaced: a listener of another test
    /// (another TEST_KEY) on the same Redis is never dialled.
    func testUnifiedKeysKeepTestsApart() async throws {
        let other = try start(
            "other listener",
            Harness.unified(testKey: "00000001").environment(
                transport: "tcp", security: "noise", isDialer: false, redis: redis.address))
        let environment = Harness.unified(testKey: "00000002").environment(
            transport: "tcp", security: "noise", isDialer: true, redis: redis.address, timeout: 2)
        let dialer = try start("dialer", environment)
        let status = try await dialer.waitForExit(within: 30)
        XCTAssertNotEqual(status, 0, "no listener of its own: it must fail")
        XCTAssertEqual(dialer.stdoutLines, [])
        XCTAssertTrue(dialer.stderrTail.contains("00000002_listener_multiaddr"), dialer.stderrTail)
        XCTAssertTrue(other.process.isRunning)
    }

    /// A listener that nobody stops exits non-zero once its timeout has passed.
    func testListenerExitsNonZeroAfterItsTimeout() async throws {
        let listener = try start(
            "listener",
            Harness.testPlans.environment(transport: "tcp", security: "noise", isDialer: false, redis: redis.address, timeout: 2))
        let status = try await listener.waitForExit(within: 30)
        XCTAssertEqual(status, 1, listener.stderrTail)
        XCTAssertTrue(listener.stderrTail.contains("not stopped"), listener.stderrTail)
    }

    /// A dialer whose listener never publishes fails after its timeout (BLPOP).
    func testDialerWithoutListenerExitsNonZero() async throws {
        let dialer = try start(
            "dialer",
            Harness.testPlans.environment(transport: "ws", security: "tls", isDialer: true, redis: redis.address, timeout: 2))
        let status = try await dialer.waitForExit(within: 30)
        XCTAssertEqual(status, 1, dialer.stderrTail)
        XCTAssertEqual(dialer.stdoutLines, [])
        XCTAssertTrue(dialer.stderrTail.contains("no listener address"), dialer.stderrTail)
    }

    /// A combination we do not implement is refused at once, with exit 2 and the reason on stderr.
    func testUnsupportedCombinationsExitTwo() async throws {
        var mplex = Harness.testPlans.environment(transport: "tcp", security: "noise", isDialer: true, redis: redis.address)
        mplex["muxer"] = "mplex"
        let webTransport = Harness.unified(testKey: "abcdef01").environment(
            transport: "webtransport", security: nil, isDialer: false, redis: redis.address)
        for (environment, expected) in [(mplex, "muxer=\"mplex\""), (webTransport, "TRANSPORT=\"webtransport\"")] {
            let process = try start("refused", environment)
            let status = try await process.waitForExit(within: 30)
            XCTAssertEqual(status, 2, process.stderrTail)
            XCTAssertTrue(process.stderrTail.contains(expected), process.stderrTail)
            XCTAssertEqual(process.stdoutLines, [])
        }
    }

    /// Redis started after us: both sides retry until it answers (compose starts
    /// the containers without waiting for Redis to be ready).
    func testBothSidesWaitForALateRedis() async throws {
        redis.stop()
        let port = try freeLoopbackPort()
        let address = "127.0.0.1:\(port)"
        let listener = try start(
            "listener", Harness.testPlans.environment(transport: "tcp", security: "tls", isDialer: false, redis: address))
        let dialer = try start(
            "dialer", Harness.testPlans.environment(transport: "tcp", security: "tls", isDialer: true, redis: address))
        try await Task.sleep(for: .milliseconds(700))
        XCTAssertTrue(listener.process.isRunning && dialer.process.isRunning)
        let late = try ChildProcess(
            try RedisServer.executable, ["--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout: .discard, stderr: .discard)
        defer { late.stop(grace: 3) }
        let status = try await dialer.waitForExit(within: 60)
        XCTAssertEqual(status, 0, dialer.stderrTail + listener.stderrTail)
        assertResult(dialer.stdoutLines, harness: .testPlans)
    }
}
