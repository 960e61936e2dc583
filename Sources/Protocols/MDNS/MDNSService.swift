#if canImport(Glibc)
import Glibc
#endif
import Identity
import EventBroadcast
import Logging
import Multiformats
import NIOCore
import NIOPosix

/// A peer found or lost on the local network.
public enum MDNSEvent: Sendable, Equatable {
    /// A peer, or new addresses of a known peer (only those not reported before).
    case discovered(PeerID, [Multiaddr])
    /// A peer's records expired (every address it had).
    case expired(PeerID, [Multiaddr])
    /// Our own peer id announced at addresses that are not ours: another
    /// process runs with our identity (each address reported once; never dialled).
    case ownPeerElsewhere([Multiaddr])
}

/// mDNS discovery settings.
public struct MDNSConfiguration: Sendable {
    /// How often we ask the network for peers (we also ask at start).
    public var queryInterval: Duration = .seconds(60)
    /// TTL of the records we announce; peers we learn of expire after theirs.
    public var ttl: Duration = .seconds(120)
    public var port = 5353
    /// Addresses kept per discovered peer: anyone on the link can announce
    /// any number for one peer id, and each new one is reported and dialled.
    public var maxAddressesPerPeer = 16
    /// Peers known at once; announcements of further peers are ignored until
    /// some expire.
    public var maxPeers = 256

    public init() {}
}

/// The libp2p mDNS records (discovery/mdns.md): a PTR from `_p2p._udp.local` to a
/// random peer name, and one TXT record `dnsaddr=<multiaddr>/p2p/<peer id>` per address.
public enum MDNSRecords {
    public static let serviceName = DNSName(["_p2p", "_udp", "local"])

    public static func query() -> DNSMessage {
        var message = DNSMessage()
        message.questions = [DNSQuestion(name: serviceName, type: DNSType.ptr)]
        return message
    }

    public static func response(peerName: String, addresses: [Multiaddr], peer: PeerID, ttl: UInt32) -> DNSMessage {
        var message = DNSMessage()
        message.isResponse = true
        let instance = DNSName([peerName] + serviceName.labels)
        message.answers = [DNSRecord(name: serviceName, ttl: ttl, data: .ptr(instance))]
        // TCP addresses go last: py-libp2p reads the TXT records into a dict, so only
        // the last `dnsaddr` survives there, and TCP is what every implementation dials.
        let isTCP: (Multiaddr) -> Bool = { address in
            guard address.components.count == 2, case .tcp = address.components[1] else { return false }
            return true
        }
        let ordered = addresses.filter { !isTCP($0) } + addresses.filter(isTCP)
        message.additionals = ordered.map { address in
            let full = address.p2pMultihash == nil ? address.encapsulating(.p2p(peer.bytes)) : address
            return DNSRecord(name: instance, ttl: ttl, data: .txt([Array("dnsaddr=\(full)".utf8)]))
        }
        // DNS-SD resolvers (zeroconf, as py-libp2p uses) also want SRV and A/AAAA
        // records before they read the TXT; libp2p resolvers ignore them.
        let target = DNSName([peerName, "local"])
        var port: UInt16?
        for address in addresses {
            let parts = address.components
            if port == nil, parts.count > 1, case .tcp(let tcp) = parts[1] { port = tcp }
            switch parts.first {
            case .ip4(let bytes): message.additionals.append(DNSRecord(name: target, ttl: ttl, data: .a(bytes)))
            case .ip6(let bytes): message.additionals.append(DNSRecord(name: target, ttl: ttl, data: .aaaa(bytes)))
            default: break
            }
        }
        if let port {
            message.additionals.append(
                DNSRecord(name: instance, ttl: ttl, data: .srv(priority: 0, weight: 0, port: port, target: target)))
        }
        return message
    }

    /// Whether a query asks for our records (the service, our instance or our host name).
    public static func asksFor(_ message: DNSMessage, peerName: String) -> Bool {
        let instance = DNSName([peerName] + serviceName.labels)
        let target = DNSName([peerName, "local"])
        return message.questions.contains { question in
            question.name == serviceName || question.name == instance || question.name == target
        }
    }

    /// The peers a response announces, with their addresses and the smallest TTL.
    public static func peers(in message: DNSMessage) -> [(PeerID, [Multiaddr], UInt32)] {
        guard message.isResponse else { return [] }
        let records = message.answers + message.additionals + message.authorities
        var instances: Set<DNSName> = []
        for record in records where record.name == serviceName {
            if case .ptr(let target) = record.data { instances.insert(target) }
        }
        var found: [PeerID: ([Multiaddr], UInt32)] = [:]
        for record in records where instances.contains(record.name) {
            guard case .txt(let strings) = record.data else { continue }
            for string in strings {
                // "dnsaddr=..." per the spec; py-libp2p numbers further keys ("dnsaddr2=...").
                guard let text = String(validating: string, as: UTF8.self), text.hasPrefix("dnsaddr"),
                    let equals = text.firstIndex(of: "="),
                    text[text.index(text.startIndex, offsetBy: 7)..<equals].allSatisfy(\.isNumber),
                    let address = try? Multiaddr(String(text[text.index(after: equals)...])),
                    let multihash = address.p2pMultihash, let peer = try? PeerID(bytes: multihash)
                else { continue }
                var entry = found[peer] ?? ([], record.ttl)
                if !entry.0.contains(address) { entry.0.append(address) }
                entry.1 = min(entry.1, record.ttl)
                found[peer] = entry
            }
        }
        return found.map { ($0.key, $0.value.0, $0.value.1) }
    }

    /// A random peer name (the spec asks for 32 to 63 characters).
    public static func randomPeerName() -> String {
        let alphabet = Array("abcdefghijklmnopqrstuvwxyz0123456789")
        return String((0..<32).map { _ in alphabet.randomElement()! })
    }
}

/// Runs mDNS on every multicast-capable interface, IPv4 (224.0.0.251) and IPv6
/// (ff02::fb): answers queries for
/// `_p2p._udp.local` with our addresses, asks periodically, and reports peers
/// discovered and expired.
public actor MDNSService {
    public static let group = try! SocketAddress(ipAddress: "224.0.0.251", port: 5353)
    public static let group6 = try! SocketAddress(ipAddress: "ff02::fb", port: 5353)

    let localPeer: PeerID
    let configuration: MDNSConfiguration
    let addresses: @Sendable () -> [Multiaddr]
    let logger: Logger
    let peerName = MDNSRecords.randomPeerName()
    /// One socket per interface and IP version, with the group it sends to.
    private var channels: [(channel: Channel, group: SocketAddress, key: InterfaceKey)] = []
    /// The interfaces we run on: a socket that closes (NIO closes a datagram
    /// socket whose send fails with "network unreachable", as when a link
    /// goes down) is opened again while its interface exists.
    private var wanted: Set<InterfaceKey> = []
    private var stopped = false

    /// An interface as mDNS uses it: an IPv4 address, or an IPv6 interface index.
    enum InterfaceKey: Hashable {
        case v4(UInt32)
        case v6(Int)
    }
    private var known: [PeerID: (addresses: [Multiaddr], expires: ContinuousClock.Instant)] = [:]
    /// Addresses of another process announcing our peer id, reported already.
    private var ownPeerElsewhere: Set<Multiaddr> = []
    private let broadcaster = EventBroadcaster<MDNSEvent>(bufferingNewest: 1024)
    private var tasks: [Task<Void, Never>] = []
    /// Each socket's one consumer: its packets are handled in the order they arrived.
    private var consumers: [ObjectIdentifier: Task<Void, Never>] = [:]
    /// Announced addresses and peers dropped by the caps (for tests and status).
    public private(set) var ignoredAddresses = 0
    public private(set) var ignoredPeers = 0

    public init(
        localPeer: PeerID, configuration: MDNSConfiguration = .init(),
        logger: Logger = Logger(label: "p2p.mdns"), addresses: @escaping @Sendable () -> [Multiaddr]
    ) {
        self.localPeer = localPeer
        self.configuration = configuration
        self.addresses = addresses
        self.logger = logger
    }

    /// Whether `peer` is discovered and its records have not expired.
    public func knows(_ peer: PeerID) -> Bool {
        known[peer].map { $0.expires > ContinuousClock.now } ?? false
    }

    /// Discovery events from now on.
    public func events() -> AsyncStream<MDNSEvent> { broadcaster.subscribe() }

    /// Opens a socket per interface and starts querying. Throws if no interface works.
    public func start() async throws {
        let errors = await openChannels()
        guard !channels.isEmpty else {
            throw MDNSError.noInterface(errors.isEmpty ? "no multicast-capable interface" : errors.joined(separator: "; "))
        }
        // The querier, the expiry and the channel repair are the service's: `stop` cancels and awaits them.
        tasks.append(Task { [weak self] in
            while !Task.isCancelled {
                await self?.sendQuery()
                guard let interval = self?.configuration.queryInterval else { return }
                try? await Task.sleep(for: interval)
            }
        })
        tasks.append(Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(250))
                await self?.expire()
            }
        })
        tasks.append(Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: Self.repairInterval)
                await self?.reopenLostChannels()
            }
        })
    }

    /// How often sockets lost to a network failure are opened again.
    static let repairInterval: Duration = .seconds(1)

    /// Opens a socket on each multicast-capable interface that has none yet; the errors.
    private func openChannels(only keys: Set<InterfaceKey>? = nil) async -> [String] {
        let devices = (try? System.enumerateDevices()) ?? []
        var errors: [String] = []
        for device in devices where device.multicastSupported {
            guard let address = device.address else { continue }
            let key: InterfaceKey
            switch address {
            case .v4(let v4):
                let addressBits = v4.address.sin_addr.s_addr
                if addressBits == UInt32(0x7f00_0001).bigEndian { continue }
                key = .v4(addressBits)
            case .v6:
                // One IPv6 socket per interface, whatever its number of addresses.
                guard device.interfaceIndex > 0 else { continue }
                key = .v6(device.interfaceIndex)
            default:
                continue
            }
            guard keys.map({ $0.contains(key) }) ?? true, !channels.contains(where: { $0.key == key }) else { continue }
            do {
                let channel: Channel
                let packets: AsyncStream<MDNSPacket>
                let group: SocketAddress
                switch key {
                case .v4(let addressBits):
                    (channel, packets) = try await openChannel(device: device, interfaceAddress: addressBits)
                    group = Self.group
                case .v6:
                    (channel, packets) = try await openChannel6(device: device)
                    group = Self.group6
                }
                channels.append((channel, group, key))
                // Ends when the socket closes (the handler finishes the stream) or at `stop`.
                consumers[ObjectIdentifier(channel)] = Task { [weak self] in
                    for await packet in packets { await self?.received(packet.bytes, from: packet.source) }
                }
                wanted.insert(key)
                channel.closeFuture.whenComplete { [weak self] _ in
                    // Only hops from the event loop onto the actor.
                    Task { await self?.closed(channel) }
                }
                logger.debug("mdns on interface", metadata: ["interface": "\(device.name)", "address": "\(address)"])
            } catch {
                errors.append("\(device.name) \(address): \(error)")
            }
        }
        return errors
    }

    private func closed(_ channel: Channel) {
        guard !stopped else { return }
        channels.removeAll { $0.channel === channel }
        consumers.removeValue(forKey: ObjectIdentifier(channel))?.cancel()
        logger.debug("mdns socket closed; it is opened again when its interface works")
    }

    /// Opens again the sockets of interfaces that lost theirs; asks at once when one came back.
    func reopenLostChannels() async {
        let missing = wanted.subtracting(channels.map(\.key))
        guard !stopped, !missing.isEmpty else { return }
        let before = channels.count
        _ = await openChannels(only: missing)
        if channels.count > before { sendQuery() }
    }

    public func stop() async {
        stopped = true
        let started = tasks + consumers.values
        tasks = []
        consumers = [:]
        for task in started { task.cancel() }
        // What the service started has ended when `stop` returns.
        for task in started { await task.value }
        for (channel, _, _) in channels { try? await channel.close() }
        channels = []
        broadcaster.finish()
    }

    /// A UDP socket on port 5353 of `host` ("0.0.0.0" or "::") and its packets.
    private func bindSocket(host: String) async throws -> (Channel, AsyncStream<MDNSPacket>) {
        // Bounded like a socket buffer: when the consumer falls behind, new packets are dropped.
        let (packets, sink) = AsyncStream.makeStream(of: MDNSPacket.self, bufferingPolicy: .bufferingOldest(256))
        let channel = try await DatagramBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            // Several nodes on one host share port 5353.
            .channelOption(ChannelOptions.socket(SocketOptionLevel(SOL_SOCKET), SocketOptionName(SO_REUSEPORT)), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(MDNSHandler(packets: sink))
                }
            }
            .bind(host: host, port: configuration.port).get()
        return (channel, packets)
    }

    private func openChannel(device: NIONetworkDevice, interfaceAddress: UInt32) async throws -> (Channel, AsyncStream<MDNSPacket>) {
        let (channel, packets) = try await bindSocket(host: "0.0.0.0")
        guard let multicast = channel as? MulticastChannel else { throw MDNSError.noInterface("not a multicast channel") }
        try await multicast.joinGroup(Self.group, device: device).get()
        // Always say which interface multicast goes out of (the default route may be elsewhere).
        guard let options = channel as? SocketOptionProvider else {
            throw MDNSError.noInterface("cannot set multicast options")
        }
        try await options.setIPMulticastIF(in_addr(s_addr: interfaceAddress)).get()
        try await options.setIPMulticastLoop(1).get()
        try await options.setIPMulticastTTL(255).get()
        return (channel, packets)
    }

    private func openChannel6(device: NIONetworkDevice) async throws -> (Channel, AsyncStream<MDNSPacket>) {
        let (channel, packets) = try await bindSocket(host: "::")
        guard let multicast = channel as? MulticastChannel, let options = channel as? SocketOptionProvider else {
            throw MDNSError.noInterface("not a multicast channel")
        }
        try await multicast.joinGroup(Self.group6, device: device).get()
        try await options.setIPv6MulticastIF(CUnsignedInt(device.interfaceIndex)).get()
        try await options.setIPv6MulticastLoop(1).get()
        return (channel, packets)
    }

    private func send(_ message: DNSMessage) {
        let bytes = message.encoded()
        for (channel, group, _) in channels {
            let envelope = AddressedEnvelope(remoteAddress: group, data: ByteBuffer(bytes: bytes))
            let logger = self.logger
            channel.writeAndFlush(envelope).whenFailure { error in
                logger.debug("mdns send failed", metadata: ["error": "\(error)"])
            }
        }
    }

    func sendQuery() {
        send(MDNSRecords.query())
    }

    /// A packet from the network.
    func received(_ bytes: [UInt8], from source: [UInt8]?) {
        logger.trace("mdns packet", metadata: ["bytes": "\(bytes.count)"])
        let message: DNSMessage
        do {
            message = try DNSMessage(bytes: bytes)
        } catch {
            logger.trace("bad mdns packet", metadata: ["error": "\(error)"])
            return
        }
        if !message.isResponse {
            if MDNSRecords.asksFor(message, peerName: peerName) { answer() }
            return
        }
        let now = ContinuousClock.now
        for (peer, announced, ttl) in MDNSRecords.peers(in: message) {
            // Some peers (py-libp2p 0.8.1) announce their unspecified bind address:
            // the packet's source address is where they can be reached.
            let addresses = announced.compactMap { Self.replacingUnspecified($0, with: source) }
            guard !addresses.isEmpty else { continue }
            guard peer != localPeer else {
                // Our own answers come back to us; another process's name other addresses.
                let ours = Set(self.addresses().map(\.withoutP2P))
                let elsewhere = addresses.map(\.withoutP2P).filter { !ours.contains($0) && !ownPeerElsewhere.contains($0) }
                if ttl > 0, !elsewhere.isEmpty {
                    ownPeerElsewhere.formUnion(elsewhere)
                    emit(.ownPeerElsewhere(elsewhere))
                }
                continue
            }
            let expires = now + .seconds(Int64(ttl))
            if ttl == 0 {
                if let entry = known.removeValue(forKey: peer) { emit(.expired(peer, entry.addresses)) }
                continue
            }
            guard known[peer] != nil || known.count < configuration.maxPeers else {
                ignoredPeers += 1
                continue
            }
            // Only addresses we did not know are reported (and so dialled), up to the cap.
            var entry = known[peer] ?? ([], expires)
            var added: [Multiaddr] = []
            for address in addresses where !entry.addresses.contains(address) && !added.contains(address) {
                guard entry.addresses.count + added.count < configuration.maxAddressesPerPeer else {
                    ignoredAddresses += 1
                    continue
                }
                added.append(address)
            }
            entry.addresses += added
            entry.expires = max(entry.expires, expires)
            known[peer] = entry
            if !added.isEmpty { emit(.discovered(peer, added)) }
        }
    }

    /// `address` with an unspecified IPv4 replaced by `source`; nil if it cannot be.
    static func replacingUnspecified(_ address: Multiaddr, with source: [UInt8]?) -> Multiaddr? {
        var parts = address.components
        switch parts.first {
        case .ip4(let bytes) where bytes == [0, 0, 0, 0]:
            guard let source, source.count == 4 else { return nil }
            parts[0] = .ip4(source)
            return Multiaddr(parts)
        case .ip6(let bytes) where bytes.allSatisfy({ $0 == 0 }):
            return nil
        default:
            return address
        }
    }

    private func answer() {
        // Loopback addresses mean nothing to another host.
        let reachable = addresses().filter { $0.scope != .loopback }
        guard !reachable.isEmpty else { return }
        let ttl = UInt32(configuration.ttl.components.seconds)
        send(MDNSRecords.response(peerName: peerName, addresses: reachable, peer: localPeer, ttl: ttl))
    }

    private func expire() {
        let now = ContinuousClock.now
        for (peer, entry) in known where entry.expires <= now {
            known[peer] = nil
            emit(.expired(peer, entry.addresses))
        }
    }

    private func emit(_ event: MDNSEvent) {
        broadcaster.yield(event)
    }
}

/// Errors of the mDNS service.
public enum MDNSError: Error, CustomStringConvertible, Sendable {
    case noInterface(String)

    public var description: String {
        switch self {
        case .noInterface(let why): return "mDNS cannot run: \(why)"
        }
    }
}

/// A received datagram: its bytes (at most one over the largest message) and
/// its IPv4 source address, network byte order.
struct MDNSPacket: Sendable {
    var bytes: [UInt8]
    var source: [UInt8]?
}

/// Hands received datagrams, in order, to the socket's consumer.
final class MDNSHandler: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    let packets: AsyncStream<MDNSPacket>.Continuation

    init(packets: AsyncStream<MDNSPacket>.Continuation) {
        self.packets = packets
    }

    func channelInactive(context: ChannelHandlerContext) {
        packets.finish()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        packets.finish()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let envelope = unwrapInboundIn(data)
        let bytes = Array(envelope.data.readableBytesView.prefix(DNSMessage.maxSize + 1))
        var source: [UInt8]?
        if case .v4(let v4) = envelope.remoteAddress {
            var raw = v4.address.sin_addr.s_addr  // network byte order
            source = withUnsafeBytes(of: &raw) { Array($0) }
        }
        packets.yield(MDNSPacket(bytes: bytes, source: source))
    }
}
