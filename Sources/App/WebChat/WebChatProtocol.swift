import Foundation

/// What the page sends over its WebSocket: one JSON text message per input,
/// `{"line": "..."}`, a line as typed into the terminal chat (text to send, or
/// a command such as `/topic NAME`, `/who`, `/get N`). A line with newlines is
/// several lines, as a paste into the terminal is.
public enum WebChatInput {
    /// The most bytes of one message from the page (the WebSocket's own limit too).
    public static let maxMessageBytes = 64 * 1024
    /// The most lines one message may hold.
    public static let maxLines = 100

    /// Why a message from the page was not taken; sent back to it as an `error` event.
    public enum Failure: Error, Equatable, CustomStringConvertible, Sendable {
        case binary
        case tooLarge(bytes: Int)
        case notUTF8
        case notJSON
        case noLine
        case tooManyLines(Int)

        public var description: String {
            switch self {
            case .binary: "binary WebSocket messages are not understood: send JSON text, {\"line\": \"...\"}"
            case .tooLarge(let bytes): "message of \(bytes) bytes refused: at most \(WebChatInput.maxMessageBytes)"
            case .notUTF8: "message is not UTF-8 text"
            case .notJSON: "message is not a JSON object: send {\"line\": \"...\"}"
            case .noLine: "message has no \"line\" string: send {\"line\": \"...\"}"
            case .tooManyLines(let count): "message of \(count) lines refused: at most \(WebChatInput.maxLines)"
            }
        }
    }

    /// The lines of one text message from the page (empty lines dropped).
    public static func decode(_ bytes: [UInt8]) throws(Failure) -> [String] {
        guard bytes.count <= maxMessageBytes else { throw .tooLarge(bytes: bytes.count) }
        guard let text = String(validating: bytes, as: UTF8.self) else { throw .notUTF8 }
        guard let object = try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any] else {
            throw .notJSON
        }
        guard let line = object["line"] as? String else { throw .noLine }
        let lines = line.split(omittingEmptySubsequences: true, whereSeparator: \.isNewline).map(String.init)
        guard lines.count <= maxLines else { throw .tooManyLines(lines.count) }
        return lines
    }

    /// An `error` event for the page, as the chat's --json output writes one.
    public static func errorEvent(_ message: String) -> String {
        let object: [String: String] = ["event": "error", "message": message]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}

/// The network as the page draws it: our node, each connection (direct,
/// relayed or hole punched, and over what), reachability, relay
/// reservations, and the topic's peers and gossipsub mesh.
public struct NetworkView: Codable, Sendable, Equatable {
    public struct Link: Codable, Sendable, Equatable {
        public var peer: String
        public var address: String
        /// "direct", "relayed" or "hole punched".
        public var kind: String
        /// "tcp", "ws", "quic", "p2p-circuit".
        public var transport: String
        /// "inbound" or "outbound".
        public var direction: String
        public var security: String
        public var muxer: String

        public init(
            peer: String, address: String, kind: String, transport: String, direction: String, security: String, muxer: String
        ) {
            self.peer = peer
            self.address = address
            self.kind = kind
            self.transport = transport
            self.direction = direction
            self.security = security
            self.muxer = muxer
        }
    }

    public struct Reservation: Codable, Sendable, Equatable {
        public var relay: String
        /// ISO 8601.
        public var expires: String

        public init(relay: String, expires: String) {
            self.relay = relay
            self.expires = expires
        }
    }

    public var peer: String
    public var reachability: String
    public var listen: [String]
    public var observed: [String]
    public var advertised: [String]
    public var reservations: [Reservation]
    public var topic: String
    /// Peers subscribed to the topic.
    public var topicPeers: [String]
    /// The topic's gossipsub mesh (empty under floodsub).
    public var mesh: [String]
    public var connections: [Link]
    public var dht: String

    public init(
        peer: String, reachability: String, listen: [String], observed: [String], advertised: [String],
        reservations: [Reservation], topic: String, topicPeers: [String], mesh: [String], connections: [Link], dht: String
    ) {
        self.peer = peer
        self.reachability = reachability
        self.listen = listen
        self.observed = observed
        self.advertised = advertised
        self.reservations = reservations
        self.topic = topic
        self.topicPeers = topicPeers
        self.mesh = mesh
        self.connections = connections
        self.dht = dht
    }

    /// The `network` event: `{"event": "network", "network": {...}}`, keys sorted (equal views, equal text).
    public func event() -> String {
        struct Event: Encodable {
            let event = "network"
            let network: NetworkView
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        let data = (try? encoder.encode(Event(network: self))) ?? Data("{}".utf8)
        return String(decoding: data, as: UTF8.self)
    }
}
