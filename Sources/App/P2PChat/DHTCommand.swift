import ArgumentParser
import Foundation
import Host
import Identity
import Libp2p
import KadDHT
import Multiformats
import ServiceLifecycle
import Transport

/// The DHT options of the chat.
struct DHTOptions: ParsableArguments {
    @Option(name: .long, help: "A DHT bootstrap peer's /p2p/ address (repeatable); enables finding topic peers through the DHT.")
    var bootstrap: [String] = []

    @Flag(name: .customLong("dht-server"), help: "Serve the DHT (/ipfs/kad/1.0.0) to others; client mode otherwise.")
    var dhtServer = false

    @Option(
        name: .customLong("dht-interval"),
        help: ArgumentHelp("Seconds between DHT lookups of the topic's providers.", visibility: .hidden))
    var interval: Double = 30

    /// The bootstrap addresses; exits on one without a peer id.
    func bootstrapAddresses() -> [Multiaddr] {
        bootstrap.map { text in
            let address = parseAddress(text)
            if address.peerID == nil { exitWithError("--bootstrap \(text) needs a /p2p/<peer id> part") }
            return address
        }
    }
}

/// Makes a DHT on `host` in the mode asked for, started.
func startDHT(host: Libp2pHost, server: Bool) -> KadDHT {
    let dht = KadDHT(host: host, configuration: KadDHTConfiguration(mode: server ? .server : .client))
    dht.start()
    return dht
}

/// Peers of a topic found through the DHT: the chat provides the topic's key
/// (`ContentKey.topic`: the sha2-256 multihash of "p2pchat/topic/" + name)
/// and, every `interval`, looks up the key's providers and dials those it is
/// not connected to. `move(to:)` follows `/topic`.
actor TopicDiscovery {
    let dht: KadDHT
    let interval: Duration
    let out: ChatOutput
    /// Where a provider record of our own peer id that is not ours is reported.
    let sightings: OwnPeerSightings
    private var topic: String
    private var loop: Task<Void, Never>?
    /// The wait between rounds, cut short by `announceSoon`.
    private var nap: Task<Void, Never>?
    private var wakeRequested = false
    /// Rounds in a row that reached no other provider: until one is reached the
    /// rounds come sooner (2 s, doubling up to `interval`), so two chats that
    /// announce at the same moment, each before the other's record is there,
    /// still meet within seconds.
    private var lonelyRounds = 0
    static let firstLonelyWait: Duration = .seconds(2)
    /// Providers dialled at once in a round.
    static let concurrentDials = 8

    init(dht: KadDHT, topic: String, interval: Duration, out: ChatOutput, sightings: OwnPeerSightings) {
        self.dht = dht
        self.topic = topic
        self.interval = interval
        self.out = out
        self.sightings = sightings
    }

    func start(bootstrap: [Multiaddr]) {
        loop = Task { [dht, out] in
            do {
                try await dht.bootstrap(peers: bootstrap)
            } catch {
                out.error("DHT bootstrap: \(error)")
            }
            while !Task.isCancelled {
                let foundOthers = await self.round()
                await self.sleepUntilNextRound(foundOthers: foundOthers)
            }
        }
    }

    private func sleepUntilNextRound(foundOthers: Bool) async {
        guard !wakeRequested else {
            wakeRequested = false
            return
        }
        lonelyRounds = foundOthers ? 0 : lonelyRounds + 1
        let interval = foundOthers ? self.interval : min(self.interval, Self.firstLonelyWait * (1 << min(lonelyRounds - 1, 10)))
        let nap = Task { _ = try? await Task.sleep(for: interval) }
        self.nap = nap
        await withTaskCancellationHandler { await nap.value } onCancel: { nap.cancel() }
        self.nap = nil
        wakeRequested = false
    }

    /// Runs the next round now: our addresses changed (a relay reservation
    /// gives the circuit address others need in our provider record).
    func announceSoon() {
        lonelyRounds = 0
        wakeRequested = true
        nap?.cancel()
    }

    /// Announces the current topic and dials its other providers; whether we are connected to any.
    @discardableResult
    private func round() async -> Bool {
        let key = ContentKey.topic(topic)
        // Looked up before we announce: a record of our own id that another process
        // (with a copy of our key) left is then still there to be seen, not replaced by ours.
        let providers = await dht.findProviders(key, limit: 64)
        await dht.provide(key)
        let host = dht.host
        var others: [DHTPeer] = []
        for provider in providers {
            // Never dialled: our own record, or another process's with our identity (said once).
            guard provider.id != host.localPeer else {
                sightings.saw(provider.addresses, via: "a DHT provider record")
                continue
            }
            others.append(provider)
        }
        // Several at once, in the order the DHT gave (freshest first): records of
        // peers that are gone (they live 48 h) must not make the live ones wait
        // behind their time-outs, nor take every dial the host allows at once.
        let out = self.out
        let unconnected = others.filter { host.connection(to: $0.id) == nil }
        await withTaskGroup(of: Void.self) { group in
            for (index, provider) in unconnected.enumerated() {
                if index >= Self.concurrentDials { await group.next() }
                host.peerStore.addAddresses(provider.addresses, for: provider.id)
                group.addTask {
                    do { _ = try await host.connect(to: provider.id) } catch {
                        out.error("topic provider: \(dialFailure("\(provider.id)", error))")
                    }
                }
            }
        }
        // Records of peers that are gone do not count: only one we reached.
        return others.contains { host.connection(to: $0.id) != nil }
    }

    /// Moves the advertisement to `newTopic` at once.
    func move(to newTopic: String) async {
        guard newTopic != topic else { return }
        dht.stopProviding(ContentKey.topic(topic))
        topic = newTopic
        lonelyRounds = 0
        await round()
    }

    func stop() async {
        loop?.cancel()
        await loop?.value
    }
}

struct DHTServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dht-server",
        abstract: "Run a DHT bootstrap node (/ipfs/kad/1.0.0 server, identify, ping) until SIGINT or SIGTERM.")

    @Option(help: "Address to listen on (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/udp/0/quic-v1"]

    @Option(name: .long, help: "Other bootstrap peers to join (repeatable).")
    var bootstrap: [String] = []

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let signals = TerminationSignalService()
        let (key, inUse) = identity.key(fileByDefault: true)
        inUse?.report(to: ChatOutput(json: false))
        let (host, identify, ping) = makeHost(key: key, options: identity)
        let dht = startDHT(host: host, server: true)
        await listenOrExit(host, on: listen) { FileHandle.standardError.write(Data("error: \($0)\n".utf8)) }
        say("Local peer id: \(host.localPeer)")
        for address in host.listenAddresses {
            say("Listening on \(address.encapsulating(.p2p(host.localPeer.bytes)))")
        }
        if !bootstrap.isEmpty {
            do { try await dht.bootstrap(peers: bootstrap.map(parseAddress)) } catch {
                FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            }
        }
        await runUntilTerminationSignal(signals, [HostService(host), identify.service(), ping.service(), dht.service()])
    }
}

/// Options of the one-shot `dht` queries.
struct DHTQueryOptions: ParsableArguments {
    @Option(name: .long, help: "A DHT bootstrap peer's /p2p/ address (repeatable; at least one).")
    var bootstrap: [String] = []

    @Flag(help: "One JSON object per result line.")
    var json = false

    @Option(help: "Seconds to wait for the whole query.")
    var timeout: Double = 60

    @OptionGroup var identity: IdentityOptions

    /// Runs `query` on a fresh client-mode DHT bootstrapped from `--bootstrap`;
    /// exits 1 with one error line when it fails or times out.
    func run(_ query: @escaping @Sendable (KadDHT) async throws -> Void) async {
        bootstrapLogging(verbose: identity.verbose)
        if bootstrap.isEmpty { exitWithError("--bootstrap: give at least one DHT peer") }
        let addresses = bootstrap.map(parseAddress)
        let (host, _, _) = makeHost(key: identity.toolKey(), options: identity)
        let dht = startDHT(host: host, server: false)
        do {
            try await withTimeout(.milliseconds(Int(timeout * 1000)), "DHT query") {
                try await dht.bootstrap(peers: addresses)
                try await query(dht)
            }
        } catch {
            await dht.close()
            await host.close()
            exitWithError("\(error)")
        }
        await dht.close()
        await host.close()
    }

    func emit(_ fields: [String: String], human: String) {
        ChatOutput(json: json).emit("result", fields.mapValues { .string($0) }, human: human)
    }
}

/// Why a DHT query found nothing.
struct DHTNotFound: Error, CustomStringConvertible {
    let what: String
    var description: String { "\(what) not found in the DHT" }
}

/// A record our validator refuses: DHT peers apply the same rules, so it is not sent.
struct DHTPutRefused: Error, CustomStringConvertible {
    let key: String
    let reason: RecordError
    var description: String { "DHT peers refuse \(key): \(reason) (not sent)" }
}

/// A key given on the command line: a CID (its multihash), hex, or else the text's UTF-8 bytes.
func parseDHTKey(_ text: String) -> [UInt8] {
    ContentKey.parse(text) ?? Array(text.utf8)
}

struct DHTCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "dht", abstract: "Query the Kademlia DHT through --bootstrap peers.",
        subcommands: [FindPeer.self, Providers.self, Get.self, Put.self])

    struct FindPeer: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "find-peer", abstract: "Print the addresses of a peer, one per line.")
        @Argument(help: "The peer id.") var peer: String
        @OptionGroup var options: DHTQueryOptions

        func run() async throws {
            let target: PeerID
            do { target = try PeerID(peer) } catch { exitWithError("\(error)") }
            let options = self.options
            await options.run { dht in
                guard let addresses = await dht.findPeer(target) else { throw DHTNotFound(what: "peer \(target)") }
                for address in addresses {
                    options.emit(["peer": "\(target)", "addr": "\(address)"], human: "\(address)")
                }
            }
        }
    }

    struct Providers: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "providers",
            abstract: "Print the providers of KEY (a CID, hex, or text), or of a chat topic, one per line.")
        @Argument(help: "The key: a CID (Qm... or bafy...: its multihash), hex of a multihash, or text.") var key: String?
        @Option(help: "A chat topic instead of KEY.") var topic: String?
        @OptionGroup var options: DHTQueryOptions

        func run() async throws {
            let bytes: [UInt8]
            switch (key, topic) {
            case (let key?, nil): bytes = parseDHTKey(key)
            case (nil, let topic?): bytes = ContentKey.topic(topic)
            default: exitWithError("give either KEY or --topic NAME")
            }
            let options = self.options
            let what = topic.map { "providers of topic \($0)" } ?? "providers of \(key ?? "")"
            await options.run { dht in
                let providers = await dht.findProviders(bytes, limit: 64)
                guard !providers.isEmpty else { throw DHTNotFound(what: what) }
                for provider in providers {
                    let addresses = provider.addresses.map(\.description).joined(separator: " ")
                    options.emit(
                        ["peer": "\(provider.id)", "addrs": addresses], human: "\(provider.id) \(addresses)")
                }
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "get", abstract: "Print the value of a record (e.g. /p2pchat/NAME).")
        @Argument(help: "The record key, e.g. /p2pchat/alice.") var key: String
        @OptionGroup var options: DHTQueryOptions

        func run() async throws {
            let key = self.key
            let options = self.options
            await options.run { dht in
                guard let value = await dht.getValue(key: Array(key.utf8)) else { throw DHTNotFound(what: "record \(key)") }
                let text = String(decoding: value, as: UTF8.self)
                options.emit(["key": key, "value": text], human: text)
            }
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "put", abstract: "Store a record (/p2pchat/NAME: UTF-8 text up to 1 KiB) at the closest peers.")
        @Argument(help: "The record key, e.g. /p2pchat/alice.") var key: String
        @Argument(help: "The value.") var value: String
        @OptionGroup var options: DHTQueryOptions

        func run() async throws {
            let key = self.key
            let value = self.value
            let options = self.options
            await options.run { dht in
                let stored: Int
                do {
                    stored = try await dht.putValue(key: Array(key.utf8), value: Array(value.utf8))
                } catch KadDHTError.invalidRecord(let why) {
                    throw DHTPutRefused(key: key, reason: why)
                }
                options.emit(["key": key, "peers": "\(stored)"], human: "Stored \(key) at \(stored) peers")
            }
        }
    }
}
