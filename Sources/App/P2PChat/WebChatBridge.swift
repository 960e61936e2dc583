import AutoNAT
import DCUtR
import Foundation
import Host
import Identify
import KadDHT
import PubSub
import Relay
import Synchronization
import Transport
import WebChat

/// `--web [ADDR]`: the chat as a local web page, fed by the same session as
/// the terminal. Every event `ChatOutput` emits goes to the page as its JSON
/// line; lines typed in the page join the terminal's input; the network view
/// is redrawn from the host's state each second it changes.
final class WebChatBridge: Sendable {
    let server: WebChatServer
    let uploads: String
    private let tasks: Mutex<[Task<Void, Never>]>

    private init(server: WebChatServer, uploads: String, tasks: [Task<Void, Never>]) {
        self.server = server
        self.uploads = uploads
        self.tasks = Mutex(tasks)
    }

    /// `HOST:PORT`, `[IPv6]:PORT`, `HOST` (port 8080) or `PORT` (on 127.0.0.1); nil if not one of them.
    static func parseAddress(_ text: String) -> (host: String, port: Int)? {
        if let port = Int(text) { return (0...65535).contains(port) ? ("127.0.0.1", port) : nil }
        var host = text
        var port = 8080
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            if !rest.isEmpty {
                guard rest.hasPrefix(":"), let value = Int(rest.dropFirst()) else { return nil }
                port = value
            }
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            host = String(text[..<colon])
            guard let value = Int(text[text.index(after: colon)...]) else { return nil }
            port = value
        }
        guard !host.isEmpty, (0...65535).contains(port), host.allSatisfy({ $0.isLetter || $0.isNumber || ".-:".contains($0) })
        else { return nil }
        return (host, port)
    }

    /// Serves the page on `address` and connects it to the chat; `input` takes the page's lines.
    static func start(
        address: (host: String, port: Int), out: ChatOutput, input: AsyncStream<String>.Continuation, session: ChatSession,
        host: Libp2pHost, identify: IdentifyService, circuit: CircuitTransport, nat: ChatNATTraversal, pubsub: PubSubService,
        dht: KadDHT?
    ) async throws -> WebChatBridge {
        let uploads = (NSTemporaryDirectory() as NSString).appendingPathComponent("p2pchat-web-\(getpid())")
        var configuration = WebChatConfiguration(uploadDirectory: uploads)
        configuration.host = address.host
        configuration.port = address.port
        let me = "\(host.localPeer)"
        let handlers = WebChatHandlers(
            line: { line in input.yield(line) },
            // Offered as `/send PATH` typed in the terminal would be.
            uploaded: { path in input.yield("/send \(path)") },
            greeting: {
                let topic = await session.topic
                return [jsonLine(["event": "hello", "peer": .string(me), "topic": .string(topic)])]
            })
        let server = try await WebChatServer.start(configuration, handlers: handlers)
        // Progress is news of the moment: not kept for pages that connect later.
        out.tap.listen { event, line in server.broadcast(line, keep: event != "file_progress") }
        // Connections that hole punching made direct, by connection id.
        let punched = PunchedConnections()
        let punches = nat.holePunch.events()
        let punchWatch = Task {
            for await event in punches {
                if case .succeeded(_, let connection, _, _, _) = event { punched.insert(connection.id) }
            }
        }
        let drawing = Task {
            while !Task.isCancelled {
                let topic = await session.topic
                let view = await networkView(
                    host: host, identify: identify, circuit: circuit, reachability: nat.autonat.reachability, pubsub: pubsub,
                    topic: topic, dht: dht, punched: punched.ids)
                server.showNetwork(view)
                try? await Task.sleep(for: .seconds(1))
            }
        }
        return WebChatBridge(server: server, uploads: uploads, tasks: [punchWatch, drawing])
    }

    /// A line about to be handled (typed here or in the terminal): text to
    /// send is shown in the page as ours (`sent`); `/help` is answered there.
    func typed(_ line: String) {
        if line.hasPrefix("/") && !line.hasPrefix("//") {
            if line == "/help" {
                server.broadcast(
                    jsonLine(["event": "notice", "text": "Commands: /who, /peers, /status, /send PATH, /files, /get N, /topic NAME, /help, /quit. Drop a file on the page to offer it."]),
                    keep: false)
            }
            return
        }
        guard !line.isEmpty else { return }
        server.broadcast(jsonLine(["event": "sent", "text": .string(line.hasPrefix("//") ? String(line.dropFirst()) : line)]))
    }

    func stop() async {
        let tasks = self.tasks.withLock { tasks in
            defer { tasks = [] }
            return tasks
        }
        for task in tasks { task.cancel() }
        await server.close()
        try? FileManager.default.removeItem(atPath: uploads)
    }
}

/// The network as the page draws it, from the host's state now.
func networkView(
    host: Libp2pHost, identify: IdentifyService, circuit: CircuitTransport, reachability: Reachability, pubsub: PubSubService,
    topic: String, dht: KadDHT?, punched: Set<UInt64>
) async -> NetworkView {
    let links = host.connections.map { connection in
        let kind = connection.isRelayed ? "relayed" : punched.contains(connection.id) ? "hole punched" : "direct"
        return NetworkView.Link(
            peer: "\(connection.remotePeer)", address: "\(connection.remoteAddress)", kind: kind, transport: connection.transport,
            direction: "\(connection.direction)", security: connection.security, muxer: connection.muxer)
    }.sorted { ($0.peer, $0.address) < ($1.peer, $1.address) }
    let reservations = circuit.reservations.map { relay, grant in
        NetworkView.Reservation(relay: "\(relay)", expires: Date(timeIntervalSince1970: Double(grant.expire)).formatted(.iso8601))
    }.sorted { $0.relay < $1.relay }
    return NetworkView(
        peer: "\(host.localPeer)", reachability: reachability.rawValue, listen: host.listenAddresses.map(\.description),
        observed: identify.observedAddresses.map(\.description).sorted(), advertised: identify.advertisedAddresses.map(\.description),
        reservations: reservations, topic: topic, topicPeers: await pubsub.peers(in: topic).map { "\($0)" }.sorted(),
        mesh: await pubsub.mesh(topic).map { "\($0)" }.sorted(), connections: links, dht: dht.map { "\($0.mode)" } ?? "off")
}

/// With `--web`: the lines of stdin and of the page in one stream, which ends
/// on SIGINT or SIGTERM (or a `/quit` from either) but not at stdin's end, so
/// a chat driven from the page runs with no terminal.
func chatAndPageInputLines() -> (lines: AsyncStream<String>, input: AsyncStream<String>.Continuation, stdin: Task<Void, Never>) {
    let (lines, input) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(1024))
    onTerminationSignal { input.finish() }
    let (stdinLines, stdinFeed) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(1024))
    ChatTerminal.shared.lines(into: stdinFeed)
    let forwarder = Task {
        for await line in stdinLines { input.yield(line) }
    }
    return (lines, input, forwarder)
}

/// Connections that hole punching made direct, by connection id.
final class PunchedConnections: Sendable {
    private let members = Mutex<Set<UInt64>>([])

    func insert(_ id: UInt64) { _ = members.withLock { $0.insert(id) } }
    var ids: Set<UInt64> { members.withLock { $0 } }
}
