import ArgumentParser
import Foundation
import Host
import Identify
import Identity
import LibP2PSecurity
import Logging
import MDNS
import Noise
import Multiformats
import Ping
import PubSub
import Synchronization
import TLS
import Transport

let p2pchatVersion = "0.1.0"

@main
struct P2PChat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2pchat",
        abstract: "A peer-to-peer chat on a Swift libp2p stack.",
        version: p2pchatVersion,
        subcommands: [
            ChatCommand.self, PingCommand.self, IdCommand.self, PerfCommand.self, PerfServerCommand.self, RelayCommand.self,
            DHTServerCommand.self, DHTCommand.self,
        ],
        defaultSubcommand: ChatCommand.self
    )
}

/// Options shared by every command that runs a node.
struct IdentityOptions: ParsableArguments {
    @Option(name: .customLong("identity"), help: "Key file (created if missing). Default: \(KeyFile.defaultPath)")
    var identityPath: String?

    @Flag(help: "Use a fresh throwaway key; write nothing.")
    var ephemeral = false

    @Flag(
        name: .shortAndLong,
        help: "Log to stderr: -v debug, -vv trace (P2PCHAT_LOG=LEVEL or SUBSYSTEM=LEVEL,... sets levels per subsystem).")
    var verbose: Int

    @Option(
        name: .long,
        help: ArgumentHelp(
            "Security protocols offered, in order of preference: noise, tls, or both (noise,tls or tls,noise).",
            valueName: "noise|tls|noise,tls"))
    var security: String = "noise,tls"

    /// The `--security` list as protocols; exits with an error on a bad list.
    func securityProtocols() -> [any SecurityProtocol] {
        var chosen: [any SecurityProtocol] = []
        for name in security.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces).lowercased() }) {
            guard !chosen.contains(where: { $0.protocolID == Self.protocolIDs[name] }) else { continue }
            switch name {
            case "noise": chosen.append(NoiseSecurity())
            case "tls": chosen.append(TLSSecurity())
            default: exitWithError("--security: unknown protocol \"\(name)\" (use noise, tls or noise,tls)")
            }
        }
        if chosen.isEmpty { exitWithError("--security: name at least one of noise, tls") }
        return chosen
    }

    private static let protocolIDs = ["noise": NoiseSecurity.protocolID, "tls": TLSSecurity.protocolID]

    func loadKey() throws -> PrivateKey {
        if ephemeral { return PrivateKey.generateEd25519() }
        return try KeyFile.loadOrCreate(path: identityPath ?? KeyFile.defaultPath)
    }
}

/// Writes a line to stdout at once (one write(2), no stdio buffer), so a pipe
/// reader sees each event as it happens and lines never interleave.
func say(_ line: String) {
    ChatTerminal.shared.write(line)
}

/// Prints one error line on stderr and exits non-zero.
func exitWithError(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

/// Makes a host (TCP and WebSocket; the security protocols of `--security`) that serves identify and ping.
func makeHost(key: PrivateKey, options: IdentityOptions) -> (Libp2pHost, IdentifyService) {
    let host = Libp2pHost(key: key, security: options.securityProtocols())
    let identify = IdentifyService(host: host, agentVersion: "p2pchat/\(p2pchatVersion)")
    identify.start()
    PingService(host: host).start()
    return (host, identify)
}

/// Listens on each address, reporting the ones that fail; exits when none works.
func listenOrExit(_ host: Libp2pHost, on addresses: [String], reportFailure: (String) -> Void) async {
    var bound = 0
    for text in addresses {
        do {
            try await host.listen(on: [parseAddress(text)])
            bound += 1
        } catch {
            reportFailure("cannot listen on \(text): \(error)")
        }
    }
    if bound == 0 { exitWithError("could not listen on any address") }
}

func parseAddress(_ text: String) -> Multiaddr {
    do {
        return try Multiaddr(text)
    } catch {
        exitWithError("invalid multiaddr \(text): \(error)")
    }
}

struct PingCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ping", abstract: "Ping a peer over /ipfs/ping/1.0.0, printing each round trip.")

    @Argument(help: "The peer's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
    var address: String

    @Option(name: [.short, .long], help: "Number of pings.")
    var count = 10

    @Option(help: "Seconds to wait for the connection and for each ping.")
    var timeout: Double = 10

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        let (target, host, _) = startTool(address: address, identity: identity)
        let count = self.count
        let timeout = self.timeout
        do {
            let connection = try await withTimeout(seconds: timeout, "connecting to \(address)") {
                try await host.connect(target)
            }
            say("PING \(connection.remotePeer)")
            var total = Duration.zero
            for _ in 0..<count {
                let rtt = try await withTimeout(seconds: timeout, "ping") {
                    try await PingService.ping(connection, count: 1)[0]
                }
                total += rtt
                say("Pong received: RTT=\(formatMilliseconds(rtt))")
            }
            if count > 0 {
                say("Average latency: \(formatMilliseconds(total / count))")
            }
            await host.close()
        } catch {
            await host.close()
            exitWithError("\(error)")
        }
    }
}

func formatMilliseconds(_ duration: Duration) -> String {
    let ms = Double(duration.components.seconds) * 1000 + Double(duration.components.attoseconds) / 1e15
    return String(format: "%.2fms", ms)
}

/// What `ping` and `id` share: logging, the target address, a host with a key.
func startTool(address: String, identity: IdentityOptions) -> (Multiaddr, Libp2pHost, IdentifyService) {
    bootstrapLogging(verbose: identity.verbose)
    let target = parseAddress(address)
    let key: PrivateKey
    do { key = try PrivateKey.generateEd25519OrLoad(identity) } catch { exitWithError("\(error)") }
    let (host, identify) = makeHost(key: key, options: identity)
    return (target, host, identify)
}

extension PrivateKey {
    /// The CLI's tools default to a throwaway key unless --identity is given.
    static func generateEd25519OrLoad(_ options: IdentityOptions) throws -> PrivateKey {
        if let path = options.identityPath, !options.ephemeral {
            return try KeyFile.loadOrCreate(path: path)
        }
        return PrivateKey.generateEd25519()
    }
}

struct IdCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "id", abstract: "Identify a peer over /ipfs/id/1.0.0: its id, agent, protocols and addresses.")

    @Argument(help: "The peer's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
    var address: String

    @Option(help: "Seconds to wait.")
    var timeout: Double = 10

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        let (target, host, identify) = startTool(address: address, identity: identity)
        do {
            let (info, connection) = try await withTimeout(seconds: timeout, "identify \(address)") {
                let connection = try await host.connect(target)
                return (try await identify.identify(connection), connection)
            }
            say("Peer id: \(info.peer)")
            say("Transport: \(connection.transport) \(connection.remoteAddress)")
            say("Security: \(connection.security)")
            say("Muxer: \(connection.muxer)")
            say("Agent version: \(info.agentVersion ?? "(none)")")
            say("Protocol version: \(info.protocolVersion ?? "(none)")")
            if let observed = info.observedAddress { say("Observed address: \(observed)") }
            say("Listen addresses:")
            for address in info.listenAddresses { say("  \(address)") }
            say("Protocols:")
            for proto in info.protocols.sorted() { say("  \(proto)") }
            await host.close()
        } catch {
            await host.close()
            exitWithError("\(error)")
        }
    }
}

