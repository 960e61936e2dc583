import AutoNAT
import DCUtR
import Host
import Identify
import KadDHT
import MDNS
import Perf
import Ping
import PubSub
import Relay
import RequestResponse
import ServiceLifecycle

// The long-lived parts of a node in swift-service-lifecycle's one shape: a
// `Service` whose `run()` holds the part until graceful shutdown (or
// cancellation) and returns once it is stopped. Run them in a `ServiceGroup`,
// the host first: the group shuts services down in reverse order, each
// awaited, so the protocols stop before the host under them closes.

/// The host as a `Service`: `run()` holds it until graceful shutdown or
/// cancellation, then closes it (listeners, connections, its maintenance task).
public struct HostService: Service, CustomStringConvertible {
    public let host: Libp2pHost

    public init(_ host: Libp2pHost) {
        self.host = host
    }

    public func run() async throws {
        // Throws only on cancellation: the host is closed either way.
        try? await gracefulShutdown()
        await host.close()
    }

    public var description: String { "host \(host.localPeer)" }
}

/// A part with a start and a stop (`start()`/`stop()`, `start()`/`close()`)
/// as a `Service`: `run()` starts it (when `start` is given; nil for a part
/// started beforehand, such as one whose addresses were printed), holds it
/// until graceful shutdown or cancellation, then awaits `stop`.
public struct StartStopService: Service, CustomStringConvertible {
    public let description: String
    let start: (@Sendable () async throws -> Void)?
    let stop: @Sendable () async -> Void

    public init(
        _ name: String, start: (@Sendable () async throws -> Void)? = nil, stop: @escaping @Sendable () async -> Void
    ) {
        self.description = name
        self.start = start
        self.stop = stop
    }

    public func run() async throws {
        try await start?()
        try? await gracefulShutdown()
        await stop()
    }
}

// The services started beforehand (their start is synchronous and they serve
// at once), as the group's: run() holds them and stops them at shutdown.

extension AutoNATService {
    public func service() -> StartStopService { StartStopService("autonat", stop: { await self.stop() }) }
}

extension HolePunchService {
    public func service() -> StartStopService { StartStopService("dcutr", stop: { await self.stop() }) }
}

extension KadDHT {
    public func service() -> StartStopService { StartStopService("kad-dht", stop: { await self.close() }) }
}

extension PubSubService {
    public func service() -> StartStopService { StartStopService("pubsub", stop: { await self.stop() }) }
}

extension IdentifyService {
    public func service() -> StartStopService { StartStopService("identify", stop: { await self.stop() }) }
}

extension PingService {
    public func service() -> StartStopService { StartStopService("ping", stop: { await self.stop() }) }
}

extension PerfService {
    public func service() -> StartStopService { StartStopService("perf", stop: { await self.stop() }) }
}

extension RelayService {
    public func service() -> StartStopService { StartStopService("relay", stop: { await self.stop() }) }
}

extension RequestResponse {
    public func service() -> StartStopService {
        StartStopService("request-response \(protocols.joined(separator: ","))", stop: { await self.stop() })
    }
}

extension MDNSService {
    public nonisolated func service() -> StartStopService { StartStopService("mdns", stop: { await self.stop() }) }
}
