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
    /// Every event also goes here, as its JSON line, once something listens (the web page, `--web`).
    let tap = ChatEventTap()

    init(json: Bool, decorated: Bool = false) {
        self.json = json
        self.decorated = decorated && !json
    }

    func emit(_ event: String, _ fields: [String: JSONValue], human: @autoclosure () -> String) {
        tap.send(event, fields)
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
            tap.send("error", ["message": .string(message)])
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

/// Where `ChatOutput` also sends its events: nowhere until a listener is set.
final class ChatEventTap: Sendable {
    private let listener = Mutex<(@Sendable (_ event: String, _ line: String) -> Void)?>(nil)

    func listen(_ listener: @escaping @Sendable (_ event: String, _ line: String) -> Void) {
        self.listener.withLock { $0 = listener }
    }

    /// The event as its --json line (with `event` and `ts`), to the listener if any.
    func send(_ event: String, _ fields: [String: JSONValue]) {
        guard let listener = listener.withLock({ $0 }) else { return }
        var object = fields
        object["event"] = .string(event)
        object["ts"] = .string(isoTimestamp())
        listener(event, jsonLine(object))
    }
}
