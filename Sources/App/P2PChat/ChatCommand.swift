import ArgumentParser
import AutoNAT
import ChatHistory
import DCUtR
import Dispatch
import FileShare
import KadDHT
import Libp2p
import Foundation
import Host
import Identify
import Identity
import MDNS
import Multiformats
import PubSub
import Relay
import ServiceLifecycle
import Synchronization
import Transport
import WebChat

/// `p2pchat chat` (the default command): the chat on a topic, with files, history and discovery.
struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat on TOPIC (default lobby): each stdin line is published, each message printed.",
        discussion: "Commands: /who, /peers, /status, /send PATH, /files, /get N, /topic NAME, /help, /quit; a line starting with // sends the rest with one /.")

    @Argument(help: "The chat topic.")
    var topic = "lobby"

    @Option(name: .long, help: "Listen address (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/udp/0/quic-v1"]

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

    @Option(name: .customLong("download-dir"), help: "Where fetched files go (default: the user's data directory, p2pchat/downloads).")
    var downloadDirectory: String?

    @Flag(name: .customLong("accept-files"), help: "Fetch offered files without asking, up to --max-accept bytes.")
    var acceptFiles = false

    @Option(name: .customLong("max-accept"), help: "Largest file --accept-files fetches, in bytes (K, M, G suffixes).")
    var maxAccept = "100M"

    @Option(
        name: .customLong("accept-total"),
        help: "Bytes --accept-files fetches in all (a quarter from one peer; at most 100 files, 25 from one peer, 2 at once, leaving 512 MiB free).")
    var acceptTotal = "1G"

    @Option(help: "Keep the topic's recent lines in this file (in memory otherwise), to give peers what they missed.")
    var history: String?

    @Option(name: .long, help: "A relay's /p2p/ address, tried first: stay connected, and reserve a slot there (advertising its circuit address) when we are not reachable from outside (private, or local network only). Without it relays are found among bootstrap and connected peers.")
    var relay: String?

    @Option(name: .customLong("hole-punch-delay"), help: ArgumentHelp("Seconds before hole punching a relayed connection.", visibility: .hidden))
    var holePunchDelay: Double = 0

    @Option(
        name: .customLong("dcutr-roles"),
        help: ArgumentHelp("adaptive, or go-before-0.41 / go-before-0.33 to play an older go-libp2p peer (tests).", visibility: .hidden))
    var dcutrRoles = "adaptive"

    @Option(
        name: .customLong("web"), defaultAsFlag: "127.0.0.1:8080", parsing: .next,
        help: ArgumentHelp(
            "Also serve the chat as a web page at ADDR (default 127.0.0.1:8080; HOST:PORT, [IPv6]:PORT or PORT); open the URL it prints, with its token.",
            valueName: "addr"))
    var web: String? = nil

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var metrics: MetricsOption

    @OptionGroup var dhtOptions: DHTOptions

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let out = ChatOutput(json: json, decorated: isatty(1) == 1)
        // First, so that a second chat on the same identity file says so on its first line.
        let (key, inUse) = identity.key(fileByDefault: true)
        inUse?.report(to: out)
        let exporter = await metrics.start { address in
            out.emit("metrics", ["addr": .string(address)], human: "Metrics at \(address)/metrics")
        }
        let bootstrapAddresses = dhtOptions.bootstrapAddresses()
        var webAddress: (host: String, port: Int)?
        if let web {
            guard let address = WebChatBridge.parseAddress(web) else {
                exitWithError("--web: not an address (HOST:PORT, [IPv6]:PORT or PORT): \(web)")
            }
            webAddress = address
        }
        guard let routerKind = RouterKind(rawValue: router) else {
            exitWithError("--router must be gossipsub or floodsub, not \(router)")
        }
        let connectAddresses = connect.map(parseAddress)
        for address in connectAddresses where address.peerID == nil {
            exitWithError("--connect \(address) needs a /p2p/<peer id> part")
        }
        let (host, identifyService, pingService, circuit) = makeNATHost(key: key, options: identity)
        let relayAddress = relay.map(parseAddress)
        let roles: HolePunchService.Roles
        switch dcutrRoles {
        case "adaptive": roles = .adaptive
        case "go-before-0.41": roles = .goBefore041
        case "go-before-0.33": roles = .goBefore033
        default: exitWithError("--dcutr-roles must be adaptive, go-before-0.41 or go-before-0.33, not \(dcutrRoles)")
        }
        let nat = ChatNATTraversal(
            host: host, circuit: circuit, relay: relayAddress, bootstrap: bootstrapAddresses,
            holePunchDelay: holePunchDelay, roles: roles, out: out)
        var pubsubConfiguration = PubSubConfiguration()
        pubsubConfiguration.router = routerKind
        let pubsub: PubSubService
        do { pubsub = try PubSubService(host: host, configuration: pubsubConfiguration) } catch { exitWithError("\(error)") }
        pubsub.start()
        out.emit("local_peer", ["peer": "\(host.localPeer)"], human: "Local peer id: \(host.localPeer)")
        await listenOrExit(host, on: listen) { out.error($0) }
        for address in host.listenAddresses {
            out.emit("listening", ["addr": "\(address)"], human: "Listening on \(address)")
        }
        let events = host.events()
        let limitEvents = LimitEventPrinter(out: out)
        // Owned by the group's "limit events" service, which cancels and awaits it.
        let limitReporter = Task { await limitEvents.run() }
        // Owned by the group's "host events" service, which cancels and awaits it.
        let printer = Task {
            for await event in events {
                switch event {
                case .limitReached(let refusal):
                    limitEvents.record(refusal)
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
        // Owned by the group's "redial" service, which cancels and awaits them.
        var redialers: [Task<Void, Never>] = []
        let sightings = OwnPeerSightings(host: host, identify: identifyService, out: out)
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
                redialers.append(Task {
                    await handleDiscoveries(discoveries, host: host, mdns: service, out: out, sightings: sightings)
                })
                let hostEvents = host.events()
                redialers.append(Task { await keepLocalPeersConnected(hostEvents, host: host, mdns: service) })
            } catch {
                out.error("\(error)")
            }
        }
        guard let acceptLimit = parseByteCount(maxAccept) else { exitWithError("--max-accept: not a size: \(maxAccept)") }
        guard let acceptTotalBytes = parseByteCount(acceptTotal) else { exitWithError("--accept-total: not a size: \(acceptTotal)") }
        var acceptLimits = AutoAcceptLimits(maxFileSize: acceptLimit)
        acceptLimits.maxBytes = acceptTotalBytes
        acceptLimits.maxBytesPerPeer = acceptTotalBytes / 4
        let fileService = FileShareService(host: host)
        fileService.start()
        let files = ChatFiles(
            service: fileService, out: out, directory: downloadDirectory ?? defaultDownloadDirectory(),
            autoAccept: acceptFiles ? acceptLimits : nil)
        let historyService: HistoryService
        do { historyService = try HistoryService(host: host, path: history) } catch { exitWithError("\(error)") }
        historyService.start()
        let session = ChatSession(
            topic: topic, pubsub: pubsub, out: out, files: files,
            history: ChatHistorySync(history: historyService, out: out))
        await session.join(topic)
        // The DHT: served with --dht-server; with bootstrap peers, topic peers are found through it.
        let dht = bootstrapAddresses.isEmpty && !dhtOptions.dhtServer ? nil : startDHT(host: host, server: dhtOptions.dhtServer)
        var discovery: TopicDiscovery?
        if let dht, !bootstrapAddresses.isEmpty {
            let topicDiscovery = TopicDiscovery(
                dht: dht, topic: topic, interval: .milliseconds(Int64(dhtOptions.interval * 1000)), out: out,
                sightings: sightings)
            await topicDiscovery.start(bootstrap: bootstrapAddresses)
            await session.onTopicChange { await topicDiscovery.move(to: $0) }
            discovery = topicDiscovery
            // A reservation's circuit address belongs in our provider record at once.
            let relayEvents = nat.autoRelay.events()
            redialers.append(Task {
                for await _ in relayEvents { await topicDiscovery.announceSoon() }
            })
        }
        await session.onStatus {
            printStatus(
                out: out, host: host, identify: identifyService, circuit: circuit,
                reachability: nat.autonat.reachability, dht: dht)
        }
        if let dht, !dhtOptions.dhtServer {
            // A client that AutoNAT finds publicly reachable serves the DHT (as go-libp2p's auto mode).
            let changes = nat.autonat.reachabilityChanges()
            let initial = nat.autonat.reachability
            redialers.append(Task {
                followReachability(initial, dht: dht, out: out)
                for await change in changes { followReachability(change, dht: dht, out: out) }
            })
        }
        for address in connectAddresses + (relayAddress.map { [$0] } ?? []) {
            redialers.append(Task { await keepConnected(address, host: host, out: out) })
        }
        var webChat: WebChatBridge?
        let lines: AsyncStream<String>
        var stdinForwarder: Task<Void, Never>?
        if let webAddress {
            let merged = chatAndPageInputLines()
            (lines, stdinForwarder) = (merged.lines, merged.stdin)
            do {
                webChat = try await WebChatBridge.start(
                    address: webAddress, out: out, input: merged.input, session: session, host: host, identify: identifyService,
                    circuit: circuit, nat: nat, pubsub: pubsub, dht: dht)
            } catch {
                exitWithError("\(error)")
            }
            if let url = webChat?.server.url { out.emit("web", ["url": .string(url)], human: "Web chat at \(url)") }
        } else {
            lines = inputLinesUntilSignal()
        }
        let (webChatBridge, forwarder) = (webChat, stdinForwarder)
        // The group: the host first, each part after what it uses. At the end
        // of input (or /quit; SIGINT and SIGTERM end the input) each is stopped
        // in reverse order and awaited, the host last.
        var services: [any Service] = []
        if let exporter { services.append(StartStopService("metrics", stop: { try? await exporter.close() })) }
        services += [
            HostService(host), identifyService.service(), pingService.service(),
            StartStopService("history", stop: { await historyService.stop() }), pubsub.service(),
        ]
        if let mdns { services.append(mdns.service()) }
        services += [
            StartStopService("chat session", stop: { await session.leave() }),
            StartStopService("nat traversal", stop: { await nat.stop() }),
            TaskService("limit events", [limitReporter]), TaskService("host events", [printer]),
        ]
        if let dht { services.append(dht.service()) }
        if let discovery { services.append(StartStopService("topic discovery", stop: { await discovery.stop() })) }
        services += [
            StartStopService("files", stop: { await files.cancelAll(); await fileService.stop() }), TaskService("redial", redialers),
            StartStopService(
                "web chat",
                stop: {
                    forwarder?.cancel()
                    await forwarder?.value
                    await webChatBridge?.stop()
                }),
        ]
        let input = LoopService {
            for await line in lines {
                webChatBridge?.typed(line)
                guard await session.handle(line: line, host: host) else { break }
            }
        }
        await runServices(services, until: input)
        ChatTerminal.shared.restore()
    }
}
