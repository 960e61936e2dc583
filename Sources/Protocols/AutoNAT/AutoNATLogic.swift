import Identity
import Multiformats
import Transport

/// What the AutoNAT server allows, sans-IO: how many requests per peer and in
/// all per period, and which addresses of a request it dials back (only ever
/// at the requester's observed IP, so that it cannot be used to attack others).
public struct AutoNATServerPolicy: Sendable {
    /// How many dial-back requests are answered, per peer and in all, per minute.
    public struct Limits: Sendable, Equatable {
        /// go-libp2p's throttles: 3 per peer and 30 in all per minute.
        public var perPeer = 3
        public var global = 30
        /// Per requester address (IPv4 address, IPv6 /64; loopback exempt), so
        /// that identities made up at one address cannot spend the global budget.
        public var perAddress = 6
        public var period: Duration = .seconds(60)
        /// Addresses dialled per request.
        public var maxDials = 4

        public init() {}
    }

    public let limits: Limits
    private var periodStart: ContinuousClock.Instant?
    private var perPeer: [PeerID: Int] = [:]
    private var perAddress: [SourceNetwork: Int] = [:]
    private var total = 0

    public init(limits: Limits = .init()) {
        self.limits = limits
    }

    /// The decision for a DIAL from `requester` (the connection's peer)
    /// claiming `peer`, seen at `observed`: the addresses to dial, or the refusal.
    public mutating func decide(
        requester: PeerID, claimedPeer: PeerID, addresses: [Multiaddr], observed: Multiaddr, relayed: Bool,
        now: ContinuousClock.Instant
    ) -> Result<[Multiaddr], Refusal> {
        guard claimedPeer == requester else { return .failure(Refusal(.badRequest, "peer id is not the requester's")) }
        guard !relayed else { return .failure(Refusal(.dialRefused, "requests over relayed connections are refused")) }
        if let start = periodStart, now - start < limits.period {
        } else {
            periodStart = now
            perPeer = [:]
            perAddress = [:]
            total = 0
        }
        let network = SourceNetwork(observed, limitLoopback: false)
        guard total < limits.global, perPeer[requester, default: 0] < limits.perPeer,
            network.map({ perAddress[$0, default: 0] < limits.perAddress }) ?? true
        else {
            return .failure(Refusal(.dialRefused, "too many requests"))
        }
        let candidates = Self.candidates(addresses, observed: observed, max: limits.maxDials)
        guard !candidates.isEmpty else { return .failure(Refusal(.dialRefused, "no dialable address at the observed IP")) }
        total += 1
        perPeer[requester, default: 0] += 1
        if let network { perAddress[network, default: 0] += 1 }
        return .success(candidates)
    }

    /// The claimed TCP and QUIC addresses moved to the observed IP: an address
    /// at that IP as is, one at another IP (a private one behind a NAT) with the
    /// observed IP and its own port (what a port-preserving NAT would expose).
    /// Relay and non-IP addresses are skipped.
    static func candidates(_ claimed: [Multiaddr], observed: Multiaddr, max: Int) -> [Multiaddr] {
        guard let ip = observed.components.first, ip.isIP else { return [] }
        var result: [Multiaddr] = []
        for address in claimed {
            let parts = address.components
            guard parts.count >= 2, parts[0].isIP, !parts.contains(.p2pCircuit), parts[0].sameFamily(as: ip) else { continue }
            let isTCP = { if case .tcp = parts[1] { true } else { false } }()
            guard isTCP || isDialBackAddress(address.withoutP2P) else { continue }
            let moved = Multiaddr([ip] + parts[1...].filter { if case .p2p = $0 { return false } else { return true } })
            if !result.contains(moved) { result.append(moved) }
            if result.count == max { break }
        }
        return result
    }

    /// `/ip4|ip6/<ip>/tcp/<port>` or `/ip4|ip6/<ip>/udp/<port>/quic-v1`: what
    /// clients ask to be dialled at and servers dial.
    public static func isDialBackAddress(_ address: Multiaddr) -> Bool {
        let parts = address.components
        guard let first = parts.first, first.isIP else { return false }
        switch parts.count {
        case 2: if case .tcp = parts[1] { return true }
        case 3: return address.isQUICv1AtIP
        default: break
        }
        return false
    }

    /// A request we do not dial back for: the status and text of our answer.
    public struct Refusal: Error, Sendable, Equatable {
        public let status: AutoNATStatus
        public let text: String
        init(_ status: AutoNATStatus, _ text: String) {
            self.status = status
            self.text = text
        }
    }
}

/// Whether we are reachable from outside.
public enum Reachability: String, Sendable, Equatable {
    case unknown
    /// A server reached us at a public address.
    case `public`
    /// Servers reached us, but only at loopback, private or link-local
    /// addresses: reachable on the local network only (peers beyond it need a relay).
    case local
    /// Servers could not reach us.
    case `private`

    /// What the value means, where its name does not say it all.
    public var explanation: String? {
        self == .local ? "reachable on the local network only" : nil
    }

    /// "local (reachable on the local network only)", "public".
    public var text: String { explanation.map { "\(rawValue) (\($0))" } ?? rawValue }
}

/// Our reachability from the servers' answers, sans-IO: each server's latest
/// verdict counts once, and servers at one address (IPv4 address, IPv6 /64)
/// count as one, so that one machine with many identities cannot decide alone; `threshold` agreeing verdicts (and more than the
/// other way) decide, otherwise the status stays as it was. Reachable is
/// `public` when `threshold` servers reached us at public addresses, else
/// `local` (a dial back at a loopback, private or link-local address proves
/// nothing beyond the local network).
public struct ReachabilityTracker: Sendable {
    /// One server's latest answer.
    private enum Verdict: Equatable { case reachedPublicly, reachedLocally, unreachable }

    public let threshold: Int
    /// Who a verdict is of: a server's address, or the server when its address counts for nothing (loopback, not IP).
    private enum Voter: Hashable, Sendable {
        case network(SourceNetwork)
        case server(PeerID)
    }
    private var verdicts: [Voter: Verdict] = [:]
    /// The order servers answered in, to forget the oldest beyond `window`.
    private var order: [Voter] = []
    public let window: Int
    public private(set) var reachability = Reachability.unknown
    /// The public address a server reached us at, from the latest such OK.
    public private(set) var publicAddress: Multiaddr?

    public init(threshold: Int = 2, window: Int = 8) {
        self.threshold = threshold
        self.window = window
    }

    /// Records a server's answer; returns the new reachability if it changed.
    /// Refusals and errors other than a failed dial say nothing about us.
    /// `serverAddress`: where we reached the server (servers at one address are one voter).
    public mutating func record(
        server: PeerID, at serverAddress: Multiaddr? = nil, status: AutoNATStatus, address: Multiaddr?
    ) -> Reachability? {
        let verdict: Verdict
        switch status {
        case .ok where address?.scope == .public:
            verdict = .reachedPublicly
            publicAddress = address
        case .ok: verdict = .reachedLocally
        case .dialError: verdict = .unreachable
        default: return nil
        }
        let voter = serverAddress.flatMap { SourceNetwork($0, limitLoopback: false) }.map(Voter.network) ?? .server(server)
        order.removeAll { $0 == voter }
        order.append(voter)
        verdicts[voter] = verdict
        if order.count > window { verdicts[order.removeFirst()] = nil }
        let no = verdicts.values.count(where: { $0 == .unreachable })
        let yes = verdicts.count - no
        let publicly = verdicts.values.count(where: { $0 == .reachedPublicly })
        let next: Reachability
        if yes >= threshold && yes > no {
            next = publicly >= threshold ? .public : .local
        } else if no >= threshold && no > yes {
            next = .private
        } else {
            return nil
        }
        guard next != reachability else { return nil }
        reachability = next
        return next
    }
}

extension MultiaddrComponent {
    var isIP: Bool {
        switch self {
        case .ip4, .ip6: true
        default: false
        }
    }

    func sameFamily(as other: MultiaddrComponent) -> Bool {
        switch (self, other) {
        case (.ip4, .ip4), (.ip6, .ip6): true
        default: false
        }
    }
}
