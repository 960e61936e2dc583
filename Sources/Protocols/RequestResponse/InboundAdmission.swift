import Identity

/// Which inbound requests are served at once: at most `perPeer` from one peer
/// and `total` from all; the rest are refused (their stream reset), so a peer
/// cannot make us run an unbounded number of handlers.
public struct InboundAdmission: Sendable {
    public let perPeer: Int
    public let total: Int
    private var active: [PeerID: Int] = [:]
    public private(set) var activeTotal = 0

    public init(perPeer: Int, total: Int) {
        self.perPeer = perPeer
        self.total = total
    }

    /// Why a request was refused.
    public enum Refusal: Sendable, Equatable, CustomStringConvertible {
        case peerLimit(Int)
        case totalLimit(Int)

        public var description: String {
            switch self {
            case .peerLimit(let limit): return "the peer already has \(limit) requests being served"
            case .totalLimit(let limit): return "\(limit) requests are being served"
            }
        }
    }

    /// Takes a slot for a request of `peer`, or says why not.
    public mutating func admit(_ peer: PeerID) -> Refusal? {
        guard activeTotal < total else { return .totalLimit(total) }
        let current = active[peer, default: 0]
        guard current < perPeer else { return .peerLimit(perPeer) }
        active[peer] = current + 1
        activeTotal += 1
        return nil
    }

    /// Gives back the slot of a finished request of `peer`.
    public mutating func release(_ peer: PeerID) {
        guard let current = active[peer] else { return }
        active[peer] = current > 1 ? current - 1 : nil
        activeTotal -= 1
    }

    public func active(for peer: PeerID) -> Int { active[peer, default: 0] }
}
