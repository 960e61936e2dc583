import Foundation
import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Synchronization
import Transport

/// Circuit relay v2's protocol ids.
public enum CircuitProtocol {
    public static let hop = "/libp2p/circuit/relay/0.2.0/hop"
    public static let stop = "/libp2p/circuit/relay/0.2.0/stop"
    /// How long a peer may take to send its request or answer.
    static let messageTimeout: Duration = .seconds(10)
}

/// Reads one length-prefixed relay message of at most `HopMessage.maxSize` bytes, in time.
func readRelayMessage<M: Sendable>(
    _ stream: MuxedStream, _ what: String, decode: @escaping @Sendable (ByteBuffer) throws -> M
) async throws -> M {
    try await withTimeout(CircuitProtocol.messageTimeout, "reading \(what)") {
        var reader = StreamReader(stream)
        guard let bytes = try await reader.readLengthPrefixed(maxLength: HopMessage.maxSize) else {
            throw RelayError.malformed("stream ended before \(what)")
        }
        return try decode(bytes)
    }
}

func writeRelayMessage(_ bytes: [UInt8], to stream: MuxedStream) async throws {
    var buffer = ByteBuffer()
    buffer.writeLengthPrefixed(bytes)
    try await stream.write(buffer)
}

/// The current time in Unix seconds, the clock of reservations.
func unixNow() -> UInt64 {
    UInt64(max(0, Date().timeIntervalSince1970))
}

/// The relay (hop) side of circuit relay v2 on a host: grants reservations
/// with signed vouchers, connects circuits to peers that hold one through the
/// stop protocol, and splices the two streams within each circuit's limits.
public final class RelayService: Sendable {
    public let host: Libp2pHost
    private let resources: Mutex<RelayResources>
    private let logger: Logger
    /// The event watcher and the hop streams being served (with their circuits), ended by `stop`.
    let tasks = ServiceTasks()

    public init(host: Libp2pHost, limits: RelayLimits = .init(), logger: Logger = Logger(label: "p2p.relay")) {
        self.host = host
        self.resources = Mutex(RelayResources(limits: limits))
        self.logger = logger
    }

    public var limits: RelayLimits { resources.withLock { $0.limits } }
    public var reservationCount: Int { resources.withLock { $0.reservationCount } }
    public var circuitCount: Int { resources.withLock { $0.circuitCount } }

    /// Serves the hop protocol; a peer's reservation ends when its last
    /// connection closes (as in go-libp2p). The watching runs in a task of the
    /// service until `stop` (or until the host closes).
    public func start() {
        host.setStreamHandler(CircuitProtocol.hop) { [self] stream in
            await tasks.serve(stream) { stream in await self.serve(stream) }
        }
        let events = host.events()
        // The service's (`tasks`): `stop` cancels it; it also ends with the host's events.
        tasks.spawn { [weak self] in
            for await event in events {
                guard case .peerDisconnected(let peer) = event else { continue }
                self?.resources.withLock { $0.cancelReservation(peer) }
            }
        }
    }

    /// Stops relaying: no more reservations or circuits; the circuits open
    /// are closed (both streams reset). Returns once the watcher and every
    /// hop stream being served have ended.
    public func stop() async {
        host.removeStreamHandler(CircuitProtocol.hop)
        await tasks.stop()
    }

    private func serve(_ stream: MuxedStream) async {
        let request: HopMessage
        do {
            request = try await readRelayMessage(stream, "hop request") { try HopMessage(bytes: $0.readableBytesView) }
        } catch {
            logger.debug("bad hop request", metadata: ["peer": "\(stream.remotePeer)", "error": "\(error)"])
            let status = (error as? RelayError)?.status ?? .malformedMessage
            try? await writeRelayMessage(HopMessage.status(status).encoded(), to: stream)
            return
        }
        let connection = stream.connection
        let relayed = connection.isRelayed
        switch request {
        case .reserve:
            await reserve(for: stream, relayed: relayed)
        case .connect(let target):
            await connect(stream, to: target, relayed: relayed)
        case .status:
            try? await writeRelayMessage(HopMessage.status(.unexpectedMessage).encoded(), to: stream)
        }
    }

    private func reserve(for stream: MuxedStream, relayed: Bool) async {
        let peer = stream.remotePeer
        let now = unixNow()
        let result = resources.withLock {
            $0.reserve(peer: peer, ip: stream.connection.remoteAddress.ipBytes, overRelayedConnection: relayed, now: now)
        }
        let answer: HopMessage
        switch result {
        case .success(let expire):
            let voucher = try? ReservationVoucher(relay: host.localPeer, peer: peer, expiration: expire)
                .sealed(with: host.localKey)
            let addresses = host.listenAddresses.filter { CircuitAddress($0) == nil }
                .map { $0.encapsulating(.p2p(host.localPeer.bytes)) }
            answer = .status(
                .ok, reservation: ReservationGrant(expire: expire, addresses: addresses, voucher: voucher),
                limit: limits.circuit)
            logger.debug("reservation granted", metadata: ["peer": "\(peer)", "expire": "\(expire)"])
        case .failure(let refusal):
            answer = .status(refusal.status)
            logger.debug("reservation refused", metadata: ["peer": "\(peer)", "status": "\(refusal.status)"])
        }
        try? await writeRelayMessage(answer.encoded(), to: stream)
    }

    private func connect(_ stream: MuxedStream, to target: PeerID, relayed: Bool) async {
        let source = stream.remotePeer
        let opened = resources.withLock {
            $0.openCircuit(from: source, to: target, overRelayedConnection: relayed, now: unixNow())
        }
        let limit: CircuitLimit
        switch opened {
        case .success(let granted): limit = granted
        case .failure(let refusal):
            logger.debug("circuit refused", metadata: ["from": "\(source)", "to": "\(target)", "status": "\(refusal.status)"])
            try? await writeRelayMessage(HopMessage.status(refusal.status).encoded(), to: stream)
            return
        }
        defer { resources.withLock { $0.closeCircuit(from: source, to: target) } }
        // Only over a connection the target keeps to us: we never dial it.
        guard let toTarget = host.connections.first(where: {
            $0.remotePeer == target && $0.isActive && !$0.isRelayed
        }) else {
            try? await writeRelayMessage(HopMessage.status(.connectionFailed).encoded(), to: stream)
            return
        }
        let stop: MuxedStream
        do {
            stop = try await withTimeout(CircuitProtocol.messageTimeout, "opening the stop stream") {
                try await toTarget.newStream(protocols: [CircuitProtocol.stop])
            }
        } catch {
            logger.debug("stop stream failed", metadata: ["to": "\(target)", "error": "\(error)"])
            try? await writeRelayMessage(HopMessage.status(.connectionFailed).encoded(), to: stream)
            return
        }
        do {
            try await writeRelayMessage(StopMessage.connect(source, limit: limit).encoded(), to: stop)
            let answer = try await readRelayMessage(stop, "stop answer") { try StopMessage(bytes: $0.readableBytesView) }
            try RelayClientProtocol.stopAnswer(answer)
        } catch {
            logger.debug("target refused the circuit", metadata: ["to": "\(target)", "error": "\(error)"])
            stop.reset()
            try? await writeRelayMessage(HopMessage.status(.connectionFailed).encoded(), to: stream)
            return
        }
        do {
            try await writeRelayMessage(HopMessage.status(.ok, limit: limit).encoded(), to: stream)
        } catch {
            stop.reset()
            return
        }
        logger.debug("circuit open", metadata: ["from": "\(source)", "to": "\(target)"])
        let end = await Self.splice(stream, stop, limit: limit)
        logger.debug("circuit closed", metadata: ["from": "\(source)", "to": "\(target)", "end": "\(end)"])
    }

    /// How a circuit ended.
    public enum SpliceEnd: Sendable, Equatable {
        /// Both sides closed their write side.
        case closed
        /// A direction spent its byte budget: both streams were reset.
        case dataLimit
        /// The circuit outlived its duration: both streams were reset.
        case durationLimit
        /// A stream failed: both were reset.
        case failed
    }

    private enum DirectionEnd: Sendable {
        case eof, dataLimit, durationLimit, failed
    }

    /// Copies each stream's data to the other until both ends close, the
    /// duration passes or a direction exceeds its bytes (then both are reset).
    static func splice(_ a: MuxedStream, _ b: MuxedStream, limit: CircuitLimit) async -> SpliceEnd {
        await withTaskGroup(of: DirectionEnd.self) { group in
            group.addTask { await copy(from: a, to: b, budget: CircuitBudget(limit: limit.data)) }
            group.addTask { await copy(from: b, to: a, budget: CircuitBudget(limit: limit.data)) }
            if let seconds = limit.duration {
                group.addTask {
                    do {
                        try await Task.sleep(for: .seconds(Int(seconds)))
                        return .durationLimit
                    } catch {
                        return .eof  // cancelled: the circuit ended first
                    }
                }
            }
            var closed = 0
            var end = SpliceEnd.closed
            loop: for await direction in group {
                switch direction {
                case .eof:
                    closed += 1
                    guard closed == 2 else { continue }
                case .dataLimit: end = .dataLimit
                case .durationLimit: end = .durationLimit
                case .failed: end = .failed
                }
                break loop
            }
            group.cancelAll()
            // Cancelled from outside (the relay's `stop`): the circuit is cut, not closed.
            if Task.isCancelled { end = .failed }
            if end != .closed {
                a.reset()
                b.reset()
            }
            return end
        }
    }

    private static func copy(from source: MuxedStream, to destination: MuxedStream, budget: CircuitBudget) async -> DirectionEnd {
        var budget = budget
        do {
            while let chunk = try await source.read() {
                let allowed = budget.take(chunk.readableBytes)
                if allowed > 0 { try await destination.write(chunk.getSlice(at: chunk.readerIndex, length: allowed)!) }
                if allowed < chunk.readableBytes || budget.isExhausted { return .dataLimit }
            }
            try await destination.closeWrite()
            return .eof
        } catch is CancellationError {
            return .eof
        } catch {
            return .failed
        }
    }
}
