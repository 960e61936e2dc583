import Identity
import Multiformats
import RedisRESP
import TransportInterop
import XCTest

/// Both harnesses' environments, the result formats, and the address the listener publishes.
final class InteropConfigurationTests: XCTestCase {
    func testTestPlansVariablesAndDefaults() throws {
        let configuration = try InteropConfiguration(environment: [
            "transport": "ws", "security": "tls", "muxer": "yamux", "is_dialer": "true", "version": "swift-p2pchat-v0.1",
        ])
        XCTAssertEqual(configuration.harness, .testPlans)
        XCTAssertEqual(configuration.transport, .ws)
        XCTAssertEqual(configuration.security, .tls)
        XCTAssertTrue(configuration.isDialer)
        XCTAssertEqual(configuration.listenIP, "0.0.0.0")
        XCTAssertEqual(configuration.redis, RedisAddress(host: "redis", port: 6379))
        XCTAssertEqual(configuration.timeoutSeconds, 180)
        XCTAssertEqual(configuration.redisKey, "listenerAddr")
        XCTAssertFalse(configuration.debug)

        let listener = try InteropConfiguration(environment: [
            "transport": "tcp", "security": "noise", "muxer": "yamux", "is_dialer": "false", "ip": "127.0.0.1",
            "redis_addr": "localhost:7000", "test_timeout_seconds": "42",
        ])
        XCTAssertFalse(listener.isDialer)
        XCTAssertEqual(listener.listenIP, "127.0.0.1")
        XCTAssertEqual(listener.redis, RedisAddress(host: "localhost", port: 7000))
        XCTAssertEqual(listener.timeoutSeconds, 42)
    }

    func testUnifiedVariables() throws {
        let configuration = try InteropConfiguration(environment: [
            "IS_DIALER": "false", "REDIS_ADDR": "transport-redis:6379", "TEST_KEY": "a5b50d5e", "TRANSPORT": "tcp",
            "LISTENER_IP": "0.0.0.0", "DEBUG": "true", "SECURE_CHANNEL": "noise", "MUXER": "yamux",
        ])
        XCTAssertEqual(configuration.harness, .unified(testKey: "a5b50d5e"))
        XCTAssertEqual(configuration.redisKey, "a5b50d5e_listener_multiaddr")
        XCTAssertEqual(configuration.redis, RedisAddress(host: "transport-redis", port: 6379))
        XCTAssertTrue(configuration.debug)
        XCTAssertFalse(configuration.isDialer)
        XCTAssertEqual(configuration.timeoutSeconds, 180)
        // Lower-case copies (the runner can add them) are read when the upper-case one is absent.
        let lower = try InteropConfiguration(environment: [
            "TEST_KEY": "0000ffff", "transport": "ws", "secure_channel": "tls", "muxer": "yamux", "is_dialer": "true",
            "REDIS_ADDR": "r:1", "TEST_TIMEOUT_SECS": "5",
        ])
        XCTAssertEqual(lower.transport, .ws)
        XCTAssertEqual(lower.security, .tls)
        XCTAssertEqual(lower.timeoutSeconds, 5)
        // Upper-case names mean nothing to test-plans' harness (no TEST_KEY): its lower-case ones are needed.
        XCTAssertThrowsError(
            try InteropConfiguration(environment: ["TRANSPORT": "tcp", "SECURE_CHANNEL": "noise", "MUXER": "yamux", "IS_DIALER": "true"])
        ) { XCTAssertEqual($0 as? InteropConfigurationError, .missing("transport")) }
    }

    func testWhatWeDoNotSupportOrUnderstandIsRefused() {
        let base = ["transport": "tcp", "security": "noise", "muxer": "yamux", "is_dialer": "true"]
        func refusal(_ changes: [String: String?]) -> InteropConfigurationError? {
            var environment = base
            for (name, value) in changes { environment[name] = value }
            do {
                _ = try InteropConfiguration(environment: environment)
                return nil
            } catch {
                return error
            }
        }
        XCTAssertEqual(refusal(["muxer": "mplex"]), .unsupported(name: "muxer", value: "mplex", supported: ["yamux"]))
        XCTAssertEqual(refusal(["muxer": nil]), .missing("muxer"))
        XCTAssertEqual(refusal(["security": nil]), .missing("security"))
        XCTAssertEqual(refusal(["security": "plaintext"]), .unsupported(name: "security", value: "plaintext", supported: ["noise", "tls"]))
        // QUIC is standalone: no security or muxer needed, and any given is not used.
        XCTAssertNil(refusal(["transport": "quic-v1", "security": nil, "muxer": nil]))
        XCTAssertNil(refusal(["transport": "quic-v1", "muxer": "quic"]))
        XCTAssertEqual(
            refusal(["transport": "webtransport"]), .unsupported(name: "transport", value: "webtransport", supported: ["tcp", "ws", "quic-v1"]))
        XCTAssertEqual(refusal(["transport": "wss"]), .unsupported(name: "transport", value: "wss", supported: ["tcp", "ws", "quic-v1"]))
        XCTAssertEqual(refusal(["is_dialer": nil]), .missing("is_dialer"))
        XCTAssertEqual(refusal(["is_dialer": "maybe"]), .invalid(name: "is_dialer", value: "maybe", expected: "true or false"))
        XCTAssertEqual(refusal(["ip": "localhost"]), .invalid(name: "ip", value: "localhost", expected: "an IPv4 or IPv6 address"))
        XCTAssertEqual(refusal(["ip": "1.2.3.256"]), .invalid(name: "ip", value: "1.2.3.256", expected: "an IPv4 or IPv6 address"))
        XCTAssertEqual(refusal(["redis_addr": "redis:99999"]), .invalid(name: "redis_addr", value: "redis:99999", expected: "host:port"))
        XCTAssertEqual(
            refusal(["test_timeout_seconds": "0"]),
            .invalid(name: "test_timeout_seconds", value: "0", expected: "a whole number of seconds above 0"))
        XCTAssertNil(refusal(["ip": "::"]))
        XCTAssertNil(refusal(["is_dialer": "FALSE"]))
    }

    func testResultLinesOfEachHarness() {
        let result = InteropResult(handshakePlusOneRTT: .microseconds(12_345), pingRTT: .microseconds(1_007))
        XCTAssertEqual(result.lines(for: .testPlans), ["{\"handshakePlusOneRTTMillis\":12.345,\"pingRTTMilllis\":1.007}"])
        XCTAssertEqual(
            result.lines(for: .unified(testKey: "x")),
            ["latency:", "  handshake_plus_one_rtt: 12.345", "  ping_rtt: 1.007", "  unit: ms"])
        let tiny = InteropResult(handshakePlusOneRTT: .nanoseconds(999), pingRTT: .seconds(2))
        XCTAssertEqual(tiny.lines(for: .testPlans), ["{\"handshakePlusOneRTTMillis\":0.000,\"pingRTTMilllis\":2000.000}"])
    }

    func testPublishedAddress() throws {
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        func address(_ text: String) throws -> Multiaddr { try Multiaddr(text) }
        let interfaces = try [
            address("/ip4/127.0.0.1/tcp/4001/ws"), address("/ip4/172.18.0.3/tcp/4001/ws"), address("/ip6/::1/tcp/4001/ws"),
            address("/ip6/fd00::3/tcp/4001/ws"),
        ]
        // An unspecified bind: the first non-loopback address of its family.
        XCTAssertEqual(
            InteropRunner.publishableAddress(bound: try address("/ip4/0.0.0.0/tcp/4001/ws"), interfaces: interfaces, peer: peer)?
                .description, "/ip4/172.18.0.3/tcp/4001/ws/p2p/\(peer)")
        XCTAssertEqual(
            InteropRunner.publishableAddress(bound: try address("/ip6/::/tcp/4001/ws"), interfaces: interfaces, peer: peer)?
                .description, "/ip6/fd00::3/tcp/4001/ws/p2p/\(peer)")
        // Only loopback there: loopback it is.
        XCTAssertEqual(
            InteropRunner.publishableAddress(
                bound: try address("/ip4/0.0.0.0/tcp/9"), interfaces: [try address("/ip4/127.0.0.1/tcp/9")], peer: peer)?
                .description, "/ip4/127.0.0.1/tcp/9/p2p/\(peer)")
        // A named bind is published as it is.
        XCTAssertEqual(
            InteropRunner.publishableAddress(bound: try address("/ip4/127.0.0.1/tcp/5"), interfaces: interfaces, peer: peer)?
                .description, "/ip4/127.0.0.1/tcp/5/p2p/\(peer)")
        XCTAssertNil(InteropRunner.publishableAddress(bound: nil, interfaces: interfaces, peer: peer))
    }
}
