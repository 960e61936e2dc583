import Foundation
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import SwiftProtobuf
import Synchronization
import Transport

/// What a peer told us about itself through identify.
public struct IdentifyInfo: Sendable, Equatable {
    public var peer: PeerID
    public var publicKey: PublicKey?
    public var protocolVersion: String?
    public var agentVersion: String?
    public var listenAddresses: [Multiaddr]
    public var protocols: [String]
    /// Our address as the peer sees it.
    public var observedAddress: Multiaddr?
    /// The peer's signed peer record, verified (nil if absent or invalid), and its envelope.
    public var peerRecord: PeerRecord?
    public var signedPeerRecord: [UInt8]?
}

/// Errors of identify.
public enum IdentifyError: Error, CustomStringConvertible, Sendable {
    case malformedMessage(String)
    case publicKeyMismatch(expected: PeerID, got: String)

    public var description: String {
        switch self {
        case .malformedMessage(let why): return "identify: malformed message: \(why)"
        case .publicKeyMismatch(let expected, let got):
            return "identify: public key of \(got) does not match connected peer \(expected)"
        }
    }
}

/// `/ipfs/id/1.0.0` and `/ipfs/id/push/1.0.0`: tells every connected peer who we are,
/// learns the same from them into the host's peer store, and pushes updates when
/// our addresses or protocols change.
public final class IdentifyService: Sendable {
    public static let protocolID = "/ipfs/id/1.0.0"
    public static let pushProtocolID = "/ipfs/id/push/1.0.0"
    public static let protocolVersion = "ipfs/0.1.0"
    /// Identify messages are small; this bounds what a peer can make us buffer.
    public static let maxMessageSize = 64 * 1024
    /// Bounds per message on what we accept into the peer store.
    static let maxAddresses = 64
    static let maxProtocols = 256

    public let host: Libp2pHost
    public let agentVersion: String
    let logger: Logger
    private let observed: Mutex<ObservedAddressBook>
    private let freshness = Mutex(Freshness())
    /// The connection watcher and the streams being answered, ended by `stop`.
    let tasks = ServiceTasks()

    /// Orders what each peer tells us: answers arrive in any order, so every
    /// message gets a ticket (an answer when we asked, a push when it arrived)
    /// and one older than the peer's last applied message is not applied. A
    /// push received after we sent a request thus wins over that request's answer.
    private struct Freshness {
        var nextTicket: UInt64 = 0
        var applied: [PeerID: UInt64] = [:]

        mutating func take() -> UInt64 {
            nextTicket += 1
            return nextTicket
        }
    }

    public init(
        host: Libp2pHost, agentVersion: String, observedAddresses: ObservedAddressBook = .init(),
        logger: Logger = Logger(label: "p2p.identify")
    ) {
        self.host = host
        self.agentVersion = agentVersion
        self.logger = logger
        self.observed = Mutex(observedAddresses)
    }

    /// Our addresses as enough peers observed them (confirmed), and then advertised.
    public var confirmedObservedAddresses: [Multiaddr] {
        observed.withLock { $0.confirmed(now: .now) }
    }

    /// Every address peers told us they observe us at (confirmed or not).
    public var observedAddresses: [Multiaddr] {
        observed.withLock { $0.all }
    }

    /// What we advertise: our listen addresses and the confirmed observed ones.
    public var advertisedAddresses: [Multiaddr] {
        let listen = host.listenAddresses
        return listen + confirmedObservedAddresses.filter { !listen.contains($0) }
    }

    /// Registers the handlers and identifies every new connection until `stop`
    /// (or until the host closes). Returns once the handlers are registered;
    /// the watching runs in a task of the service.
    public func start() {
        host.setStreamHandler(Self.protocolID) { [self] stream in
            await tasks.serve(stream) { stream in await self.respond(on: stream) }
        }
        host.setStreamHandler(Self.pushProtocolID) { [self] stream in
            await tasks.serve(stream) { stream in await self.receivePush(on: stream) }
        }
        let events = host.events()
        // The service's (`tasks`): `stop` cancels it, which cancels the identify
        // exchanges and pushes of its group; it also ends with the host's events.
        tasks.spawn { [self] in
            await withDiscardingTaskGroup { group in
                for await event in events {
                    switch event {
                    case .connected(let connection):
                        group.addTask { _ = try? await self.identify(connection) }
                    case .localChanged:
                        group.addTask { await self.pushToAll() }
                    case .peerDisconnected(let peer):
                        _ = freshness.withLock { $0.applied.removeValue(forKey: peer) }
                    default:
                        break
                    }
                }
            }
        }
    }

    /// Stops serving and identifying; returns once the watcher, the exchanges
    /// it started and the streams being answered have ended.
    public func stop() async {
        host.removeStreamHandler(Self.protocolID)
        host.removeStreamHandler(Self.pushProtocolID)
        await tasks.stop()
    }

    /// Our identify message, with the address we see `connection`'s remote at.
    func localMessage(observed: Multiaddr?) -> Identify_Pb_Identify {
        var message = Identify_Pb_Identify()
        message.protocolVersion = Self.protocolVersion
        message.agentVersion = agentVersion
        message.publicKey = Data(host.localKey.publicKey.marshal())
        // Only addresses the remote could dial, as the DHT hands out: a peer we see
        // at a public address (or through a relay) is not told our LAN or
        // loopback addresses (it would only dial them in vain, as py-libp2p's
        // unilateral upgrade does for 10 s before it hole punches).
        let addresses = advertisedAddresses.filter { address in observed.map { address.isDialable(byPeerAt: $0) } ?? true }
        message.listenAddrs = addresses.map { Data($0.bytes) }
        message.protocols = host.supportedProtocols
        if let observed { message.observedAddr = Data(observed.bytes) }
        do {
            let record = PeerRecord(key: host.localKey, addresses: addresses)
            message.signedPeerRecord = Data(try record.sealed(with: host.localKey))
        } catch {
            logger.warning("cannot sign our peer record", metadata: ["error": "\(error)"])
        }
        return message
    }

    private func send(_ message: Identify_Pb_Identify, on stream: MuxedStream) async throws {
        let bytes = try message.serializedBytes() as [UInt8]
        var buffer = ByteBuffer()
        buffer.writeLengthPrefixed(bytes)
        try await stream.write(buffer)
        try await stream.closeWrite()
    }

    private func respond(on stream: MuxedStream) async {
        do {
            try await send(localMessage(observed: stream.connection.remoteAddress), on: stream)
        } catch {
            logger.debug("identify response failed", metadata: ["error": "\(error)"])
            stream.reset()
        }
    }

    private func receivePush(on stream: MuxedStream) async {
        do {
            var reader = StreamReader(stream)
            guard let bytes = try await reader.readLengthPrefixed(maxLength: Self.maxMessageSize) else { return }
            let info = try Self.decode(bytes, from: stream.connection)
            record(info, ticket: freshness.withLock { $0.take() })
            await stream.close()
        } catch {
            logger.debug("identify push failed", metadata: ["error": "\(error)"])
            stream.reset()
        }
    }

    /// Asks the remote of `connection` who it is and records the answer.
    @discardableResult
    public func identify(_ connection: Connection) async throws -> IdentifyInfo {
        let ticket = freshness.withLock { $0.take() }
        let stream = try await connection.newStream(protocols: [Self.protocolID])
        do {
            var reader = StreamReader(stream)
            guard let bytes = try await reader.readLengthPrefixed(maxLength: Self.maxMessageSize) else {
                throw IdentifyError.malformedMessage("stream ended before the message")
            }
            let info = try Self.decode(bytes, from: connection)
            await stream.close()
            record(info, ticket: ticket)
            return info
        } catch {
            stream.reset()
            throw error
        }
    }

    /// Decodes a message received from the remote of `connection`, checking the
    /// key. A signed peer record that does not verify, or is another peer's, is
    /// dropped (the rest of the message still counts).
    static func decode(_ bytes: ByteBuffer, from connection: Connection) throws -> IdentifyInfo {
        let message: Identify_Pb_Identify
        do {
            message = try Identify_Pb_Identify(serializedBytes: Array(bytes.readableBytesView))
        } catch {
            throw IdentifyError.malformedMessage("\(error)")
        }
        var publicKey: PublicKey?
        if message.hasPublicKey {
            let key: PublicKey
            do {
                key = try PublicKey(marshaled: Array(message.publicKey))
            } catch {
                throw IdentifyError.malformedMessage("public key: \(error)")
            }
            let claimed = PeerID(publicKey: key)
            guard claimed == connection.remotePeer else {
                throw IdentifyError.publicKeyMismatch(expected: connection.remotePeer, got: "\(claimed)")
            }
            publicKey = key
        }
        var peerRecord: PeerRecord?
        if message.hasSignedPeerRecord, let record = try? PeerRecord.open(Array(message.signedPeerRecord)),
            record.peerID == connection.remotePeer
        {
            peerRecord = record
        }
        return IdentifyInfo(
            peer: connection.remotePeer,
            publicKey: publicKey,
            protocolVersion: message.hasProtocolVersion ? message.protocolVersion : nil,
            agentVersion: message.hasAgentVersion ? message.agentVersion : nil,
            listenAddresses: message.listenAddrs.prefix(maxAddresses).compactMap { try? Multiaddr(bytes: Array($0)) },
            protocols: Array(message.protocols.prefix(maxProtocols)),
            observedAddress: message.hasObservedAddr ? try? Multiaddr(bytes: Array(message.observedAddr)) : nil,
            peerRecord: peerRecord, signedPeerRecord: peerRecord == nil ? nil : Array(message.signedPeerRecord))
    }

    /// Records what the peer told us, unless it already told us something newer
    /// (see `Freshness`); the address it observed us at counts either way.
    private func record(_ info: IdentifyInfo, ticket: UInt64) {
        if let address = info.observedAddress {
            let before = confirmedObservedAddresses
            observed.withLock { $0.record(address, by: info.peer, now: .now) }
            // A newly confirmed address is news for our peers.
            if confirmedObservedAddresses != before { host.emit(.localChanged) }
        }
        // The check and the peer store writes under one lock: a newer message
        // cannot be applied between them and then overwritten.
        let fresh = freshness.withLock { freshness -> Bool in
            if let last = freshness.applied[info.peer], last > ticket { return false }
            freshness.applied[info.peer] = ticket
            host.peerStore.update(info.peer) { peer in
                if let key = info.publicKey { peer.publicKey = key }
                peer.protocols = info.protocols
                peer.agentVersion = info.agentVersion
                peer.protocolVersion = info.protocolVersion
                peer.observedAddress = info.observedAddress
            }
            host.peerStore.addAddresses(info.listenAddresses, for: info.peer)
            if let record = info.peerRecord, let envelope = info.signedPeerRecord {
                host.peerStore.addSignedRecord(record, envelope: envelope)
            }
            return true
        }
        guard fresh else {
            logger.debug("identify: an older answer arrived after newer information", metadata: ["peer": "\(info.peer)"])
            return
        }
        host.emit(.peerUpdated(info.peer))
    }

    /// Sends our current identify message to every connected peer that supports push.
    public func pushToAll() async {
        for connection in host.connections {
            guard host.peerStore.info(connection.remotePeer)?.protocols.contains(Self.pushProtocolID) ?? false else {
                continue
            }
            do {
                let stream = try await connection.newStream(protocols: [Self.pushProtocolID])
                try await send(localMessage(observed: connection.remoteAddress), on: stream)
                // Nothing comes back: without this the stream stayed in the
                // connection's table (and held its window's memory) until the connection closed.
                await stream.close()
            } catch {
                logger.debug("identify push failed", metadata: ["peer": "\(connection.remotePeer)", "error": "\(error)"])
            }
        }
    }
}
