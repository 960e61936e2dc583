import Host
import Identify
import Identity
import Libp2p
import LibP2PSecurity
import Logging
import Multiformats
import NIOCore
import NIOPosix
import Ping
import RedisRESP
import Transport

/// Why a run failed (the binary then exits non-zero).
public enum InteropFailure: Error, Sendable, CustomStringConvertible {
    /// Redis did not answer PING before the deadline; the last error seen.
    case redisUnavailable(RedisAddress, last: String)
    case redis(RedisError)
    /// The listener's address did not come within the timeout.
    case noListenerAddress(key: String, seconds: Int)
    case badListenerAddress(String)
    case listenFailed(String)
    /// No address to publish (the bind gave none we can name).
    case nothingToPublish
    case dialFailed(String)
    case pingFailed(String)
    /// The dial and the ping did not finish within the timeout.
    case timedOut(seconds: Int)
    /// The listener waited the whole timeout without being stopped by the harness.
    case listenerNotStopped(seconds: Int)
    /// The host refused its transport configuration.
    case hostConfiguration(TransportConfigurationError)

    public var description: String {
        switch self {
        case .redisUnavailable(let address, let last): return "redis at \(address) did not answer in time (last: \(last))"
        case .redis(let error): return "\(error)"
        case .noListenerAddress(let key, let seconds): return "no listener address in redis key \(key) within \(seconds) s"
        case .badListenerAddress(let text): return "the listener published an address we cannot use: \(text)"
        case .listenFailed(let why): return "cannot listen: \(why)"
        case .nothingToPublish: return "listening, but no address to publish"
        case .hostConfiguration(let error): return "\(error)"
        case .dialFailed(let why): return "dial failed: \(why)"
        case .pingFailed(let why): return "ping failed: \(why)"
        case .timedOut(let seconds): return "dial and ping did not finish within \(seconds) s"
        case .listenerNotStopped(let seconds): return "listener was not stopped within \(seconds) s"
        }
    }
}

/// Runs one side of the transport-interop ping test with our stack.
public struct InteropRunner: Sendable {
    public let configuration: InteropConfiguration
    public let logger: Logger
    public static let agentVersion = "p2pchat-interop/0.1.0"

    public init(configuration: InteropConfiguration, logger: Logger = Logger(label: "p2pchat.interop")) {
        self.configuration = configuration
        self.logger = logger
    }

    /// A host with only the configured transport and security protocol (and
    /// Yamux), serving ping and identify, on a fresh Ed25519 key.
    func makeHost() throws(InteropFailure) -> Libp2pHost {
        let transport: Libp2pHostBuilder.TransportChoice
        switch configuration.transport {
        case .tcp: transport = .tcp()
        case .ws: transport = .webSocket()
        case .quicV1: transport = .quic()
        }
        let security: any SecurityProtocol
        switch configuration.security {
        case .noise: security = NoiseSecurity()
        case .tls: security = TLSSecurity()
        }
        let host: Libp2pHost
        do {
            host = try Libp2pHostBuilder(key: PrivateKey.generateEd25519()).transports(transport).security([security]).build()
        } catch {
            throw .hostConfiguration(error)
        }
        IdentifyService(host: host, agentVersion: Self.agentVersion).start()
        PingService(host: host).start()
        return host
    }

    /// Connects to Redis, retrying every 100 ms until it answers PING (the
    /// harness may start us before Redis is ready) or the timeout passes.
    func connectRedis() async throws(InteropFailure) -> RedisClient {
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(configuration.timeoutSeconds)
        var last = "none"
        while true {
            do {
                let client = try await RedisClient.connect(to: configuration.redis, connectTimeout: .seconds(2))
                do {
                    try await client.ping()
                    return client
                } catch {
                    await client.close()
                    throw error
                }
            } catch {
                last = "\(error)"
                logger.debug("redis not ready", metadata: ["error": "\(error)"])
            }
            guard clock.now + .milliseconds(100) < deadline else {
                throw .redisUnavailable(configuration.redis, last: last)
            }
            try? await Task.sleep(for: .milliseconds(100))
        }
    }

    /// The listen address for the configured transport and IP (port chosen by the system).
    var listenAddress: Multiaddr {
        get throws(InteropFailure) {
            let ipPart = InteropConfiguration.isIPv4(configuration.listenIP) ? "ip4" : "ip6"
            let ending = switch configuration.transport {
            case .tcp: "tcp/0"
            case .ws: "tcp/0/ws"
            case .quicV1: "udp/0/quic-v1"
            }
            do {
                return try Multiaddr("/\(ipPart)/\(configuration.listenIP)/\(ending)")
            } catch {
                throw .listenFailed("bad listen address: \(error)")
            }
        }
    }

    /// Listens, publishes our full address (with /p2p/) with RPUSH, then waits
    /// to be stopped; throws `listenerNotStopped` once the timeout passes.
    public func runListener() async throws(InteropFailure) {
        let redis = try await connectRedis()
        let host = try makeHost()
        let bound: [Multiaddr]
        do {
            bound = try await host.listen(on: [try listenAddress])
        } catch let failure as InteropFailure {
            throw failure
        } catch {
            throw .listenFailed("\(error)")
        }
        guard
            let published = Self.publishableAddress(
                bound: bound.first, interfaces: host.listenAddresses, peer: host.localPeer)
        else { throw .nothingToPublish }
        let key = configuration.redisKey
        do {
            // A stale entry (an earlier run that no dialer popped) must not be dialled.
            try await redis.delete(key)
            try await redis.rpush(key, published.description)
        } catch {
            throw .redis(error)
        }
        logger.info("listening; address published", metadata: ["address": "\(published)", "key": "\(key)"])
        try? await Task.sleep(for: .seconds(configuration.timeoutSeconds))
        throw .listenerNotStopped(seconds: configuration.timeoutSeconds)
    }

    /// Pops the listener's address (BLPOP), dials it and pings it once. `report`
    /// gets the result as soon as it is measured (before the host is closed: a
    /// harness may stop us once the listener exits).
    public func runDialer(report: @Sendable (InteropResult) -> Void) async throws(InteropFailure) {
        let redis = try await connectRedis()
        let host = try makeHost()
        let key = configuration.redisKey
        let text: String?
        do {
            text = try await redis.blpop(key, timeoutSeconds: configuration.timeoutSeconds)
        } catch {
            throw .redis(error)
        }
        await redis.close()
        guard let text else { throw .noListenerAddress(key: key, seconds: configuration.timeoutSeconds) }
        let address: Multiaddr
        do { address = try Multiaddr(text) } catch { throw .badListenerAddress("\(text): \(error)") }
        guard address.peerID != nil else { throw .badListenerAddress("\(text): no /p2p/ peer id") }
        logger.info("dialing", metadata: ["address": "\(address)"])

        let measured: Result<InteropResult, InteropFailure>
        do {
            measured = try await withTimeout(.seconds(configuration.timeoutSeconds), "dial and ping") {
                await Self.dialAndPing(host, address)
            }
        } catch {
            measured = .failure(.timedOut(seconds: configuration.timeoutSeconds))
        }
        switch measured {
        case .success(let result):
            report(result)
            logger.info(
                "done", metadata: ["handshakePlusOneRTT": "\(result.handshakePlusOneRTT)", "pingRTT": "\(result.pingRTT)"])
            _ = try? await withTimeout(.seconds(2), "closing the host") { await host.close() }
        case .failure(let failure):
            _ = try? await withTimeout(.seconds(2), "closing the host") { await host.close() }
            throw failure
        }
    }

    /// The measurement: the clock starts just before the dial and stops when
    /// the first ping's echo is back; the ping's own round trip is reported too.
    static func dialAndPing(_ host: Libp2pHost, _ address: Multiaddr) async -> Result<InteropResult, InteropFailure> {
        let clock = ContinuousClock()
        let start = clock.now
        let connection: Connection
        do {
            connection = try await host.connect(address)
        } catch {
            return .failure(.dialFailed("\(error)"))
        }
        let rtt: Duration
        do {
            rtt = try await PingService.ping(connection, count: 1)[0]
        } catch {
            return .failure(.pingFailed("\(error)"))
        }
        return .success(InteropResult(handshakePlusOneRTT: clock.now - start, pingRTT: rtt))
    }

    /// The address to publish: the bound one if it names a host; for an
    /// unspecified bind (0.0.0.0, ::), the first interface address of the same
    /// family that is not loopback (so a peer in another container can dial it),
    /// or loopback when there is nothing else. With our /p2p/ id appended.
    public static func publishableAddress(bound: Multiaddr?, interfaces: [Multiaddr], peer: PeerID) -> Multiaddr? {
        guard let bound else { return nil }
        let withPeer = { (address: Multiaddr) in address.encapsulating(.p2p(peer.bytes)) }
        switch bound.components.first {
        case .ip4(let ip)? where ip == [0, 0, 0, 0]:
            let candidates = interfaces.filter { if case .ip4? = $0.components.first { return true } else { return false } }
            let chosen = candidates.first { !isLoopback($0) } ?? candidates.first
            return chosen.map(withPeer)
        case .ip6(let ip)? where ip.allSatisfy({ $0 == 0 }):
            let candidates = interfaces.filter { if case .ip6? = $0.components.first { return true } else { return false } }
            let chosen = candidates.first { !isLoopback($0) } ?? candidates.first
            return chosen.map(withPeer)
        default:
            return withPeer(bound)
        }
    }

    static func isLoopback(_ address: Multiaddr) -> Bool {
        switch address.components.first {
        case .ip4(let ip)?: return ip.first == 127
        case .ip6(let ip)?: return ip == [UInt8](repeating: 0, count: 15) + [1]
        default: return false
        }
    }
}
