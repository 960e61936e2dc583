import ArgumentParser
import AutoNAT
import ChatHistory
import DCUtR
import Dispatch
import FileShare
import KadDHT
import Foundation
import Host
import Identify
import Identity
import MDNS
import Multiformats
import PubSub
import Relay
import Synchronization
import Transport

/// How the chat reports events: human lines or one JSON object per line (with
/// the event's name and time), as the README's event table lists them.
struct ChatOutput: Sendable {
    let json: Bool
    /// Shortened, coloured peer ids: only when a person reads stdout in a terminal.
    let decorated: Bool

    init(json: Bool, decorated: Bool = false) {
        self.json = json
        self.decorated = decorated && !json
    }

    func emit(_ event: String, _ fields: [String: JSONValue], human: @autoclosure () -> String) {
        guard json else {
            say(human())
            return
        }
        var object = fields
        object["event"] = .string(event)
        object["ts"] = .string(isoTimestamp())
        say(jsonLine(object))
    }

    func error(_ message: String) {
        if json {
            emit("error", ["message": .string(message)], human: "")
        } else {
            FileHandle.standardError.write(Data("error: \(message)\n".utf8))
        }
    }

    /// A peer as a person reads it: in a terminal, the last 8 characters of its id in
    /// a colour of its own (the same in every run); elsewhere the full id.
    func name(_ peer: PeerID) -> String {
        let id = "\(peer)"
        guard decorated else { return id }
        return "\u{1B}[\(Self.colour(of: peer))m\(id.suffix(8))\u{1B}[0m"
    }

    /// Bright ANSI foreground colours that read on dark and light backgrounds.
    static let palette = [31, 32, 33, 34, 35, 36, 91, 92, 93, 94, 95, 96]

    /// The colour of `peer`, from an FNV-1a hash of its id's bytes: stable across runs and machines.
    static func colour(of peer: PeerID) -> Int {
        var hash: UInt32 = 2_166_136_261
        for byte in peer.bytes {
            hash = (hash ^ UInt32(byte)) &* 16_777_619
        }
        return palette[Int(hash % UInt32(palette.count))]
    }
}

/// `p2pchat chat` (the default command): the chat on a topic, with files, history and discovery.
struct ChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat",
        abstract: "Chat on TOPIC (default lobby): each stdin line is published, each message printed.",
        discussion: "Commands: /who, /peers, /status, /send PATH, /files, /get N, /topic NAME, /help, /quit; a line starting with // sends the rest with one /.")

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

    @Option(name: .customLong("download-dir"), help: "Where fetched files go (default: the user's data directory, p2pchat/downloads).")
    var downloadDirectory: String?

    @Flag(name: .customLong("accept-files"), help: "Fetch offered files without asking, up to --max-accept bytes.")
    var acceptFiles = false

    @Option(name: .customLong("max-accept"), help: "Largest file --accept-files fetches, in bytes (K, M, G suffixes).")
    var maxAccept = "100M"

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
        guard let routerKind = RouterKind(rawValue: router) else {
            exitWithError("--router must be gossipsub or floodsub, not \(router)")
        }
        let connectAddresses = connect.map(parseAddress)
        for address in connectAddresses where address.peerID == nil {
            exitWithError("--connect \(address) needs a /p2p/<peer id> part")
        }
        let (host, identifyService, circuit) = makeNATHost(key: key, options: identity)
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
        let limitReporter = Task { await limitEvents.run() }
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
        let fileService = FileShareService(host: host)
        fileService.start()
        let files = ChatFiles(
            service: fileService, out: out, directory: downloadDirectory ?? defaultDownloadDirectory(),
            autoAcceptLimit: acceptFiles ? acceptLimit : nil)
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
        for await line in inputLinesUntilSignal() {
            guard await session.handle(line: line, host: host) else { break }
        }
        for redialer in redialers { redialer.cancel() }
        await files.cancelAll()
        await discovery?.stop()
        await dht?.close()
        printer.cancel()
        limitReporter.cancel()
        await nat.stop()
        await session.leave()
        await mdns?.stop()
        await pubsub.stop()
        historyService.close()
        await host.close()
        try? await exporter?.close()
        ChatTerminal.shared.restore()
    }
}

/// The topic being chatted on, its printers (messages, who joins and leaves), and the chat's commands.
actor ChatSession {
    private(set) var topic: String
    let pubsub: PubSubService
    let out: ChatOutput
    let files: ChatFiles
    let history: ChatHistorySync
    private var receivers: [Task<Void, Never>] = []
    private var topicChanged: (@Sendable (String) async -> Void)?
    private var statusReporter: (@Sendable () async -> Void)?
    private var pacer = PublishPacer(now: .now)

    init(topic: String, pubsub: PubSubService, out: ChatOutput, files: ChatFiles, history: ChatHistorySync) {
        self.topic = topic
        self.pubsub = pubsub
        self.out = out
        self.files = files
        self.history = history
    }

    func join(_ topic: String) async {
        self.topic = topic
        // Listen for joins before subscribing: our subscription is what makes peers answer with theirs.
        let events = await pubsub.events()
        let messages = await pubsub.subscribe(topic)
        let out = self.out
        let files = self.files
        let history = self.history
        receivers.append(Task {
            for await message in messages {
                // Already printed (it came with the history from a peer).
                guard history.history.record(message) else { continue }
                if let author = message.from, let offer = FileOffer(announcement: String(decoding: message.data, as: UTF8.self)) {
                    await files.received(.announced(offer), from: author)
                } else {
                    printMessage(message, out: out, history: false)
                }
            }
        })
        // Files announced the universal-connectivity way: a file id on `<topic>-file`.
        let fileAnnouncements = await pubsub.subscribe(ChatFiles.fileTopic(of: topic))
        receivers.append(Task {
            for await message in fileAnnouncements {
                let id = String(decoding: message.data, as: UTF8.self)
                guard let author = message.from, !id.isEmpty, id.utf8.count <= 1024, FileName.safe(id) != nil else { continue }
                await files.received(.universal(fileID: id), from: author)
            }
        })
        receivers.append(Task {
            for await event in events where event.topic == topic {
                let (name, verb) = if case .subscribed = event { ("joined", "joined") } else { ("left", "left") }
                out.emit(
                    name, ["topic": .string(topic), "peer": "\(event.peer)"],
                    human: "\(out.name(event.peer)) \(verb) \(topic)")
                // A peer (back) on the topic: ask it for what we missed.
                if case .subscribed(let peer, _) = event {
                    // Not awaited, so that events keep flowing; bounded by the history request timeout.
                    Task { await history.request(topic, from: peer) }
                }
            }
        })
    }

    /// Runs `observer` after each `/topic` (the DHT moves the topic's advertisement).
    func onTopicChange(_ observer: @escaping @Sendable (String) async -> Void) {
        topicChanged = observer
    }

    /// What `/status` prints.
    func onStatus(_ reporter: @escaping @Sendable () async -> Void) {
        statusReporter = reporter
    }

    func leave() async {
        for receiver in receivers { receiver.cancel() }
        receivers = []
        await pubsub.unsubscribe(topic)
        await pubsub.unsubscribe(ChatFiles.fileTopic(of: topic))
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
                say("Commands: /who, /peers, /status, /send PATH, /files, /get N, /topic NAME, /help, /quit. Start a line with // to send it with one /.")
            case "/who":
                await who()
            case "/send":
                guard parts.count == 2, !parts[1].isEmpty else {
                    out.error("usage: /send PATH")
                    return true
                }
                guard let offer = await files.offer(path: parts[1]) else { return true }
                await publish(offer.announcement, files: true)
                // And the universal-connectivity way, for its chats (they fetch by CID).
                _ = try? await pubsub.publish(ChatFiles.fileTopic(of: topic), data: Array(offer.cid.text().utf8))
                out.emit(
                    "file_offered", ["name": .string(offer.name), "size": .int(offer.size), "cid": .string(offer.cid.text())],
                    human: "offering \(offer.name) (\(byteCount(offer.size))) on \(topic)")
            case "/get":
                guard parts.count == 2, let number = Int(parts[1]) else {
                    out.error("usage: /get N (the number of a file offer; /files lists them)")
                    return true
                }
                await files.get(number)
            case "/files":
                await files.list()
            case "/status":
                await statusReporter?()
            case "/peers":
                let peers = host.connectedPeers.sorted()
                if peers.isEmpty { say("No peers connected.") }
                for peer in peers {
                    let addresses = host.connections.filter { $0.remotePeer == peer }.map { "\($0.remoteAddress)" }
                    out.emit(
                        "peer", ["peer": "\(peer)", "addr": .string(addresses.joined(separator: " "))],
                        human: "\(peer) \(addresses.joined(separator: " "))")
                }
            case "/topic":
                guard parts.count == 2, !parts[1].trimmingCharacters(in: .whitespaces).isEmpty else {
                    out.error("usage: /topic NAME")
                    return true
                }
                await leave()
                await join(parts[1].trimmingCharacters(in: .whitespaces))
                out.emit("topic", ["topic": .string(topic)], human: "Now on topic \(topic)")
                await who()
                await topicChanged?(topic)
            default:
                out.error("unknown command \(parts[0]); /help lists them")
            }
            return true
        }
        await publish(line.hasPrefix("//") ? String(line.dropFirst()) : line)
        return true
    }

    /// Publishes a line, kept in the history (for peers that miss it), paced
    /// (`PublishPacer`) so that a pasted block reaches go peers whole; the
    /// wait also holds back the reading of further input lines.
    private func publish(_ text: String, files: Bool = false) async {
        let wait = pacer.reserve(now: .now)
        if wait > .zero { try? await Task.sleep(for: wait) }
        do {
            let (message, reached) = try await pubsub.publishMessage(topic, data: Array(text.utf8))
            history.history.record(message)
            if reached == 0 { await notDelivered(text) }
        } catch {
            out.error("\(error)")
        }
    }

    /// Prints the peers on the topic, full ids (`who` event).
    private func who() async {
        let peers = await pubsub.peers(in: topic).map { "\($0)" }.sorted()
        out.emit(
            "who", ["topic": .string(topic), "peers": .strings(peers)],
            human: peers.isEmpty
                ? "Nobody else on \(topic)." : "On \(topic): \(peers.joined(separator: " "))")
    }

    /// A line that went to no peer: said so, not silently lost (and not an error).
    private func notDelivered(_ text: String) async {
        let nobody = await pubsub.peers(in: topic).isEmpty
        let reason = nobody ? "nobody on \(topic) yet" : "no peer on \(topic) to send it to yet (none in the mesh or above the publish threshold)"
        out.emit(
            "not_delivered", ["topic": .string(topic), "text": .string(text), "reason": .string(reason)],
            human: "\(reason): not delivered")
    }
}

/// `/status`: reachability, the addresses peers see us at and those we
/// advertise, relay reservations, the DHT mode, each connection, direct or
/// relayed, and what the host's limits refused (`status` event with --json).
func printStatus(
    out: ChatOutput, host: Libp2pHost, identify: IdentifyService, circuit: CircuitTransport, reachability: Reachability,
    dht: KadDHT?
) {
    let observed = identify.observedAddresses.map { "\($0)" }.sorted()
    let advertised = identify.advertisedAddresses.map { "\($0)" }
    let reservations = circuit.reservations.map { relay, grant in
        "\(relay) until \(Date(timeIntervalSince1970: Double(grant.expire)).formatted(.iso8601))"
    }.sorted()
    let connections = host.connections.map { connection in
        let kind = connection.remoteAddress.components.contains(.p2pCircuit) ? "relayed" : "direct"
        return "\(connection.remotePeer) \(connection.remoteAddress) \(kind)"
    }.sorted()
    let mode = dht.map { "\($0.mode)" } ?? "off"
    // What the host's limits refused or closed, by reason ("connection:per-ip 3").
    let counters = host.limitCounters
    var limits = counters.refusedConnections.map { "connection:\($0.key) \($0.value)" }
        + counters.refusedStreams.map { "stream:\($0.key) \($0.value)" }
        + counters.transport.map { "transport:\($0.key) \($0.value)" }
    if counters.refusedDials > 0 { limits.append("dials \(counters.refusedDials)") }
    if counters.backedOffAddresses > 0 { limits.append("backed-off-addresses \(counters.backedOffAddresses)") }
    if counters.idleClosed > 0 { limits.append("idle-closed \(counters.idleClosed)") }
    if counters.trimmed > 0 { limits.append("trimmed \(counters.trimmed)") }
    limits.sort()
    let fields: [String: JSONValue] = [
        "reachability": .string(reachability.rawValue), "observed": .strings(observed), "advertised": .strings(advertised),
        "reservations": .strings(reservations), "connections": .strings(connections), "dht": .string(mode),
        "limits": .strings(limits),
    ]
    let notes = [reachability.explanation, "DHT: \(mode)"].compactMap { $0 }
    var lines = ["Reachability: \(reachability.rawValue) (\(notes.joined(separator: "; ")))"]
    lines += observed.map { "Observed at: \($0)" }
    lines += advertised.map { "Advertised: \($0)" }
    lines += reservations.map { "Relay reservation: \($0)" }
    lines += connections.map { "Connection: \($0)" }
    lines += limits.map { "Refused or closed by limits: \($0)" }
    out.emit("status", fields, human: lines.joined(separator: "\n"))
}

/// The DHT mode that `reachability` calls for: server when public; client
/// when private or reachable on the local network only (peers beyond it could not dial us).
func followReachability(_ reachability: Reachability, dht: KadDHT, out: ChatOutput) {
    let wanted: KadDHTConfiguration.Mode
    switch reachability {
    case .public: wanted = .server
    case .private, .local: wanted = .client
    case .unknown: return
    }
    guard dht.mode != wanted else { return }
    dht.setMode(wanted)
    out.emit("dht_mode", ["mode": .string("\(wanted)")], human: "DHT mode: \(wanted)")
}

/// Prints a chat line (`message` event); lines from a peer's history are marked so.
func printMessage(_ message: PubSubMessage, out: ChatOutput, history: Bool) {
    let text = String(decoding: message.data, as: UTF8.self)
    var fields: [String: JSONValue] = [
        "topic": .string(message.topic), "from": .string(message.from.map { "\($0)" } ?? "anonymous"),
        "id": .string(message.id.hex), "text": .string(text),
    ]
    if history { fields["history"] = .bool(true) }
    out.emit("message", fields, human: (history ? "[history] " : "") + "\(message.from.map(out.name) ?? "anonymous"): \(text)")
}

/// The default download directory: $XDG_DATA_HOME (or ~/.local/share) /p2pchat/downloads.
func defaultDownloadDirectory() -> String {
    let environment = ProcessInfo.processInfo.environment
    let base = environment["XDG_DATA_HOME"].flatMap { $0.isEmpty ? nil : $0 }
        ?? (NSHomeDirectory() as NSString).appendingPathComponent(".local/share")
    return (base as NSString).appendingPathComponent("p2pchat/downloads")
}

/// "100M", "2G", "512K" or a plain number of bytes.
func parseByteCount(_ text: String) -> UInt64? {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased().replacingOccurrences(of: "IB", with: "")
    guard let last = trimmed.last else { return nil }
    if let unit = units[last] {
        guard let value = UInt64(trimmed.dropLast()) else { return nil }
        let (product, overflow) = value.multipliedReportingOverflow(by: unit)
        return overflow ? nil : product
    }
    return UInt64(trimmed)
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
            out.error("\(dialFailure("\(address)", error)); retrying in \(delay.components.seconds) s")
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
    }
}

/// Peers found by mDNS stay connected: one that drops while mDNS still sees
/// it (a link that flapped for less than the records' TTL reports nothing new)
/// is redialled with backoff, until connected or no longer seen.
func keepLocalPeersConnected(_ events: AsyncStream<HostEvent>, host: Libp2pHost, mdns: MDNSService) async {
    await withTaskGroup(of: Void.self) { group in
        for await event in events {
            guard case .peerDisconnected(let peer) = event else { continue }
            group.addTask { await redialWhileSeen(peer, host: host, mdns: mdns) }
        }
        group.cancelAll()
    }
}

/// Dials `peer` until connected, waiting before each attempt (1 s, doubling
/// to 30 s), for as long as mDNS still sees it and no connection exists.
func redialWhileSeen(_ peer: PeerID, host: Libp2pHost, mdns: MDNSService) async {
    var delay = Duration.seconds(1)
    while !Task.isCancelled {
        try? await Task.sleep(for: delay)
        guard !Task.isCancelled, host.connection(to: peer) == nil, await mdns.knows(peer) else { return }
        if (try? await host.connect(to: peer)) != nil { return }
        delay = min(delay * 2, .seconds(30))
    }
}

/// Prints mDNS discoveries and dials each newly discovered peer; a dial that
/// fails is tried again while mDNS still sees the peer (mDNS reports a peer
/// once, not at every announcement).
func handleDiscoveries(
    _ events: AsyncStream<MDNSEvent>, host: Libp2pHost, mdns: MDNSService, out: ChatOutput, sightings: OwnPeerSightings
) async {
    // The dials run beside the loop, and are cancelled with it.
    await withDiscardingTaskGroup { group in
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
                group.addTask {
                    do {
                        _ = try await host.connect(to: peer)
                    } catch {
                        out.error(dialFailure("\(peer)", error))
                        await redialWhileSeen(peer, host: host, mdns: mdns)
                    }
                }
            case .expired(let peer, let addresses):
                for address in addresses {
                    out.emit(
                        "expired", ["peer": "\(peer)", "addr": "\(address.withoutP2P)"],
                        human: "Removed peer: \(peer) with addr \(address.withoutP2P)")
                }
            case .ownPeerElsewhere(let addresses):
                sightings.saw(addresses, via: "mDNS")
            }
        }
    }
}

/// Our peer id seen at addresses that are not ours (in a DHT provider
/// record, or announced on mDNS): another process runs with our identity (a
/// copy of our key file), and peers may reach it instead of us. Never dialled;
/// said once per run, in one line (`identity_elsewhere` event).
final class OwnPeerSightings: Sendable {
    let host: Libp2pHost
    let identify: IdentifyService
    let out: ChatOutput
    private let reported = Mutex(false)

    init(host: Libp2pHost, identify: IdentifyService, out: ChatOutput) {
        self.host = host
        self.identify = identify
        self.out = out
    }

    func saw(_ addresses: [Multiaddr], via source: String) {
        // Ours: what we listen on and what identify advertises (observed addresses included).
        let ours = Set((host.listenAddresses + identify.advertisedAddresses).map(\.withoutP2P))
        let elsewhere = addresses.map(\.withoutP2P).filter { !ours.contains($0) }
        guard !elsewhere.isEmpty, reported.withLock({ done in defer { done = true }; return !done }) else { return }
        let list = elsewhere.map(\.description)
        out.emit(
            "identity_elsewhere", ["peer": "\(host.localPeer)", "addrs": .strings(list), "via": .string(source)],
            human: "Another process uses our peer id \(host.localPeer) at \(list.joined(separator: " ")) (seen in \(source)): "
                + "peers may reach it instead of us; start one of them with another --identity")
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
