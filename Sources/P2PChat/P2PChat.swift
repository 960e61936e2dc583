import ArgumentParser
import Foundation
import Host
import Identify
import Identity
import Logging
import Multiformats
import Ping
import Transport

let p2pchatVersion = "0.1.0"

@main
struct P2PChat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "p2pchat",
        abstract: "A peer-to-peer chat on a Swift libp2p stack.",
        version: p2pchatVersion,
        subcommands: [NodeCommand.self, PingCommand.self, IdCommand.self],
        defaultSubcommand: NodeCommand.self
    )
}

/// Options shared by every command that runs a node.
struct IdentityOptions: ParsableArguments {
    @Option(name: .customLong("identity"), help: "Key file (created if missing). Default: \(KeyFile.defaultPath)")
    var identityPath: String?

    @Flag(help: "Use a fresh throwaway key; write nothing.")
    var ephemeral = false

    @Flag(name: .shortAndLong, help: "Log debug details to stderr.")
    var verbose = false

    func loadKey() throws -> PrivateKey {
        if ephemeral { return PrivateKey.generateEd25519() }
        return try KeyFile.loadOrCreate(path: identityPath ?? KeyFile.defaultPath)
    }
}

/// Starts logging to stderr; quiet unless --verbose.
func bootstrapLogging(verbose: Bool) {
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = verbose ? .debug : .warning
        return handler
    }
}

/// Prints one error line on stderr and exits non-zero.
func exitWithError(_ message: String) -> Never {
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    exit(1)
}

/// Makes a host that serves identify and ping.
func makeHost(key: PrivateKey) -> (Libp2pHost, IdentifyService) {
    let host = Libp2pHost(key: key)
    let identify = IdentifyService(host: host, agentVersion: "p2pchat/\(p2pchatVersion)")
    identify.start()
    PingService(host: host).start()
    return (host, identify)
}

func parseAddress(_ text: String) -> Multiaddr {
    do {
        return try Multiaddr(text)
    } catch {
        exitWithError("invalid multiaddr \(text): \(error)")
    }
}

/// Runs `body` but gives up after `seconds`.
func withTimeout<T: Sendable>(
    seconds: Double, _ what: String, _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            throw TimeoutError(what: what, seconds: seconds)
        }
        let result = try await group.next()!
        group.cancelAll()
        return result
    }
}

struct TimeoutError: Error, CustomStringConvertible {
    let what: String
    let seconds: Double
    var description: String { "\(what) timed out after \(Int(seconds)) s" }
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
        bootstrapLogging(verbose: identity.verbose)
        let target = parseAddress(address)
        let key: PrivateKey
        do { key = try PrivateKey.generateEd25519OrLoad(identity) } catch { exitWithError("\(error)") }
        let (host, _) = makeHost(key: key)
        let count = self.count
        let timeout = self.timeout
        do {
            let connection = try await withTimeout(seconds: timeout, "connecting to \(address)") {
                try await host.connect(target)
            }
            print("PING \(connection.remotePeer)")
            var total = Duration.zero
            for _ in 0..<count {
                let rtt = try await withTimeout(seconds: timeout, "ping") {
                    try await PingService.ping(connection, count: 1)[0]
                }
                total += rtt
                print("Pong received: RTT=\(formatMilliseconds(rtt))")
            }
            if count > 0 {
                print("Average latency: \(formatMilliseconds(total / count))")
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
        bootstrapLogging(verbose: identity.verbose)
        let target = parseAddress(address)
        let key: PrivateKey
        do { key = try PrivateKey.generateEd25519OrLoad(identity) } catch { exitWithError("\(error)") }
        let (host, identify) = makeHost(key: key)
        do {
            let info = try await withTimeout(seconds: timeout, "identify \(address)") {
                let connection = try await host.connect(target)
                return try await identify.identify(connection)
            }
            print("Peer id: \(info.peer)")
            print("Agent version: \(info.agentVersion ?? "(none)")")
            print("Protocol version: \(info.protocolVersion ?? "(none)")")
            if let observed = info.observedAddress { print("Observed address: \(observed)") }
            print("Listen addresses:")
            for address in info.listenAddresses { print("  \(address)") }
            print("Protocols:")
            for proto in info.protocols.sorted() { print("  \(proto)") }
            await host.close()
        } catch {
            await host.close()
            exitWithError("\(error)")
        }
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Run a node on TOPIC (default lobby): listen, connect, serve identify and ping.")

    @Argument(help: "The chat topic.")
    var topic = "lobby"

    @Option(name: .long, help: "Listen address (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0"]

    @Option(name: .long, help: "A /p2p/ address to dial at start (repeatable).")
    var connect: [String] = []

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let key: PrivateKey
        do { key = try identity.loadKey() } catch { exitWithError("\(error)") }
        let (host, _) = makeHost(key: key)
        print("Local peer id: \(host.localPeer)")
        var bound = 0
        for text in listen {
            do {
                try await host.listen(on: [parseAddress(text)])
                bound += 1
            } catch {
                FileHandle.standardError.write(Data("warning: cannot listen on \(text): \(error)\n".utf8))
            }
        }
        if bound == 0 { exitWithError("could not listen on any address") }
        for address in host.listenAddresses {
            print("Listening on \(address)")
        }
        let events = host.events()
        let printer = Task {
            for await event in events {
                switch event {
                case .connected(let connection):
                    print("Connected: \(connection.remotePeer) at \(connection.remoteAddress)")
                case .disconnected(let connection):
                    print("Disconnected: \(connection.remotePeer)")
                default:
                    break
                }
            }
        }
        for text in connect {
            let address = parseAddress(text)
            Task {
                do { _ = try await host.connect(address) } catch {
                    FileHandle.standardError.write(Data("error: connect \(text): \(error)\n".utf8))
                }
            }
        }
        // Until the end of input.
        while readLine() != nil {}
        printer.cancel()
        await host.close()
    }
}
