import Foundation
import NIOPosix
import Synchronization

// `p2pbench attack KIND TARGET [--seconds N] [--from IPv4] [--topic NAME]`:
// issue 25's ways in, run against a live chat for a bounded time (by
// Benchmarks/soak-under-attack.sh, while a soak runs). Each attack bounds
// what it holds on our side too, and prints one line of what it did.

let attackUsage = """
    Usage: p2pbench attack KIND TARGET [--seconds N] [--from IPv4] [--topic NAME]
    Runs one of issue 25's attacks against TARGET (a chat's /ip4/.../tcp/PORT/p2p/ID;
    for `metrics`, the HOST:PORT or URL of its --metrics) for N seconds (default 60),
    from source addresses counted up from --from (default 127.0.0.2; loopback is
    exempt from the per-address shares, so a soak runs the chats in a namespace).
      handshakes   row 1: 70 idle TCP sockets from one address, reopened as they close
      streams      row 2: 48 peer ids from 2 addresses, up to 256 idle ping streams each
      connections  row 10: 16 peer ids from each of 20 addresses, redialled within a second when closed
      providers    rows 3, 7, 8: 64 peer ids from 8 addresses send ADD_PROVIDER of the largest records
                   (needs --dht-server), the first 64 on TOPIC's key
      dcutr        rows 5, 6: DCUtR CONNECT naming a third party on a direct connection, and STOP
                   from a peer that is no relay; counts the dials the target made
      metrics      row 13: 1100 idle connections to --metrics and 16 pipelining requests, never reading
      pubsub       pubsub RPCs held incomplete: 64 peer ids from 4 addresses each announce 1 MiB + 64 KiB
                   and send half, again whenever the target drops one
      files        row 11: 16 peer ids from 2 addresses each offer 40 files of 256 KiB on TOPIC
                   (to a chat with --accept-files), and serve them
      lines        row 4: 16 peer ids from 2 addresses publish lines of 256 KiB on TOPIC, each every 2 s
                   (the target's history fills to its caps)
    """

enum AttackKind: String, CaseIterable {
    case handshakes, streams, connections, providers, dcutr, metrics, pubsub, lines, files
}

struct AttackOptions {
    var kind: AttackKind
    var target: String
    var seconds: Double = 60
    var firstSource: [UInt8] = [127, 0, 0, 2]
    var topic = "lobby"

    init(_ arguments: [String]) throws {
        var rest = arguments[...]
        var positional: [String] = []
        while let argument = rest.popFirst() {
            switch argument {
            case "--seconds": seconds = try Self.value(Double(rest.popFirst() ?? ""), "--seconds")
            case "--from":
                let bytes = (rest.popFirst() ?? "").split(separator: ".").compactMap { UInt8($0) }
                guard bytes.count == 4 else { throw AttackError.usage("--from takes an IPv4 address") }
                firstSource = bytes
            case "--topic": topic = try Self.value(rest.popFirst(), "--topic")
            default: positional.append(argument)
            }
        }
        guard positional.count == 2, let kind = AttackKind(rawValue: positional[0]) else {
            throw AttackError.usage("expected KIND TARGET")
        }
        self.kind = kind
        target = positional[1]
        // Anything else is an option spelt wrong: the positional count caught it.
    }

    private static func value<T>(_ value: T?, _ name: String) throws -> T {
        guard let value else { throw AttackError.usage("\(name) needs a value") }
        return value
    }

    /// The `index`th source address: --from, counted up in its last byte.
    func source(_ index: Int) -> String {
        var bytes = firstSource
        bytes[3] = UInt8(truncatingIfNeeded: Int(bytes[3]) + index)
        return bytes.map(String.init).joined(separator: ".")
    }
}

enum AttackError: Error, CustomStringConvertible {
    case usage(String)
    case target(String)

    var description: String {
        switch self {
        case .usage(let why): "\(why)\n\(attackUsage)"
        case .target(let why): "bad target: \(why)"
        }
    }
}

/// A count shared by an attack's tasks and NIO callbacks.
final class AttackCounter: Sendable {
    private let count = Atomic<Int>(0)
    func add(_ amount: Int = 1) { count.add(amount, ordering: .relaxed) }
    var value: Int { count.load(ordering: .relaxed) }
}

/// Runs `p2pbench attack ...` (the arguments after `attack`) and prints what it did.
func runAttack(_ arguments: [String]) async throws {
    let options: AttackOptions
    do {
        options = try AttackOptions(arguments)
    } catch {
        print("\(error)")
        exit(2)
    }
    _ = raiseDescriptorLimit()
    let attack = Attack(options: options, group: MultiThreadedEventLoopGroup.singleton)
    let summary: String
    do {
        switch options.kind {
        case .handshakes: summary = try await attack.holdHandshakeSlots()
        case .streams: summary = try await attack.reserveIdleStreams()
        case .connections: summary = try await attack.holdConnectionSlots()
        case .providers: summary = try await attack.fillProviderStore()
        case .dcutr: summary = try await attack.makeTheTargetDial()
        case .metrics: summary = try await attack.floodMetrics()
        case .pubsub: summary = try await attack.holdIncompleteRPCs()
        case .lines: summary = try await attack.publishLargeLines()
        case .files: summary = try await attack.offerFiles()
        }
    } catch {
        print("attack \(options.kind.rawValue) failed: \(error)")
        exit(1)
    }
    print("attack \(options.kind.rawValue) (\(Int(options.seconds)) s): \(summary)")
}
