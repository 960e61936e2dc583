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
                    printMessage(message, out: out, history: nil)
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

/// Prints a chat line (`message` event); lines from a peer's history are
/// marked so, with their signed send time (`sent`, ISO 8601), `old` when sent
/// before the history's window, or `time unknown`.
func printMessage(_ message: PubSubMessage, out: ChatOutput, history: HistoryLineTime?) {
    let text = String(decoding: message.data, as: UTF8.self)
    var fields: [String: JSONValue] = [
        "topic": .string(message.topic), "from": .string(message.from.map { "\($0)" } ?? "anonymous"),
        "id": .string(message.id.hex), "text": .string(text),
    ]
    var mark = ""
    if let history {
        fields["history"] = .bool(true)
        switch history {
        case .sent(let time):
            fields["sent"] = .string(time.formatted(.iso8601))
            fields["old"] = .bool(false)
            mark = "[history \(localClock(time, withDate: !Calendar.current.isDateInToday(time)))] "
        case .old(let time):
            fields["sent"] = .string(time.formatted(.iso8601))
            fields["old"] = .bool(true)
            mark = "[history, old: \(localClock(time, withDate: true))] "
        case .unknown:
            mark = "[history, time unknown] "
        }
    }
    out.emit("message", fields, human: mark + "\(message.from.map(out.name) ?? "anonymous"): \(text)")
}

/// `time` as local `HH:mm`, after `yyyy-MM-dd ` with `withDate` (unambiguous in every locale).
func localClock(_ time: Date, withDate: Bool) -> String {
    let parts = Calendar.current.dateComponents([.year, .month, .day, .hour, .minute], from: time)
    let clock = String(format: "%02d:%02d", parts.hour ?? 0, parts.minute ?? 0)
    guard withDate else { return clock }
    return String(format: "%04d-%02d-%02d ", parts.year ?? 0, parts.month ?? 0, parts.day ?? 0) + clock
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
