import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import Synchronization

/// Where and how the web chat is served.
public struct WebChatConfiguration: Sendable {
    /// The address to listen on: loopback unless the user names another.
    public var host = "127.0.0.1"
    /// 0 picks a free port.
    public var port = 8080
    public var token = WebChatAccess.randomToken()
    /// Where files the page uploads (to offer them) are kept while the chat runs.
    public var uploadDirectory: String
    /// The largest file the page may upload; it is held in memory until written.
    public var maxUploadBytes = 256 * 1024 * 1024
    /// Events kept for a page that (re)connects: the conversation so far.
    public var backlog = 1000

    public init(uploadDirectory: String) {
        self.uploadDirectory = uploadDirectory
    }
}

/// What the page asks of the chat.
public struct WebChatHandlers: Sendable {
    /// A line typed into the page: text to send or a command, as on the terminal.
    public var line: @Sendable (String) async -> Void
    /// A file the page uploaded (picked or dropped) is at this path: offer it.
    public var uploaded: @Sendable (String) async -> Void
    /// The first events a page gets when it connects (who we are, the topic), before the backlog.
    public var greeting: @Sendable () async -> [String]

    public init(
        line: @escaping @Sendable (String) async -> Void, uploaded: @escaping @Sendable (String) async -> Void,
        greeting: @escaping @Sendable () async -> [String]
    ) {
        self.line = line
        self.uploaded = uploaded
        self.greeting = greeting
    }
}

public enum WebChatError: Error, CustomStringConvertible, Sendable {
    case listenFailed(address: String, reason: String)

    public var description: String {
        switch self {
        case .listenFailed(let address, let reason): "web chat: cannot listen on \(address): \(reason)"
        }
    }
}

/// The chat as a local web page: `GET /` is the page (static, in this
/// target), `/ws` its WebSocket (events down as the chat's JSON lines, lines
/// up as `{"line": ...}`), `POST /upload?name=` a file to offer. Every request
/// needs the token; pages from other origins are refused (`WebChatAccess`).
public final class WebChatServer: Sendable {
    public let configuration: WebChatConfiguration
    public let access: WebChatAccess
    /// The port bound (the one asked, or the one picked for 0).
    public let port: Int
    /// What the user opens: `http://host:port/?token=...`.
    public let url: String
    private let channel: any Channel
    private let hub: Hub
    private let inputTask: Task<Void, Never>

    private init(configuration: WebChatConfiguration, access: WebChatAccess, port: Int, url: String, channel: any Channel, hub: Hub, inputTask: Task<Void, Never>) {
        self.configuration = configuration
        self.access = access
        self.port = port
        self.url = url
        self.channel = channel
        self.hub = hub
        self.inputTask = inputTask
    }

    /// Listens and serves until `close`.
    public static func start(
        _ configuration: WebChatConfiguration, handlers: WebChatHandlers,
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton,
        logger: Logger = Logger(label: "p2pchat.webchat")
    ) async throws -> WebChatServer {
        let (inputs, inputFeed) = AsyncStream.makeStream(of: Hub.Input.self, bufferingPolicy: .bufferingOldest(1024))
        let hub = Hub(backlog: configuration.backlog, inputs: inputFeed)
        // The access depends on the port, known once bound: set before the first request is read.
        let accessBox = Mutex<WebChatAccess?>(nil)
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(ChannelOptions.writeBufferWaterMark, value: .init(low: 1 << 20, high: 8 << 20))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let access = accessBox.withLock({ $0 }) else { throw ChannelError.ioOnClosedChannel }
                    try Self.configure(channel, access: access, configuration: configuration, hub: hub, logger: logger)
                }
            }
        let address = WebChatAccess.hostPort(configuration.host, configuration.port)
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: configuration.host, port: configuration.port).get()
        } catch {
            throw WebChatError.listenFailed(address: address, reason: "\(error)")
        }
        let port = channel.localAddress?.port ?? configuration.port
        let access = WebChatAccess.forServer(host: configuration.host, port: port, token: configuration.token)
        accessBox.withLock { $0 = access }
        // A wildcard address is no place to point a browser at: loopback reaches it.
        let shownHost = ["0.0.0.0", "::"].contains(configuration.host) ? "127.0.0.1" : configuration.host
        let url = "http://\(WebChatAccess.hostPort(shownHost, port))/?token=\(configuration.token)"
        // Lines from every page, handled one at a time in the order they came.
        let inputTask = Task {
            for await input in inputs {
                switch input {
                case .line(let line): await handlers.line(line)
                case .uploaded(let path): await handlers.uploaded(path)
                case .greet(let socket): hub.greet(socket, with: await handlers.greeting())
                }
            }
        }
        return WebChatServer(configuration: configuration, access: access, port: port, url: url, channel: channel, hub: hub, inputTask: inputTask)
    }

    /// Sends an event (one JSON object) to every page; `keep`: also to pages that connect later.
    public func broadcast(_ event: String, keep: Bool = true) {
        hub.broadcast(event, keep: keep)
    }

    /// The latest network view, sent to every page and to pages that connect later.
    public func showNetwork(_ view: NetworkView) {
        hub.showNetwork(view.event())
    }

    /// Pages connected now.
    public var pages: Int { hub.count }

    public func close() async {
        try? await channel.close()
        hub.closeAll()
        inputTask.cancel()
    }

    private static func configure(
        _ channel: any Channel, access: WebChatAccess, configuration: WebChatConfiguration, hub: Hub, logger: Logger
    ) throws {
        let upgrader = NIOWebSocketServerUpgrader(
            maxFrameSize: WebChatInput.maxMessageBytes,
            // WebChatSocketHandler answers decoder errors, with a reason the page can show.
            automaticErrorHandling: false,
            shouldUpgrade: { channel, head in
                let allowed =
                    WebChatAccess.path(of: head.uri) == "/ws"
                    && access.check(target: head.uri, host: head.headers.first(name: "Host"), origin: head.headers.first(name: "Origin")) == nil
                // Refused: the request goes on to WebChatHTTPHandler, which says why.
                return channel.eventLoop.makeSucceededFuture(allowed ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { channel, _ in
                channel.eventLoop.makeCompletedFuture {
                    let pipeline = channel.pipeline.syncOperations
                    _ = pipeline.removeHandler(try pipeline.handler(type: WebChatHTTPHandler.self))
                    try pipeline.addHandler(WebChatSocketHandler(hub: hub, logger: logger))
                }
            }
        )
        let pipeline = channel.pipeline.syncOperations
        try pipeline.configureHTTPServerPipeline(withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
        try pipeline.addHandler(WebChatHTTPHandler(access: access, configuration: configuration, hub: hub, logger: logger))
    }
}

/// The pages connected, the events kept for new ones, and the queue of what pages send.
final class Hub: Sendable {
    enum Input: Sendable {
        case line(String)
        case uploaded(String)
        case greet(Socket)
    }

    /// One page's WebSocket.
    final class Socket: Sendable {
        let channel: any Channel
        let id: ObjectIdentifier

        init(channel: any Channel) {
            self.channel = channel
            self.id = ObjectIdentifier(channel)
        }

        func send(_ text: String) {
            let frame = WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: text))
            channel.writeAndFlush(frame, promise: nil)
        }
    }

    private struct State {
        var sockets: [ObjectIdentifier: Socket] = [:]
        var backlog: [String] = []
        var network: String?
        var closed = false
    }

    private let state = Mutex(State())
    private let limit: Int
    let inputs: AsyncStream<Input>.Continuation

    init(backlog: Int, inputs: AsyncStream<Input>.Continuation) {
        self.limit = backlog
        self.inputs = inputs
    }

    var count: Int { state.withLock { $0.sockets.count } }

    /// Queues what a page sent; false when the queue is full (the page is told).
    func submit(_ input: Input) -> Bool {
        if case .enqueued = inputs.yield(input) { return true }
        return false
    }

    /// A new page: the greeting, what was said so far, the network; then it gets each event as it comes.
    func greet(_ socket: Socket, with greeting: [String]) {
        // Under the lock: no broadcast slips between the backlog and the registration.
        state.withLock { state in
            guard !state.closed, socket.channel.isActive else { return }
            for event in greeting + state.backlog { socket.send(event) }
            if let network = state.network { socket.send(network) }
            state.sockets[socket.id] = socket
        }
    }

    func remove(_ socket: Socket) {
        _ = state.withLock { $0.sockets.removeValue(forKey: socket.id) }
    }

    func broadcast(_ event: String, keep: Bool) {
        state.withLock { state in
            if keep {
                state.backlog.append(event)
                if state.backlog.count > limit { state.backlog.removeFirst(state.backlog.count - limit) }
            }
            for socket in state.sockets.values { socket.send(event) }
        }
    }

    func showNetwork(_ event: String) {
        state.withLock { state in
            guard state.network != event else { return }
            state.network = event
            for socket in state.sockets.values { socket.send(event) }
        }
    }

    func closeAll() {
        let sockets = state.withLock { state in
            state.closed = true
            defer { state.sockets = [:] }
            return Array(state.sockets.values)
        }
        for socket in sockets { socket.channel.close(promise: nil) }
        inputs.finish()
    }
}
