import Identity
import Multiformats

/// The client's side of the hop and stop protocols, sans-IO: the requests it
/// sends and what it makes of the answers (each answer checked against the
/// spec; the wrapper only moves the framed messages).
public enum RelayClientProtocol {
    /// The answer to our RESERVE: the grant, if the relay said OK with a
    /// reservation that has not expired and whose voucher (if any) is the
    /// relay's and names us.
    public static func reservation(
        from answer: HopMessage, relay: PeerID, local: PeerID, now: UInt64
    ) throws(RelayError) -> ReservationGrant {
        guard case .status(let status, let reservation, _) = answer else {
            throw .unexpected("expected STATUS in answer to RESERVE, got \(answer)")
        }
        guard status == .ok else { throw .refused(status, phase: "reservation") }
        guard let reservation else { throw .malformed("STATUS OK without a reservation") }
        guard reservation.expire > now else {
            throw .malformed("reservation expired at \(reservation.expire), now is \(now)")
        }
        if let bytes = reservation.voucher {
            let voucher = try ReservationVoucher.open(bytes)
            guard voucher.relay == relay, voucher.peer == local else {
                throw .badVoucher("voucher for \(voucher.peer) at \(voucher.relay), expected \(local) at \(relay)")
            }
        }
        return reservation
    }

    /// The answer to our CONNECT: the circuit's limit once the relay said OK.
    public static func circuit(from answer: HopMessage) throws(RelayError) -> CircuitLimit? {
        guard case .status(let status, _, let limit) = answer else {
            throw .unexpected("expected STATUS in answer to CONNECT, got \(answer)")
        }
        guard status == .ok else { throw .refused(status, phase: "connect") }
        return limit
    }

    /// A STOP request from the relay: who opens the circuit and under which
    /// limit; throws (and the caller answers with `error.status`) otherwise.
    public static func incoming(_ request: StopMessage) throws(RelayError) -> (source: PeerID, limit: CircuitLimit?) {
        guard case .connect(let source, let limit) = request else {
            throw .unexpected("expected CONNECT on a stop stream, got \(request)")
        }
        return (source, limit)
    }

    /// The relay's answer to a STOP CONNECT we sent (relay side): OK or the refusal.
    public static func stopAnswer(_ answer: StopMessage) throws(RelayError) {
        guard case .status(let status) = answer else {
            throw .unexpected("expected STATUS in answer to STOP CONNECT, got \(answer)")
        }
        guard status == .ok else { throw .refused(status, phase: "stop") }
    }
}

/// Circuit addresses: `<relay address>/p2p/<relay>/p2p-circuit[/p2p/<target>]`.
public struct CircuitAddress: Sendable, Equatable {
    /// The relay's address including its `/p2p/<relay>` (possibly only that).
    public let relayAddress: Multiaddr
    public let relay: PeerID
    /// The destination, when dialing.
    public let target: PeerID?

    /// Parses a circuit address; nil if it is not one.
    public init?(_ address: Multiaddr) {
        let parts = address.components
        guard let circuit = parts.firstIndex(of: .p2pCircuit), circuit > 0,
            case .p2p(let relayBytes) = parts[circuit - 1], let relay = try? PeerID(bytes: relayBytes)
        else { return nil }
        let rest = parts[(circuit + 1)...]
        switch rest.count {
        case 0:
            target = nil
        case 1:
            guard case .p2p(let targetBytes) = rest.first, let target = try? PeerID(bytes: targetBytes) else { return nil }
            self.target = target
        default:
            return nil
        }
        self.relay = relay
        relayAddress = Multiaddr(Array(parts[..<circuit]))
    }

    /// `<relay address>/p2p-circuit`: what a listener advertises, and a
    /// relayed connection's remote address.
    public var listenAddress: Multiaddr { relayAddress.encapsulating(.p2pCircuit) }
}
