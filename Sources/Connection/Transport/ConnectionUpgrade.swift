import Identity
import Multistream
import NIOCore
import LibP2PSecurity

/// The upgrade of a raw byte stream (TCP, WebSocket, a relayed stream) to a
/// secured connection with an agreed muxer, sans-IO: multistream-select of a
/// security protocol from a list, its handshake, then multistream-select of a
/// muxer from a list, skipped when the handshake agreed one already (early
/// muxer negotiation). Fed the bytes that arrive, it appends the bytes to send.
///
/// The role is an input: usually the dialler initiates, but in a hole punch
/// both sides dial and the protocol decides (DCUtR), or the multistream
/// simultaneous-open extension does (`UpgradeRole.simultaneousOpen`).
public struct ConnectionUpgrade {
    /// What the upgrade established.
    public struct Upgraded {
        public let remotePeer: PeerID
        public let remotePublicKey: PublicKey
        /// The security protocol's id (`/noise`, `/tls/1.0.0`).
        public let securityProtocol: String
        /// The muxer's protocol id (`/yamux/1.0.0`).
        public let muxer: String
        /// The part this end played in the handshake (and plays in the muxer).
        public let role: SecurityRole
        /// Whether the muxer was agreed inside the security handshake.
        public let earlyMuxerNegotiation: Bool
        /// The secure channel, for the muxer's bytes from now on.
        public var session: any SecureSession
        /// Decrypted bytes that arrived after the muxer was agreed: the muxer's first bytes.
        public var plaintexts: [ByteBuffer]
    }

    /// What a finished handshake gave, carried through muxer negotiation.
    struct Secured {
        let remotePeer: PeerID
        let remotePublicKey: PublicKey
        let securityProtocol: String
        var session: any SecureSession
    }

    enum State {
        case idle
        case negotiatingSecurity(MultistreamNegotiation)
        case handshaking(protocolID: String, handshake: any SecurityHandshake)
        case negotiatingMuxer(Secured, MultistreamNegotiation)
        case upgraded
        case failed
    }

    public let role: UpgradeRole
    /// The handshake's role: `role`'s, or what a simultaneous open decided.
    public private(set) var securityRole: SecurityRole
    private let localKey: PrivateKey
    private let expectedRemotePeer: PeerID?
    private let security: [any SecurityProtocol]
    private let muxers: [String]
    private let limits: MultistreamLimits
    /// The tie-breaker of a simultaneous open.
    private let nonce: UInt64
    private(set) var state: State = .idle

    public init(
        role: UpgradeRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, security: [any SecurityProtocol],
        muxers: [String], limits: MultistreamLimits = .init(), nonce: UInt64 = .random(in: 0...UInt64.max)
    ) {
        self.role = role
        self.securityRole = role == .responder ? .responder : .initiator
        self.nonce = nonce
        self.localKey = localKey
        self.expectedRemotePeer = expectedRemotePeer
        self.security = security
        self.muxers = muxers
        self.limits = limits
    }

    /// Where the upgrade is, for time-out errors and logs.
    public var phase: String {
        switch state {
        case .idle: "start"
        case .negotiatingSecurity: "security negotiation"
        case .handshaking(let id, _): "\(id) handshake"
        case .negotiatingMuxer: "muxer negotiation"
        case .upgraded: "upgraded"
        case .failed: "failed"
        }
    }

    /// Starts multistream-select for the security protocol.
    public mutating func start(output: inout ByteBuffer) {
        guard case .idle = state else { return }
        var negotiator: MultistreamNegotiation
        if role == .simultaneousOpen {
            negotiator = .simultaneousOpen(protocols: security.map(\.protocolID), nonce: nonce, limits: limits)
        } else {
            negotiator = makeNegotiator(for: security.map(\.protocolID))
        }
        negotiator.start(into: &output)
        state = .negotiatingSecurity(negotiator)
    }

    /// Consumes arriving bytes; appends what to send. Returns the result once
    /// the muxer is agreed; the upgrade is then finished and takes no more input.
    public mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws(TransportError) -> Upgraded? {
        do {
            return try step(&input, output: &output)
        } catch {
            state = .failed
            throw error
        }
    }

    private mutating func step(_ input: inout ByteBuffer, output: inout ByteBuffer) throws(TransportError) -> Upgraded? {
        while true {
            switch state {
            case .idle:
                throw .negotiationFailed(phase: "security", underlying: MultistreamError.unexpectedMessage("data before start"))
            case .negotiatingSecurity(var negotiator):
                let agreed: String?
                do {
                    agreed = try negotiator.receive(&input, output: &output)
                } catch {
                    throw .negotiationFailed(phase: "security", underlying: error)
                }
                guard let agreed else {
                    state = .negotiatingSecurity(negotiator)
                    return nil
                }
                guard let chosen = security.first(where: { $0.protocolID == agreed }) else {
                    throw .negotiationFailed(phase: "security", underlying: MultistreamError.unexpectedMessage(agreed))
                }
                securityRole = negotiator.actsAsResponder ? .responder : .initiator
                var handshake: any SecurityHandshake
                do {
                    handshake = try chosen.makeHandshake(
                        role: securityRole, localKey: localKey, expectedRemotePeer: expectedRemotePeer, muxers: muxers)
                    try handshake.start(into: &output)
                } catch {
                    throw Self.securityError(agreed, error)
                }
                state = .handshaking(protocolID: agreed, handshake: handshake)
            case .handshaking(let protocolID, var handshake):
                state = .failed  // the handshake is mutated below; no second copy held meanwhile
                let done: SecuredConnection?
                do {
                    done = try handshake.receive(&input, output: &output)
                } catch {
                    throw Self.securityError(protocolID, error)
                }
                guard var secured = done else {
                    state = .handshaking(protocolID: protocolID, handshake: handshake)
                    return nil
                }
                var plaintexts: [ByteBuffer] = []
                do {
                    try secured.session.receive(&secured.remainder, plaintexts: &plaintexts, output: &output)
                } catch {
                    throw Self.securityError(protocolID, error)
                }
                let result = Secured(
                    remotePeer: secured.remotePeer, remotePublicKey: secured.remotePublicKey,
                    securityProtocol: protocolID, session: secured.session)
                if let early = secured.negotiatedMuxer, muxers.contains(early) {
                    state = .upgraded
                    return Upgraded(
                        remotePeer: result.remotePeer, remotePublicKey: result.remotePublicKey,
                        securityProtocol: protocolID, muxer: early, role: securityRole, earlyMuxerNegotiation: true,
                        session: result.session, plaintexts: plaintexts)
                }
                var negotiator = makeNegotiator(for: muxers)
                var hello = ByteBuffer()
                negotiator.start(into: &hello)
                var session = result.session
                do {
                    try session.encrypt(pieces: [hello], into: &output)
                } catch {
                    throw Self.securityError(protocolID, error)
                }
                let secure = Secured(
                    remotePeer: result.remotePeer, remotePublicKey: result.remotePublicKey,
                    securityProtocol: protocolID, session: session)
                state = .negotiatingMuxer(secure, negotiator)
                return try negotiateMuxer(plaintexts: plaintexts, output: &output)
            case .negotiatingMuxer(var secured, let negotiator):
                state = .failed
                var plaintexts: [ByteBuffer] = []
                do {
                    try secured.session.receive(&input, plaintexts: &plaintexts, output: &output)
                } catch {
                    throw Self.securityError(secured.securityProtocol, error)
                }
                state = .negotiatingMuxer(secured, negotiator)
                return try negotiateMuxer(plaintexts: plaintexts, output: &output)
            case .upgraded, .failed:
                return nil
            }
        }
    }

    /// Feeds decrypted bytes to the muxer negotiation; the rest after agreement is the muxer's.
    private mutating func negotiateMuxer(plaintexts: [ByteBuffer], output: inout ByteBuffer) throws(TransportError) -> Upgraded? {
        guard case .negotiatingMuxer(var secured, var negotiator) = state else { return nil }
        state = .failed
        var remaining = plaintexts[...]
        while var plain = remaining.popFirst() {
            var reply = ByteBuffer()
            let agreed: String?
            do {
                agreed = try negotiator.receive(&plain, output: &reply)
            } catch {
                throw .negotiationFailed(phase: "muxer", underlying: error)
            }
            if reply.readableBytes > 0 {
                do {
                    try secured.session.encrypt(pieces: [reply], into: &output)
                } catch {
                    throw Self.securityError(secured.securityProtocol, error)
                }
            }
            if let agreed {
                var rest: [ByteBuffer] = plain.readableBytes > 0 ? [plain] : []
                rest.append(contentsOf: remaining)
                state = .upgraded
                return Upgraded(
                    remotePeer: secured.remotePeer, remotePublicKey: secured.remotePublicKey,
                    securityProtocol: secured.securityProtocol, muxer: agreed, role: securityRole,
                    earlyMuxerNegotiation: false,
                    session: secured.session, plaintexts: rest)
            }
        }
        state = .negotiatingMuxer(secured, negotiator)
        return nil
    }

    private func makeNegotiator(for protocols: [String]) -> MultistreamNegotiation {
        switch securityRole {
        case .initiator:
            return MultistreamNegotiation.initiator(protocols: protocols, limits: limits)
        case .responder:
            return MultistreamNegotiation.responder(limits: limits) { protocols.contains($0) }
        }
    }

    private static func securityError(_ protocolID: String, _ error: any Error) -> TransportError {
        if let mismatch = error as? PeerIDMismatch {
            return .peerIDMismatch(expected: mismatch.expected, actual: mismatch.actual)
        }
        return .securityFailed(protocolID: protocolID, underlying: error)
    }
}

/// How a connection's upgrade starts.
public enum UpgradeRole: Sendable, Equatable {
    /// The dialler's part: proposes, then starts the handshake.
    case initiator
    /// The listener's part: answers proposals, then answers the handshake.
    case responder
    /// A dialler that first proposes the multistream simultaneous-open
    /// extension (`/libp2p/simultaneous-connect`): with a listener it is an
    /// initiator; with a remote that is a dialler too (both dialled at once, as
    /// in a hole punch) a random nonce each decides which end is the responder.
    case simultaneousOpen
}

/// An error known only by its description (a non-Sendable error crossing threads).
public struct DescribedError: Error, CustomStringConvertible, Sendable {
    public let description: String
}
