import Foundation
import Multiformats
import SwiftProtobuf

/// Errors of DCUtR.
public enum HolePunchError: Error, CustomStringConvertible, Sendable {
    case malformed(String)
    case unexpected(String)
    /// The remote sent no address we can dial.
    case noAddresses
    /// Every attempt failed; the last attempt's error.
    case failed(attempts: Int, underlying: any Error)

    public var description: String {
        switch self {
        case .malformed(let why): "dcutr: malformed message: \(why)"
        case .unexpected(let why): "dcutr: unexpected message: \(why)"
        case .noAddresses: "dcutr: the remote sent no dialable address"
        case .failed(let attempts, let underlying): "dcutr: hole punch failed after \(attempts) attempts: \(underlying)"
        }
    }
}

/// A message of `/libp2p/dcutr`.
public enum HolePunchMessage: Sendable, Equatable {
    /// Our observed (and predicted) addresses.
    case connect([Multiaddr])
    /// Dial now.
    case sync

    public static let maxSize = 4096
    static let maxAddresses = 32

    public init(bytes: some Collection<UInt8>) throws(HolePunchError) {
        let message: Holepunch_Pb_HolePunch
        do {
            message = try Holepunch_Pb_HolePunch(serializedBytes: Array(bytes))
        } catch {
            throw .malformed("\(error)")
        }
        switch message.type {
        case .connect:
            self = .connect(message.obsAddrs.prefix(Self.maxAddresses).compactMap { try? Multiaddr(bytes: Array($0)) })
        case .sync:
            self = .sync
        }
    }

    public func encoded() -> [UInt8] {
        var message = Holepunch_Pb_HolePunch()
        switch self {
        case .connect(let addresses):
            message.type = .connect
            message.obsAddrs = addresses.map { Data($0.bytes) }
        case .sync:
            message.type = .sync
        }
        return (try? message.serializedBytes()) ?? []
    }

    /// The addresses of a CONNECT worth a hole punch: TCP or QUIC v1 over
    /// IP (what go, rust and py punch through), not relayed.
    static func dialable(_ addresses: [Multiaddr]) -> [Multiaddr] {
        addresses.filter { address in
            let parts = address.components
            guard parts.count >= 2, !parts.contains(.p2pCircuit) else { return false }
            switch (parts[0], parts[1]) {
            case (.ip4, .tcp), (.ip6, .tcp): return true
            case (.ip4, .udp), (.ip6, .udp): return address.isQUICv1AtIP
            default: return false
            }
        }.map(\.withoutP2P)
    }
}

/// The side that starts DCUtR (the peer that accepted the relayed
/// connection: "B" in the spec), sans-IO. It sends CONNECT, measures the
/// round trip to the remote's CONNECT, sends SYNC and dials half a round trip
/// later, when the remote's dial (on receiving SYNC) is on its way too.
/// In the connections that result it is the security responder.
public struct HolePunchInitiator: Sendable {
    enum State: Sendable {
        case idle
        case awaitingConnect(sentAt: ContinuousClock.Instant)
        case synced
    }
    private var state = State.idle

    public init() {}

    /// The CONNECT to send, carrying our addresses.
    public mutating func start(addresses: [Multiaddr], now: ContinuousClock.Instant) -> HolePunchMessage {
        state = .awaitingConnect(sentAt: now)
        return .connect(addresses)
    }

    /// The remote's CONNECT: what to send (SYNC), where to dial, when (after
    /// half the measured round trip), and the round trip.
    public mutating func receive(_ message: HolePunchMessage, now: ContinuousClock.Instant) throws(HolePunchError)
        -> (reply: HolePunchMessage, dial: [Multiaddr], after: Duration, rtt: Duration)
    {
        guard case .awaitingConnect(let sentAt) = state else { throw .unexpected("\(message) after the exchange") }
        guard case .connect(let addresses) = message else { throw .unexpected("expected CONNECT, got \(message)") }
        let dial = HolePunchMessage.dialable(addresses)
        guard !dial.isEmpty else { throw .noAddresses }
        state = .synced
        let rtt = now - sentAt
        return (.sync, dial, rtt / 2, rtt)
    }
}

/// The side that answers DCUtR (the peer that dialled through the relay: "A"),
/// sans-IO: answers CONNECT with its own addresses, and dials at once on SYNC.
/// In the connections that result it is the security initiator.
public struct HolePunchResponder: Sendable {
    enum State: Sendable {
        case awaitingConnect
        case awaitingSync(dial: [Multiaddr])
        case done
    }
    private var state = State.awaitingConnect

    /// What the caller does next: send a reply, or dial the addresses.
    public enum Action: Sendable, Equatable {
        case reply(HolePunchMessage)
        case dial([Multiaddr])
    }

    public init() {}

    public mutating func receive(_ message: HolePunchMessage, ourAddresses: [Multiaddr]) throws(HolePunchError) -> Action {
        switch (state, message) {
        case (.awaitingConnect, .connect(let addresses)):
            let dial = HolePunchMessage.dialable(addresses)
            guard !dial.isEmpty else { throw .noAddresses }
            state = .awaitingSync(dial: dial)
            return .reply(.connect(ourAddresses))
        case (.awaitingSync(let dial), .sync):
            state = .done
            return .dial(dial)
        default:
            throw .unexpected("\(message) in state \(state)")
        }
    }
}
