import ArgumentParser
import Foundation
import Host
import Identify
import Identity
import Libp2p
import LibP2PSecurity
import Logging
import MDNS
import Multiformats
import Ping
import PubSub
import Synchronization
import Transport
import NIOPosix

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
    @Option(
        name: .customLong("identity"),
        help: "Key file (created if missing; locked while a node runs on it). Default: \(KeyFile.defaultPath)")
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

    /// The key of this run: a throwaway one with --ephemeral (and, unless
    /// `fileByDefault`, without --identity); else the identity file's, locked
    /// for the life of the process. When another process holds that file, a
    /// temporary key and what to tell the user (two nodes with one peer id
    /// never meet). Exits with an error when the file cannot be used.
    func key(fileByDefault: Bool) -> (PrivateKey, IdentityInUse?) {
        guard !ephemeral, let path = identityPath ?? (fileByDefault ? KeyFile.defaultPath : nil) else {
            return (PrivateKey.generateEd25519(), nil)
        }
        do {
            switch try KeyFile.claim(path: path) {
            case .claimed(let key, _): return (key, nil)
            case .inUse(let path, let pid): return (PrivateKey.generateEd25519(), IdentityInUse(path: path, pid: pid))
            }
        } catch {
            exitWithError("\(error)")
        }
    }
}

/// The identity file was locked by another process: this run uses a temporary key.
struct IdentityInUse {
    let path: String
    let pid: Int32?

    var message: String {
        "identity file \(path) is in use by another p2pchat\(pid.map { " (pid \($0))" } ?? ""); "
            + "using a temporary identity for this run (--identity PATH picks another)"
    }

    /// Says so as an event (`identity_in_use`): the first line of the output.
    func report(to out: ChatOutput) {
        var fields: [String: JSONValue] = ["path": .string(path), "message": .string(message)]
        if let pid { fields["pid"] = .int(pid) }
        out.emit("identity_in_use", fields, human: message)
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

/// Makes a host (the builder's transports: TCP, WebSocket, QUIC; the security
/// protocols of `--security`) that serves identify and ping.
func makeHost(key: PrivateKey, options: IdentityOptions) -> (Libp2pHost, IdentifyService, PingService) {
    let host: Libp2pHost
    do {
        host = try Libp2pHostBuilder(key: key).security(options.securityProtocols()).build()
    } catch {
        exitWithError("\(error)")
    }
    let identify = IdentifyService(host: host, agentVersion: "p2pchat/\(p2pchatVersion)")
    identify.start()
    let ping = PingService(host: host)
    ping.start()
    return (host, identify, ping)
}

/// Listens on each address, reporting the ones that fail; exits when none works.
func listenOrExit(_ host: Libp2pHost, on addresses: [String], reportFailure: (String) -> Void) async {
    var bound = 0
    for text in addresses {
        do {
            try await host.listen(on: [parseAddress(text)])
            bound += 1
        } catch let error as TransportError {
            reportFailure("\(error)")  // names the address ("listen on ...: address in use")
        } catch {
            reportFailure("listen on \(text): \(ErrorText.describe(error))")
        }
    }
    if bound == 0 { exitWithError("could not listen on any address") }
}

/// A failed dial of `target` (a peer or an address) in one line: what failed
/// and where, each said once (most errors of a dial name its address or peer already).
func dialFailure(_ target: String, _ error: any Error) -> String {
    switch error {
    case TransportError.dialFailed, TransportError.dialTimeout, TransportError.unsupportedAddress: "\(error)"
    case HostError.noAddresses, HostError.dialFailed, HostError.dialBackoff, HostError.dialSelf: "\(error)"
    default: "dial \(target): \(ErrorText.reason(of: error))"
    }
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
            let connection = try await withTimeout(.milliseconds(Int(timeout * 1000)), "connecting to \(address)") {
                try await host.connect(target)
            }
            say("PING \(connection.remotePeer)")
            var total = Duration.zero
            for _ in 0..<count {
                let rtt = try await withTimeout(.milliseconds(Int(timeout * 1000)), "ping") {
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
    let (host, identify, _) = makeHost(key: identity.toolKey(), options: identity)
    return (target, host, identify)
}

extension IdentityOptions {
    /// The key of a one-shot tool: a throwaway one unless --identity is given;
    /// a file in use is said on stderr (stdout is the tool's results).
    func toolKey() -> PrivateKey {
        let (key, inUse) = key(fileByDefault: false)
        if let inUse { FileHandle.standardError.write(Data("note: \(inUse.message)\n".utf8)) }
        return key
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
            let (info, connection) = try await withTimeout(.milliseconds(Int(timeout * 1000)), "identify \(address)") {
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

