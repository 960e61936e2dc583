import DCUtR
import Foundation
import FileShare
import Host
import Identity
import KadDHT
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import PubSub
import Relay
import Synchronization
import Transport

#if canImport(Glibc)
import Glibc
#endif

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

/// Attackers hold many sockets: take the hard descriptor limit.
struct Attack {
    let options: AttackOptions
    let group: any EventLoopGroup
    let clock = ContinuousClock()

    var end: ContinuousClock.Instant { startedAt + .milliseconds(Int(options.seconds * 1000)) }
    private let startedAt = ContinuousClock.now

    init(options: AttackOptions, group: any EventLoopGroup) {
        self.options = options
        self.group = group
    }

    var running: Bool { clock.now < end }

    /// The target's p2p address, IP and port.
    func target() throws -> (address: Multiaddr, peer: PeerID, ip: String, port: Int) {
        let address: Multiaddr
        do { address = try Multiaddr(options.target) } catch { throw AttackError.target("\(options.target): \(error)") }
        var ip: String?
        var port: Int?
        var peer: PeerID?
        for component in address.components {
            switch component {
            case .ip4(let bytes): ip = bytes.map(String.init).joined(separator: ".")
            case .tcp(let value): port = Int(value)
            case .p2p(let bytes): peer = try? PeerID(bytes: bytes)
            default: break
            }
        }
        guard let ip, let port, let peer else { throw AttackError.target("\(options.target) is no /ip4/.../tcp/.../p2p/... address") }
        return (address, peer, ip, port)
    }

    /// A fresh identity whose connections leave from `ip` (its listener's
    /// address, dialled from with SO_REUSEPORT as the chat does).
    func attacker(from ip: String) async throws -> Libp2pHost {
        let host = try Libp2pHost(
            key: .generateEd25519(), group: group, transports: [TCPTransport(group: group, reusePort: true)],
            security: [NoiseSecurity()])
        _ = try await host.listen(on: [Multiaddr("/ip4/\(ip)/tcp/0")])
        return host
    }

    /// Waits until the attack's end (or `step`), for loops that refill what the target closed.
    func pause(_ step: Duration = .milliseconds(200)) async {
        let left = end - clock.now
        try? await Task.sleep(for: min(step, max(left, .zero)))
    }

    // MARK: Row 1: handshake slots

    /// 70 TCP sockets from one address that never speak, each reopened when
    /// the target closes it (at its handshake deadline or at once when over
    /// the address's share).
    func holdHandshakeSlots() async throws -> String {
        let (_, _, ip, port) = try target()
        let source = options.source(0)
        let sockets = 70
        let open = AttackCounter()
        let opened = AttackCounter()
        let closedByTarget = AttackCounter()
        var channels: [any Channel] = []
        var failures = 0
        while running {
            while open.value < sockets, running {
                do {
                    let channel = try await ClientBootstrap(group: group)
                        .connectTimeout(.seconds(2))
                        .bind(to: SocketAddress(ipAddress: source, port: 0))
                        .connect(host: ip, port: port).get()
                    open.add()
                    opened.add()
                    channel.closeFuture.whenComplete { _ in
                        open.add(-1)
                        closedByTarget.add()
                    }
                    channels.append(channel)
                } catch {
                    failures += 1
                    break
                }
            }
            channels.removeAll { !$0.isActive }
            await pause()
        }
        let closedBefore = closedByTarget.value
        for channel in channels { try? await channel.close() }
        return "\(opened.value) idle sockets opened from \(source) (\(sockets) held at a time), "
            + "\(closedBefore) closed by the target, \(failures) connects failed"
    }

    // MARK: Row 2: idle stream reservations

    /// 48 peer ids from 2 addresses, each opening up to 256 ping streams that
    /// never send: each reserves a receive window of the target's memory budget.
    func reserveIdleStreams() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 48
        let streamsEach = 256
        let held = AttackCounter()
        let refused = AttackCounter()
        let connected = AttackCounter()
        let end = self.end
        // Each identity's host and the streams it holds.
        let holders = await withTaskGroup(of: (Libp2pHost, [MuxedStream])?.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % 2)
                tasks.addTask {
                    guard let host = try? await attacker(from: source) else { return nil }
                    guard let connection = try? await host.connect(address) else { return (host, []) }
                    connected.add()
                    var streams: [MuxedStream] = []
                    for _ in 0..<streamsEach where ContinuousClock.now < end {
                        guard let stream = try? await connection.newStream(protocols: [PingService.protocolID]) else {
                            refused.add()
                            break  // over this address's share: the next ones would be reset too
                        }
                        streams.append(stream)
                        held.add()
                    }
                    return (host, streams)
                }
            }
            var holders: [(Libp2pHost, [MuxedStream])] = []
            for await holder in tasks { if let holder { holders.append(holder) } }
            return holders
        }
        while running { await pause(.seconds(1)) }
        let streams = holders.flatMap(\.1)
        let stillOpen = streams.count { $0.connection.isActive }
        for stream in streams { stream.reset() }
        for (host, _) in holders { await host.close() }
        return "\(connected.value) of \(identities) peer ids from 2 addresses connected, \(held.value) idle ping streams opened "
            + "(\(stillOpen) on connections still open at the end), \(refused.value) identities refused a stream"
    }

    // MARK: Row 10: connection slots

    /// 16 peer ids from each of 20 addresses stay connected: every second a
    /// connection the target closed is replaced by a fresh identity's.
    func holdConnectionSlots() async throws -> String {
        let (address, peer, _, _) = try target()
        let addresses = 20
        let perAddress = 16
        var slots: [Libp2pHost?] = Array(repeating: nil, count: addresses * perAddress)
        var dials = 0
        var failed = 0
        var replaced = 0
        while running {
            let stale = slots.indices.filter { slots[$0]?.connection(to: peer) == nil }
            let results = await withTaskGroup(of: (Int, Libp2pHost?).self) { tasks in
                for index in stale {
                    let old = slots[index]
                    let source = options.source(index % addresses)
                    tasks.addTask {
                        await old?.close()
                        guard let host = try? await attacker(from: source) else { return (index, nil) }
                        let connected = try? await withThrowingTaskGroup(of: Bool.self) { race in
                            race.addTask { _ = try await host.connect(address); return true }
                            race.addTask { try await Task.sleep(for: .seconds(5)); return false }
                            defer { race.cancelAll() }
                            return try await race.next() ?? false
                        }
                        if connected == true { return (index, host) }
                        await host.close()
                        return (index, nil)
                    }
                }
                var results: [(Int, Libp2pHost?)] = []
                for await result in tasks { results.append(result) }
                return results
            }
            for (index, host) in results {
                if slots[index] != nil { replaced += 1 }
                dials += 1
                if host == nil { failed += 1 }
                slots[index] = host
            }
            await pause(.seconds(1))
        }
        let holding = slots.count { $0?.connection(to: peer) != nil }
        for host in slots { await host?.close() }
        return "\(addresses) addresses x \(perAddress) peer ids: \(dials) dials (\(failed) failed), "
            + "\(replaced) redials of connections the target closed, \(holding) held at the end"
    }

    // MARK: Rows 3, 7, 8: the provider store

    /// 64 peer ids from 8 addresses send ADD_PROVIDER records of the largest
    /// size the store takes (about 4 KiB), each naming itself, on fresh keys;
    /// first all of them on the topic's key (row 8: a topic's slots).
    func fillProviderStore() async throws -> String {
        let (address, peer, _, _) = try target()
        let identities = 64
        let maxRecords = 40_000  // issue 25's measure
        let sent = AttackCounter()
        let resets = AttackCounter()
        let topicKey = ContentKey.topic(options.topic)
        let end = self.end
        await withTaskGroup(of: Void.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % 8)
                tasks.addTask {
                    guard let host = try? await attacker(from: source) else { return }
                    guard (try? await host.connect(address)) != nil else { return await host.close() }
                    var stream: MuxedStream?
                    var key = topicKey
                    var number = 0
                    while ContinuousClock.now < end, sent.value < maxRecords {
                        if stream == nil {
                            stream = try? await host.newStream(to: peer, protocols: [KadDHT.protocolID])
                            if stream == nil { break }  // no kad, or the connection is gone
                        }
                        do {
                            try await stream!.write(HostileFrames.largeProviderRecord(peer: host.localPeer, key: key))
                            sent.add()
                        } catch {
                            resets.add()
                            stream = nil
                        }
                        number += 1
                        key = ContentKey.topic("attack-\(index)-\(number)")
                    }
                    stream?.reset()
                    await host.close()
                }
            }
        }
        while running { await pause(.seconds(1)) }
        return "\(identities) peer ids from 8 addresses wrote \(sent.value) provider records of 16 addresses of 246 bytes "
            + "(the first of each on \(options.topic)'s key), \(resets.value) streams reset by the target"
    }

    // MARK: Rows 5, 6: DCUtR and STOP where they do not belong

    /// On a direct connection, DCUtR CONNECT naming 32 addresses of a third
    /// party (a listener of ours) and STOP from a peer that is no relay of the
    /// target, a few times a second: counts the third party's connections.
    func makeTheTargetDial() async throws -> String {
        let (address, _, _, _) = try target()
        let accepted = AttackCounter()
        let thirdParty = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                accepted.add()
                return channel.close()
            }
            .bind(host: options.source(1), port: 0).get()
        defer { thirdParty.close(promise: nil) }
        let thirdPort = UInt16(thirdParty.localAddress?.port ?? 0)
        let thirdBytes = options.source(1).split(separator: ".").compactMap { UInt8($0) }
        let targets = (0..<32).map { _ in Multiaddr([.ip4(thirdBytes), .tcp(thirdPort)]) }
        let host = try await attacker(from: options.source(0))
        let summary = try await sendDCUtRAndStop(host: host, to: address, naming: targets)
        await host.close()
        return summary + "; the target dialled the third party \(accepted.value) times"
    }

    private func sendDCUtRAndStop(host: Libp2pHost, to address: Multiaddr, naming targets: [Multiaddr]) async throws -> String {
        var connection = try await host.connect(address)
        var connects = 0
        var connectsAnswered = 0
        var stops = 0
        var stopAnswers: [String: Int] = [:]
        while running {
            if !connection.isActive { connection = try await host.connect(address) }
            connects += 1
            if let stream = try? await connection.newStream(protocols: [HolePunchService.protocolID]) {
                try? await stream.write(HostileFrames.holePunchConnect(targets))
                if (try? await readMessage(stream, within: .seconds(2))) ?? nil != nil {
                    connectsAnswered += 1
                    var sync = ByteBuffer()
                    sync.writeLengthPrefixed(HolePunchMessage.sync.encoded())
                    try? await stream.write(sync)
                }
                stream.reset()
            }
            stops += 1
            if let stream = try? await connection.newStream(protocols: [CircuitProtocol.stop]) {
                try? await stream.write(HostileFrames.stopConnect(from: PeerID(publicKey: PrivateKey.generateEd25519().publicKey)))
                let answer = (try? await readMessage(stream, within: .seconds(2))) ?? nil
                let status = answer.flatMap { try? StopMessage(bytes: $0.readableBytesView) }.map { "\($0)" } ?? "no answer"
                stopAnswers[status, default: 0] += 1
                stream.reset()
            } else {
                stopAnswers["stream refused", default: 0] += 1
            }
            await pause(.milliseconds(100))
        }
        let answers = stopAnswers.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        return "\(connects) DCUtR CONNECTs of 32 addresses on a direct connection (\(connectsAnswered) answered), "
            + "\(stops) STOPs from a non-relay (\(answers))"
    }

    /// One length-prefixed message of `stream`, or nil after `limit`.
    func readMessage(_ stream: MuxedStream, within limit: Duration) async throws -> ByteBuffer? {
        try await withThrowingTaskGroup(of: ByteBuffer?.self) { race in
            race.addTask {
                var reader = StreamReader(stream)
                return try await reader.readLengthPrefixed(maxLength: 4096)
            }
            race.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { race.cancelAll() }
            return try await race.next() ?? nil
        }
    }

    // MARK: Row 13: the metrics endpoint

    /// The metrics endpoint's IP and port: `/ip4/IP/tcp/PORT` (the chat's
    /// `metrics` event), `http://IP:PORT/...` or `IP:PORT`.
    func metricsTarget() throws -> (ip: String, port: Int) {
        if let address = try? Multiaddr(options.target) {
            var ip: String?
            var port: Int?
            for component in address.components {
                if case .ip4(let bytes) = component { ip = bytes.map(String.init).joined(separator: ".") }
                if case .tcp(let value) = component { port = Int(value) }
            }
            if let ip, let port { return (ip, port) }
        }
        var text = options.target
        if let scheme = text.range(of: "://") { text = String(text[scheme.upperBound...]) }
        text = String(text.prefix { $0 != "/" })
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw AttackError.target("\(options.target) is no HOST:PORT")
        }
        return (String(text[..<colon]), port)
    }

    /// 1100 connections to `--metrics` that never send, refilled, and 16 that
    /// pipeline requests whenever their socket takes more, never reading an answer.
    func floodMetrics() async throws -> String {
        let (ip, port) = try metricsTarget()
        let idle = 1100
        let pipelining = 16
        let open = AttackCounter()
        let closedByTarget = AttackCounter()
        let requests = AttackCounter()
        var idleChannels: [any Channel] = []
        var floodChannels: [any Channel] = []
        var failures = 0
        let batch = HostileFrames.pipelinedMetricsRequests(256)
        // The pipelining ones never read (the answers are never taken); the idle
        // ones read, and drop, so that they see the target close them.
        func connect(from source: String, reading: Bool) async throws -> any Channel {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(2))
                .channelOption(.autoRead, value: reading)
                .bind(to: SocketAddress(ipAddress: source, port: 0))
                .connect(host: ip, port: port).get()
            open.add()
            channel.closeFuture.whenComplete { _ in
                open.add(-1)
                closedByTarget.add()
            }
            return channel
        }
        while running {
            floodChannels.removeAll { !$0.isActive }
            while floodChannels.count < pipelining, running {
                guard let channel = try? await connect(from: options.source(0), reading: false) else {
                    failures += 1
                    break
                }
                floodChannels.append(channel)
            }
            for channel in floodChannels where channel.isWritable {
                channel.writeAndFlush(batch, promise: nil)
                requests.add(256)
            }
            idleChannels.removeAll { !$0.isActive }
            var added = 0
            while idleChannels.count < idle, added < 100, running {
                guard let channel = try? await connect(from: options.source(1 + idleChannels.count % 4), reading: true) else {
                    failures += 1
                    break
                }
                idleChannels.append(channel)
                added += 1
            }
            await pause(.milliseconds(50))
        }
        let closed = closedByTarget.value
        for channel in idleChannels + floodChannels { try? await channel.close() }
        return "\(requests.value) requests pipelined on \(pipelining) connections, up to \(idle) idle connections, "
            + "\(closed) connections closed by the target, \(failures) connects failed"
    }

    // MARK: Pubsub: RPCs held incomplete

    /// 64 peer ids from 4 addresses each open a pubsub stream and send half of
    /// an RPC announcing the largest size taken, then nothing; when the target
    /// resets one (its 30 s, or the shared 64 MiB), the peer starts another.
    func holdIncompleteRPCs() async throws -> String {
        let (address, peer, _, _) = try target()
        let identities = 64
        let announced = PubSubConfiguration().maxRPCSize
        let started = AttackCounter()
        let dropped = AttackCounter()
        let end = self.end
        await withTaskGroup(of: Void.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % 4)
                tasks.addTask {
                    guard let host = try? await attacker(from: source) else { return }
                    while ContinuousClock.now < end {
                        guard (try? await host.connect(address)) != nil,
                            let stream = try? await host.newStream(to: peer, protocols: [PubSubProtocol.meshsub11])
                        else {
                            try? await Task.sleep(for: .seconds(1))
                            continue
                        }
                        do {
                            try await stream.write(HostileFrames.incompleteRPC(announcing: announced, sending: announced / 2))
                            started.add()
                            // Held until the target ends it (a read ends or fails) or the attack does.
                            _ = try await readMessage(stream, within: end - ContinuousClock.now)
                            if ContinuousClock.now < end { dropped.add() }
                        } catch {
                            dropped.add()
                        }
                        stream.reset()
                    }
                    await host.close()
                }
            }
        }
        return "\(identities) peer ids from 4 addresses started \(started.value) RPCs of \(announced) bytes, sending half; "
            + "\(dropped.value) dropped by the target"
    }

    // MARK: Row 4: large lines into history

    /// 16 peer ids from 2 addresses each publish on the topic a line of
    /// 256 KiB every 2 s: the chats show them, and the target's history keeps
    /// them up to its caps (8 MiB per author, 64 MiB in all).
    func publishLargeLines() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 16
        let line = [UInt8](repeating: UInt8(ascii: "x"), count: 256 * 1024)
        let published = AttackCounter()
        let reachedNobody = AttackCounter()
        let topic = options.topic
        let end = self.end
        await withTaskGroup(of: Void.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % 2)
                tasks.addTask {
                    guard let host = try? await attacker(from: source), let pubsub = try? PubSubService(host: host) else { return }
                    pubsub.start()
                    // Not subscribed: published through fanout to the peers on the topic, nothing received.
                    _ = try? await host.connect(address)
                    try? await Task.sleep(for: .seconds(2))  // the subscription exchange
                    while ContinuousClock.now < end {
                        let sentTo = (try? await pubsub.publish(topic, data: line)) ?? 0
                        if sentTo > 0 { published.add() } else { reachedNobody.add() }
                        try? await Task.sleep(for: .seconds(2))
                    }
                    await pubsub.stop()
                    await host.close()
                }
            }
        }
        return "\(identities) peer ids from 2 addresses published \(published.value) lines of 256 KiB on \(topic) "
            + "(\(reachedNobody.value) reached nobody)"
    }

    // MARK: Row 11: file offers to --accept-files

    /// 16 peer ids from 2 addresses each offer 40 distinct files of 256 KiB
    /// (a line `/file CID SIZE NAME` on the topic, as `/send` does) and serve
    /// them: a chat with --accept-files fetches within its shares (25 files a
    /// peer, 100 a session), and lists the rest.
    func offerFiles() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 16
        let filesEach = 40
        let size = 256 * 1024
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pbench-attack-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let offered = AttackCounter()
        let topic = options.topic
        let end = self.end
        await withTaskGroup(of: Void.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % 2)
                tasks.addTask {
                    guard let host = try? await attacker(from: source), let pubsub = try? PubSubService(host: host) else { return }
                    let files = FileShareService(host: host)
                    files.start()
                    pubsub.start()
                    _ = try? await host.connect(address)
                    try? await Task.sleep(for: .seconds(2))  // the subscription exchange
                    for number in 0..<filesEach where ContinuousClock.now < end {
                        // Distinct bytes, so distinct CIDs: each is an offer of its own.
                        var bytes = [UInt8](repeating: 0, count: size)
                        withUnsafeBytes(of: (index, number)) { bytes.replaceSubrange(0..<$0.count, with: $0) }
                        let path = directory.appendingPathComponent("\(index)-\(number).bin").path
                        guard FileManager.default.createFile(atPath: path, contents: Data(bytes)),
                            let offer = try? await files.offer(path: path)
                        else { continue }
                        if ((try? await pubsub.publish(topic, data: Array(offer.announcement.utf8))) ?? 0) > 0 { offered.add() }
                    }
                    // Served until the attack ends.
                    while ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(500)) }
                    await pubsub.stop()
                    await host.close()
                }
            }
        }
        return "\(identities) peer ids from 2 addresses offered \(offered.value) files of 256 KiB on \(topic) and served them"
    }
}
