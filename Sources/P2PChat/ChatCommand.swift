import ArgumentParser
import Dispatch
import Foundation
import Host
import Identity
import MDNS
import Multiformats
import PubSub
import Synchronization
import Transport

/// How the chat reports events: human lines or one JSON object per line.
struct ChatOutput: Sendable {
    let json: Bool

    func emit(_ event: String, _ fields: [String: String], human: String) {
        guard json else {
            say(human)
            return
        }
        var object: [String: String] = fields
        object["event"] = event
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        say(String(decoding: data, as: UTF8.self))
    }

    func error(_ message: String) {
        if json {
            emit("error", ["message": message], human: "")
        } else {
            FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        }
    }
}

struct NodeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat on TOPIC (default lobby): each stdin line is published, each message printed.",
        discussion: "Commands: /peers, /topic NAME, /help, /quit; a line starting with // sends the rest with one /.")

    @Argument(help: "The chat topic.")
    var topic = "lobby"

    @Option(name: .long, help: "Listen address (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0"]

    @Option(name: .long, help: "A /p2p/ address to dial at start and redial when the connection drops (repeatable).")
    var connect: [String] = []

    @Option(name: .long, help: "gossipsub or floodsub.")
    var router: String = "gossipsub"

    @Flag(name: .customLong("no-mdns"), help: "Do not discover peers on the local network.")
    var noMDNS = false

    @Flag(help: "One JSON object per line on stdout for every event.")
    var json = false

    @Option(name: .customLong("mdns-interval"), help: ArgumentHelp("Seconds between mDNS queries.", visibility: .hidden))
    var mdnsInterval: Double = 60

    @Option(name: .customLong("mdns-ttl"), help: ArgumentHelp("TTL in seconds of our mDNS records.", visibility: .hidden))
    var mdnsTTL: Int = 120

    @OptionGroup var identity: IdentityOptions

    @OptionGroup var dhtOptions: DHTOptions

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let out = ChatOutput(json: json)
        let bootstrapAddresses = dhtOptions.bootstrapAddresses()
        guard let routerKind = RouterKind(rawValue: router) else {
            exitWithError("--router must be gossipsub or floodsub, not \(router)")
        }
        let connectAddresses = connect.map(parseAddress)
        for address in connectAddresses where address.peerID == nil {
            exitWithError("--connect \(address) needs a /p2p/<peer id> part")
        }
        let key: PrivateKey
        do { key = try identity.loadKey() } catch { exitWithError("\(error)") }
        let (host, _) = makeHost(key: key, options: identity)
        var pubsubConfiguration = PubSubConfiguration()
        pubsubConfiguration.router = routerKind
        let pubsub = PubSubService(host: host, configuration: pubsubConfiguration)
        pubsub.start()
        out.emit("local_peer", ["peer": "\(host.localPeer)"], human: "Local peer id: \(host.localPeer)")
        await listenOrExit(host, on: listen) { out.error($0) }
        for address in host.listenAddresses {
            out.emit("listening", ["addr": "\(address)"], human: "Listening on \(address)")
        }
        let events = host.events()
        let printer = Task {
            for await event in events {
                switch event {
                // Per peer, not per connection: two peers that dial each other at once keep both.
                case .peerConnected(let connection):
                    out.emit(
                        "connected", ["peer": "\(connection.remotePeer)", "addr": "\(connection.remoteAddress)"],
                        human: "Connected: \(connection.remotePeer) at \(connection.remoteAddress)")
                case .peerDisconnected(let peer):
                    out.emit("disconnected", ["peer": "\(peer)"], human: "Disconnected: \(peer)")
                default:
                    break
                }
            }
        }
        var mdns: MDNSService?
        if !noMDNS {
            var configuration = MDNSConfiguration()
            configuration.queryInterval = .milliseconds(Int64(mdnsInterval * 1000))
            configuration.ttl = .seconds(mdnsTTL)
            let service = MDNSService(localPeer: host.localPeer, configuration: configuration) {
                host.listenAddresses
            }
            let discoveries = await service.events()
            do {
                try await service.start()
                mdns = service
                Task { await handleDiscoveries(discoveries, host: host, out: out) }
            } catch {
                out.error("\(error)")
            }
        }
        let session = ChatSession(topic: topic, pubsub: pubsub, out: out)
        await session.join(topic)
        // The DHT: served with --dht-server; with bootstrap peers, topic peers are found through it.
        let dht = bootstrapAddresses.isEmpty && !dhtOptions.dhtServer ? nil : startDHT(host: host, server: dhtOptions.dhtServer)
        var discovery: TopicDiscovery?
        if let dht, !bootstrapAddresses.isEmpty {
            let topicDiscovery = TopicDiscovery(
                dht: dht, topic: topic, interval: .milliseconds(Int64(dhtOptions.interval * 1000)), out: out)
            await topicDiscovery.start(bootstrap: bootstrapAddresses)
            await session.onTopicChange { await topicDiscovery.move(to: $0) }
            discovery = topicDiscovery
        }
        var redialers: [Task<Void, Never>] = []
        for address in connectAddresses {
            redialers.append(Task { await keepConnected(address, host: host, out: out) })
        }
        for await line in inputLinesUntilSignal() {
            guard await session.handle(line: line, host: host) else { break }
        }
        for redialer in redialers { redialer.cancel() }
        await discovery?.stop()
        await dht?.close()
        printer.cancel()
        await session.leave()
        await mdns?.stop()
        await pubsub.stop()
        await host.close()
        ChatTerminal.shared.restore()
    }
}

/// The topic being chatted on, its printer, and the chat's commands.
actor ChatSession {
    private(set) var topic: String
    let pubsub: PubSubService
    let out: ChatOutput
    private var receiver: Task<Void, Never>?
    private var topicChanged: (@Sendable (String) async -> Void)?

    init(topic: String, pubsub: PubSubService, out: ChatOutput) {
        self.topic = topic
        self.pubsub = pubsub
        self.out = out
    }

    func join(_ topic: String) async {
        self.topic = topic
        let messages = await pubsub.subscribe(topic)
        let out = self.out
        receiver = Task {
            for await message in messages {
                let author = message.from.map { "\($0)" } ?? "anonymous"
                let text = String(decoding: message.data, as: UTF8.self)
                out.emit(
                    "message", ["topic": message.topic, "from": author, "id": "\(message.id.hex)", "text": text],
                    human: "\(author): \(text)")
            }
        }
    }

    /// Runs `observer` after each `/topic` (the DHT moves the topic's advertisement).
    func onTopicChange(_ observer: @escaping @Sendable (String) async -> Void) {
        topicChanged = observer
    }

    func leave() async {
        receiver?.cancel()
        await pubsub.unsubscribe(topic)
    }

    /// Handles one input line; false to quit.
    func handle(line: String, host: Libp2pHost) async -> Bool {
        guard !line.isEmpty else { return true }
        if line.hasPrefix("/") && !line.hasPrefix("//") {
            let parts = line.split(separator: " ", maxSplits: 1).map(String.init)
            switch parts[0] {
            case "/quit":
                return false
            case "/help":
                say("Commands: /peers, /topic NAME, /help, /quit. Start a line with // to send it with one /.")
            case "/peers":
                let peers = host.connectedPeers.sorted()
                if peers.isEmpty { say("No peers connected.") }
                for peer in peers {
                    let addresses = host.connections.filter { $0.remotePeer == peer }.map { "\($0.remoteAddress)" }
                    out.emit(
                        "peer", ["peer": "\(peer)", "addr": addresses.joined(separator: " ")],
                        human: "\(peer) \(addresses.joined(separator: " "))")
                }
            case "/topic":
                guard parts.count == 2, !parts[1].trimmingCharacters(in: .whitespaces).isEmpty else {
                    out.error("usage: /topic NAME")
                    return true
                }
                await leave()
                await join(parts[1].trimmingCharacters(in: .whitespaces))
                say("Now on topic \(topic)")
                await topicChanged?(topic)
            default:
                out.error("unknown command \(parts[0]); /help lists them")
            }
            return true
        }
        let text = line.hasPrefix("//") ? String(line.dropFirst()) : line
        do {
            try await pubsub.publish(topic, data: Array(text.utf8))
        } catch {
            out.error("\(error)")
        }
        return true
    }
}

extension MessageID {
    var hex: String { bytes.map { String(format: "%02x", $0) }.joined() }
}

/// Dials `address` and redials with exponential backoff (1 s to 30 s) whenever
/// the connection is missing, until cancelled.
func keepConnected(_ address: Multiaddr, host: Libp2pHost, out: ChatOutput) async {
    guard let peer = address.peerID else { return }
    var delay = Duration.seconds(1)
    while !Task.isCancelled {
        if let connection = host.connection(to: peer) {
            delay = .seconds(1)
            try? await connection.closeFuture.get()
            continue
        }
        do {
            _ = try await host.connect(address)
            delay = .seconds(1)
        } catch {
            out.error("connect \(address): \(error); retrying in \(delay.components.seconds) s")
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
    }
}

/// Prints mDNS discoveries and dials each newly discovered peer once.
func handleDiscoveries(_ events: AsyncStream<MDNSEvent>, host: Libp2pHost, out: ChatOutput) async {
    for await event in events {
        switch event {
        case .discovered(let peer, let addresses):
            for address in addresses {
                out.emit(
                    "discovered", ["peer": "\(peer)", "addr": "\(address.withoutP2P)"],
                    human: "Got peer: \(peer) with addr \(address.withoutP2P)")
            }
            host.peerStore.addAddresses(addresses.map(\.withoutP2P), for: peer)
            guard host.connection(to: peer) == nil else { continue }
            Task {
                do { _ = try await host.connect(to: peer) } catch {
                    out.error("dial \(peer): \(error)")
                }
            }
        case .expired(let peer, let addresses):
            for address in addresses {
                out.emit(
                    "expired", ["peer": "\(peer)", "addr": "\(address.withoutP2P)"],
                    human: "Removed peer: \(peer) with addr \(address.withoutP2P)")
            }
        }
    }
}

/// Standard input lines; the sequence also ends on SIGINT or SIGTERM, so the
/// chat shuts down cleanly either way.
func inputLinesUntilSignal() -> AsyncStream<String> {
    let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(1024))
    onTerminationSignal { continuation.finish() }
    ChatTerminal.shared.lines(into: continuation)
    return stream
}

/// Returns once SIGINT or SIGTERM arrives.
func waitForTerminationSignal() async {
    let (stream, continuation) = AsyncStream.makeStream(of: Void.self)
    onTerminationSignal { continuation.finish() }
    for await _ in stream {}
}

/// Runs `action` (instead of dying) on SIGINT and SIGTERM.
func onTerminationSignal(_ action: @escaping @Sendable () -> Void) {
    for signalNumber in [SIGINT, SIGTERM] {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
        signalSources.append(source)
    }
}

/// Keeps the signal sources alive for the life of the process. Safe unsynchronised:
/// only `onTerminationSignal` writes it, once per process from the running
/// command's single task, and nothing ever reads it.
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []
