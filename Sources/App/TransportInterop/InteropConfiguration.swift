import Foundation
import RedisRESP

/// Which harness runs us: the two differ in variable names, the Redis key and the output.
public enum InteropHarness: Sendable, Equatable {
    /// libp2p/test-plans transport-interop: lower-case variables (`transport`,
    /// `security`, `is_dialer`, ...), the key `listenerAddr`, one JSON line.
    case testPlans
    /// libp2p/unified-testing transport: upper-case variables (`TRANSPORT`,
    /// `SECURE_CHANNEL`, `IS_DIALER`, ..., `TEST_KEY`), the key
    /// `<TEST_KEY>_listener_multiaddr`, a YAML `latency:` block.
    case unified(testKey: String)
}

/// The transports we run in the matrix.
public enum InteropTransport: String, Sendable, CaseIterable {
    case tcp
    case ws
    case quicV1 = "quic-v1"

    /// QUIC secures and multiplexes by itself: the harnesses set no security or muxer for it.
    public var isStandalone: Bool { self == .quicV1 }
}

/// The security protocols we run in the matrix.
public enum InteropSecurity: String, Sendable, CaseIterable {
    case noise
    case tls
}

/// What is wrong with the environment we were given.
public enum InteropConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    case missing(String)
    case invalid(name: String, value: String, expected: String)
    /// A transport, security protocol or muxer of the matrix that we do not implement.
    case unsupported(name: String, value: String, supported: [String])

    public var description: String {
        switch self {
        case .missing(let name): return "environment variable \(name) is not set"
        case .invalid(let name, let value, let expected): return "\(name)=\"\(value)\": expected \(expected)"
        case .unsupported(let name, let value, let supported):
            return "\(name)=\"\(value)\" is not supported (supported: \(supported.joined(separator: ", ")))"
        }
    }
}

/// The test's parameters, read from the environment the harness sets.
public struct InteropConfiguration: Sendable, Equatable {
    public var harness: InteropHarness
    public var transport: InteropTransport
    public var security: InteropSecurity
    /// Always "yamux": the only muxer we speak.
    public var muxer: String
    public var isDialer: Bool
    /// The IP the listener binds (0.0.0.0: every interface, a non-loopback one published).
    public var listenIP: String
    public var redis: RedisAddress
    /// How long the dialer waits for the listener's address and for the test,
    /// and how long the listener waits to be killed before it gives up (exit 1).
    public var timeoutSeconds: Int
    /// Verbose logs on stderr (unified-testing's DEBUG=true).
    public var debug: Bool

    /// The Redis list the listener pushes its address to and the dialer pops.
    public var redisKey: String {
        switch harness {
        case .testPlans: return "listenerAddr"
        case .unified(let testKey): return "\(testKey)_listener_multiaddr"
        }
    }

    public static let defaultTimeoutSeconds = 180
    public static let defaultRedisAddress = "redis:6379"

    /// Reads the variables of whichever harness set them: unified-testing's when
    /// `TEST_KEY` is set, test-plans' otherwise. Under unified-testing a variable
    /// missing in upper case is also looked up in lower case (its runner can add
    /// lower-case copies).
    public init(environment: [String: String]) throws(InteropConfigurationError) {
        func value(_ name: String) -> String? {
            guard let text = environment[name]?.trimmingCharacters(in: .whitespaces), !text.isEmpty else { return nil }
            return text
        }
        let unifiedKey = value("TEST_KEY")
        let harness: InteropHarness = unifiedKey.map { .unified(testKey: $0) } ?? .testPlans
        // The variable names of the harness: test-plans' lower-case, unified-testing's upper-case.
        let names: (transport: String, security: String, muxer: String, dialer: String, ip: String, redis: String, timeout: String)
        switch harness {
        case .testPlans:
            names = ("transport", "security", "muxer", "is_dialer", "ip", "redis_addr", "test_timeout_seconds")
        case .unified:
            names = ("TRANSPORT", "SECURE_CHANNEL", "MUXER", "IS_DIALER", "LISTENER_IP", "REDIS_ADDR", "TEST_TIMEOUT_SECS")
        }
        func read(_ name: String) -> String? {
            if let text = value(name) { return text }
            if case .unified = harness { return value(name.lowercased()) }
            return nil
        }
        if let key = unifiedKey, !key.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" }) {
            throw .invalid(name: "TEST_KEY", value: key, expected: "letters, digits, - or _ (e.g. a5b50d5e)")
        }

        guard let transportName = read(names.transport) else { throw .missing(names.transport) }
        guard let transport = InteropTransport(rawValue: transportName.lowercased()) else {
            throw .unsupported(name: names.transport, value: transportName, supported: InteropTransport.allCases.map(\.rawValue))
        }
        // A standalone transport (QUIC) has TLS 1.3 and streams of its own; what the harness sets for them is not used.
        guard let securityName = read(names.security) ?? (transport.isStandalone ? "tls" : nil) else { throw .missing(names.security) }
        let security: InteropSecurity
        if let known = InteropSecurity(rawValue: securityName.lowercased()) {
            security = known
        } else if transport.isStandalone {
            security = .tls
        } else {
            throw .unsupported(name: names.security, value: securityName, supported: InteropSecurity.allCases.map(\.rawValue))
        }
        guard let muxer = read(names.muxer) ?? (transport.isStandalone ? "yamux" : nil) else { throw .missing(names.muxer) }
        guard muxer.lowercased() == "yamux" || transport.isStandalone else {
            throw .unsupported(name: names.muxer, value: muxer, supported: ["yamux"])
        }
        guard let dialerText = read(names.dialer) else { throw .missing(names.dialer) }
        let isDialer: Bool
        switch dialerText.lowercased() {
        case "true", "1", "yes": isDialer = true
        case "false", "0", "no": isDialer = false
        default: throw .invalid(name: names.dialer, value: dialerText, expected: "true or false")
        }
        let ip = read(names.ip) ?? "0.0.0.0"
        guard Self.isIPv4(ip) || Self.isIPv6(ip) else {
            throw .invalid(name: names.ip, value: ip, expected: "an IPv4 or IPv6 address")
        }
        let redisText = read(names.redis) ?? Self.defaultRedisAddress
        let redis: RedisAddress
        do { redis = try RedisAddress(parsing: redisText) } catch {
            throw .invalid(name: names.redis, value: redisText, expected: "host:port")
        }
        var timeout = Self.defaultTimeoutSeconds
        if let text = read(names.timeout) {
            guard let seconds = Int(text), seconds > 0 else {
                throw .invalid(name: names.timeout, value: text, expected: "a whole number of seconds above 0")
            }
            timeout = seconds
        }
        let debug = (value("DEBUG") ?? value("debug")).map { ["true", "1", "yes"].contains($0.lowercased()) } ?? false

        self.harness = harness
        self.transport = transport
        self.security = security
        self.muxer = "yamux"
        self.isDialer = isDialer
        self.listenIP = ip
        self.redis = redis
        self.timeoutSeconds = timeout
        self.debug = debug
    }

    static func isIPv4(_ text: String) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { part in
            !part.isEmpty && part.count <= 3 && part.allSatisfy(\.isASCII) && part.allSatisfy(\.isNumber)
                && Int(part).map { $0 <= 255 } == true
        }
    }

    static func isIPv6(_ text: String) -> Bool {
        text.contains(":") && text.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
    }
}
