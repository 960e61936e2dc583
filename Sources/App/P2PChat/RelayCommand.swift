import ArgumentParser
import AutoNAT
import DCUtR
import Foundation
import Host
import Identify
import Identity
import Libp2p
import Multiformats
import NIOPosix
import Ping
import Relay
import ServiceLifecycle
import Transport

/// `p2pchat relay`: a public node that relays (circuit relay v2 hop), answers
/// AutoNAT requests, serves the DHT (a bootstrap node for chats), identify and ping.
struct RelayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Run a public relay node (circuit relay v2, AutoNAT server, DHT server, identify, ping) until SIGINT or SIGTERM.")

    @Option(help: "Address to listen on (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/4001", "/ip6/::/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1", "/ip6/::/udp/4001/quic-v1"]

    @Flag(help: "One JSON object per line on stdout for every event.")
    var json = false

    @Option(name: .customLong("max-reservations"), help: "Reservations held at once.")
    var maxReservations = RelayLimits().maxReservations

    @Option(name: .customLong("circuit-bytes"), help: "Bytes a circuit may relay in each direction (0: unlimited).")
    var circuitBytes: UInt64 = RelayLimits().circuit.data ?? 0

    @Option(name: .customLong("circuit-seconds"), help: "Seconds a circuit may last (0: unlimited).")
    var circuitSeconds: UInt32 = RelayLimits().circuit.duration ?? 0

    @Option(name: .customLong("autonat-dial-timeout"), help: ArgumentHelp("Seconds per AutoNAT dial back.", visibility: .hidden))
    var autonatDialTimeout: Double = 10

    @Option(help: "A DHT peer to join through (repeatable, with /p2p/ID).")
    var bootstrap: [String] = []

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let signals = TerminationSignalService()
        let out = ChatOutput(json: json)
        let (key, inUse) = identity.key(fileByDefault: false)
        inUse?.report(to: out)
        let (host, identify, ping, _) = makeNATHost(key: key, options: identity)
        var limits = RelayLimits()
        limits.maxReservations = maxReservations
        limits.circuit = CircuitLimit(duration: circuitSeconds == 0 ? nil : circuitSeconds, data: circuitBytes == 0 ? nil : circuitBytes)
        let relay = RelayService(host: host, limits: limits)
        relay.start()
        var autonatConfiguration = AutoNATService.Configuration()
        autonatConfiguration.dialTimeout = .milliseconds(Int(autonatDialTimeout * 1000))
        autonatConfiguration.dialBackTransports = [QUICTransport(group: host.group)]
        let autonat = AutoNATService(host: host, configuration: autonatConfiguration)
        let reachability = autonat.reachabilityChanges()
        autonat.start()
        await listenOrExit(host, on: listen) { out.error($0) }
        out.emit("local_peer", ["peer": "\(host.localPeer)"], human: "Local peer id: \(host.localPeer)")
        for address in host.listenAddresses {
            let full = address.encapsulating(.p2p(host.localPeer.bytes))
            out.emit("listening", ["addr": "\(full)"], human: "Listening on \(full)")
        }
        // A DHT server, so that chats can use the relay as their bootstrap node.
        let dht = startDHT(host: host, server: true)
        if !bootstrap.isEmpty {
            do { _ = try await dht.bootstrap(peers: bootstrap.map(parseAddress)) } catch { out.error("DHT bootstrap: \(error)") }
        }
        await runUntilTerminationSignal(
            signals,
            [HostService(host), identify.service(), ping.service(), relay.service(), autonat.service(), dht.service()],
            loops: [{ for await change in reachability { reportReachability(change, to: out) } }])
    }
}

/// A host for NAT traversal: TCP reusing its listening port for dials (so
/// that peers observe the port we listen on), WebSocket, QUIC (whose dials
/// leave from its listening socket), and `/p2p-circuit`;
/// with identify and ping (started; stop them before the host).
func makeNATHost(key: PrivateKey, options: IdentityOptions) -> (Libp2pHost, IdentifyService, PingService, CircuitTransport) {
    let circuit = CircuitTransport()
    let host: Libp2pHost
    do {
        host = try Libp2pHostBuilder(key: key)
            .transports(.tcp(reusePort: true), .webSocket(), .quic(), .transport(circuit))
            .security(options.securityProtocols())
            .build()
    } catch {
        exitWithError("\(error)")
    }
    circuit.attach(host)
    let identify = IdentifyService(host: host, agentVersion: "p2pchat/\(p2pchatVersion)")
    identify.start()
    let ping = PingService(host: host)
    ping.start()
    return (host, identify, ping, circuit)
}

/// The chat's NAT traversal: AutoNAT (client and server), hole punching of
/// relayed connections, and AutoRelay: while AutoNAT says we are not reachable
/// from outside (or says nothing for a while), reservations on two relays
/// found by themselves (`--relay` first, then bootstrap peers, then any peer
/// that offers hop), whose circuit addresses we then advertise.
struct ChatNATTraversal: Sendable {
    let autonat: AutoNATService
    let holePunch: HolePunchService
    let autoRelay: AutoRelayService
    /// The reachability watcher, AutoRelay and the two event printers: `stop` cancels and awaits them.
    private let tasks: [Task<Void, Never>]

    init(
        host: Libp2pHost, circuit: CircuitTransport, relay: Multiaddr?, bootstrap: [Multiaddr], holePunchDelay: Double,
        roles: HolePunchService.Roles = .adaptive, out: ChatOutput
    ) {
        var configuration = AutoNATService.Configuration()
        // A home node may know one other peer (its relay): one answer decides.
        configuration.threshold = 1
        configuration.dialBackTransports = [QUICTransport(group: host.group)]
        autonat = AutoNATService(host: host, configuration: configuration)
        var holePunchConfiguration = HolePunchService.Configuration()
        holePunchConfiguration.startDelay = .milliseconds(Int(holePunchDelay * 1000))
        holePunchConfiguration.roles = roles
        holePunch = HolePunchService(host: host, configuration: holePunchConfiguration)
        autoRelay = AutoRelayService(host: host, circuit: circuit)
        if let relay { autoRelay.addCandidate(relay, source: .configured) }
        for peer in bootstrap { autoRelay.addCandidate(peer, source: .bootstrap) }
        let changes = autonat.reachabilityChanges()
        let punches = holePunch.events()
        let relayEvents = autoRelay.events()
        autonat.start()
        holePunch.start()
        let (needs, needsFeed) = AsyncStream.makeStream(of: AutoRelay.Reachability.self)
        let watch = Task {
            for await change in changes {
                reportReachability(change, to: out)
                needsFeed.yield(Self.relayNeed(change))
            }
            needsFeed.finish()
        }
        let relaying = Task { [autoRelay] in await autoRelay.run(reachability: needs) }
        let relayReport = Task {
            for await event in relayEvents {
                switch event {
                case .reserved(let relay, let addresses):
                    for address in addresses {
                        let full = address.encapsulating(.p2p(host.localPeer.bytes))
                        out.emit("listening", ["addr": "\(full)", "relay": "\(relay)"], human: "Listening on \(full)")
                    }
                case .released(let relay):
                    out.emit("relay_released", ["relay": "\(relay)"], human: "Released the reservation on relay \(relay)")
                case .failed(let failed, let reason):
                    // Relays found by themselves come and go quietly; a named one's trouble is news.
                    if failed == relay?.peerID { out.error("reservation on \(failed): \(reason)") }
                }
            }
        }
        let report = Task {
            for await event in punches {
                switch event {
                case .succeeded(let peer, let connection, let rtt, let elapsed, let attempt):
                    out.emit(
                        "connection_upgraded",
                        [
                            "peer": "\(peer)", "addr": "\(connection.remoteAddress)", "rtt_ms": "\(rtt.milliseconds)",
                            "elapsed_ms": "\(elapsed.milliseconds)", "attempt": "\(attempt)", "method": "hole punch",
                        ],
                        human: "Direct connection to \(peer) at \(connection.remoteAddress) (hole punched)")
                case .dialledDirectly(let peer, let connection, let elapsed):
                    out.emit(
                        "connection_upgraded",
                        [
                            "peer": "\(peer)", "addr": "\(connection.remoteAddress)", "method": "direct dial",
                            "elapsed_ms": "\(elapsed.milliseconds)",
                        ],
                        human: "Direct connection to \(peer) at \(connection.remoteAddress) (dialled directly)")
                case .failed(let peer, let error):
                    out.error("hole punch with \(peer): \(error)")
                }
            }
        }
        tasks = [watch, relaying, relayReport, report]
    }

    /// What AutoRelay makes of AutoNAT's verdict: only `public` means no relay is needed.
    static func relayNeed(_ reachability: Reachability) -> AutoRelay.Reachability {
        switch reachability {
        case .public: .reachable
        case .unknown: .unknown
        default: .unreachable
        }
    }

    /// Stops AutoNAT and hole punching, then the tasks; returns once all have ended.
    func stop() async {
        await autonat.stop()
        await holePunch.stop()
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
}

/// The `reachability` event: "Reachability: local (reachable on the local network only)".
func reportReachability(_ reachability: Reachability, to out: ChatOutput) {
    out.emit("reachability", ["reachability": .string(reachability.rawValue)], human: "Reachability: \(reachability.text)")
}

extension Duration {
    var milliseconds: Double {
        Double(components.seconds) * 1000 + Double(components.attoseconds) / 1e15
    }
}
