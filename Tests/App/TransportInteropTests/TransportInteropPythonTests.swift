import ChildProcess
import Foundation
import XCTest

/// p2pchat-interop against py-libp2p 0.8.1's own transport-interop peer (the
/// `interop/transport/ping_test.py` its wheel ships, run as
/// `python -m interop.transport.ping_test`), in both roles, for tcp and ws x
/// noise and tls, under both harnesses (`--test-plans` selects test-plans').
///
/// py-libp2p's listener ignores the IP it is given and publishes its first
/// non-loopback interface address, so each test runs in a network namespace of
/// its own with one documentation address (198.51.100.1) besides loopback:
/// Redis, both peers and all traffic stay inside it. Our listener is given
/// 0.0.0.0 there, as the harnesses do, and must publish that address too.
final class TransportInteropPythonTests: XCTestCase {
    var namespace: TestNamespace!
    var redis: RedisServer!
    var processes: [PeerProcess] = []
    var python: String!

    override func setUp() async throws {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            throw missingTool("P2PCHAT_PYTHON (py-libp2p 0.8.1's venv)", hint: "run ./scripts/test")
        }
        self.python = python
        _ = try RedisServer.executable
        namespace = try TestNamespace()
        redis = try await RedisServer.start(in: namespace)
    }

    override func tearDown() {
        for process in processes { process.stop() }
        redis?.stop()
        namespace?.remove()
    }

    func start(_ label: String, _ environment: [String: String], python harness: Harness? = nil) throws -> PeerProcess {
        let process: PeerProcess
        if let harness {
            var arguments = ["-m", "interop.transport.ping_test"]
            if case .testPlans = harness { arguments.append("--test-plans") }
            process = try PeerProcess(
                label, executable: python, arguments: arguments, environment: environment, namespace: namespace)
        } else {
            process = try PeerProcess(
                label, executable: TransportInteropBinaryTests.binary, environment: environment, namespace: namespace)
        }
        processes.append(process)
        return process
    }

    /// py-libp2p listens, we dial: our dialer exits 0 with the result.
    func pythonListens(_ harness: Harness, transport: String, security: String) async throws {
        let listener = try start(
            "py-libp2p listener",
            harness.environment(transport: transport, security: security, isDialer: false, redis: redis.address, ip: "0.0.0.0"),
            python: harness)
        let dialer = try start(
            "our dialer",
            harness.environment(transport: transport, security: security, isDialer: true, redis: redis.address, timeout: 60))
        let status = try await dialer.waitForExit(within: 90)
        XCTAssertEqual(status, 0, "our dialer:\n\(dialer.stderrTail)\npy-libp2p listener:\n\(listener.stderrTail)")
        assertResult(dialer.stdoutLines, harness: harness)
        XCTAssertTrue(
            dialer.stderrTail.contains("/ip4/\(TestNamespace.address)/tcp/"),
            "py-libp2p published its namespace address: \(dialer.stderrTail)")
    }

    /// We listen on 0.0.0.0, py-libp2p dials: its dialer exits 0 with its result,
    /// having dialled the non-loopback address we published.
    func pythonDials(_ harness: Harness, transport: String, security: String) async throws {
        let listener = try start(
            "our listener",
            harness.environment(transport: transport, security: security, isDialer: false, redis: redis.address, ip: "0.0.0.0"))
        let dialer = try start(
            "py-libp2p dialer",
            harness.environment(transport: transport, security: security, isDialer: true, redis: redis.address, timeout: 60),
            python: harness)
        let status = try await dialer.waitForExit(within: 90)
        XCTAssertEqual(status, 0, "py-libp2p dialer:\n\(dialer.stderrTail)\nour listener:\n\(listener.stderrTail)")
        assertResult(dialer.stdoutLines, harness: harness)
        let suffix = transport == "ws" ? "/ws/p2p/" : "/p2p/"
        XCTAssertTrue(
            listener.stderrTail.contains("address=/ip4/\(TestNamespace.address)/tcp/")
                && listener.stderrTail.contains(suffix),
            "we published the namespace address: \(listener.stderrTail)")
        XCTAssertTrue(listener.process.isRunning, listener.stderrTail)
    }

    func testPythonListenerTCPNoiseTestPlans() async throws {
        try await pythonListens(.testPlans, transport: "tcp", security: "noise")
    }
    func testPythonListenerTCPTLSUnified() async throws {
        try await pythonListens(.unified(testKey: "7e57c0de"), transport: "tcp", security: "tls")
    }
    func testPythonListenerWSNoiseUnified() async throws {
        try await pythonListens(.unified(testKey: "5eed1234"), transport: "ws", security: "noise")
    }
    func testPythonListenerWSTLSTestPlans() async throws {
        try await pythonListens(.testPlans, transport: "ws", security: "tls")
    }
    func testPythonDialerTCPNoiseUnified() async throws {
        try await pythonDials(.unified(testKey: "d1a1e5ab"), transport: "tcp", security: "noise")
    }
    func testPythonDialerTCPTLSTestPlans() async throws {
        try await pythonDials(.testPlans, transport: "tcp", security: "tls")
    }
    func testPythonDialerWSNoiseTestPlans() async throws {
        try await pythonDials(.testPlans, transport: "ws", security: "noise")
    }
    func testPythonDialerWSTLSUnified() async throws {
        try await pythonDials(.unified(testKey: "beefbeef"), transport: "ws", security: "tls")
    }
}
