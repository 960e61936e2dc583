import Identity
import NIOCore
import LibP2PSecurity

/// `/noise` as one of the upgrader's security protocols.
public struct NoiseSecurity: SecurityProtocol {
    public static let protocolID = "/noise"
    public var protocolID: String { Self.protocolID }

    /// Where the transport's ChaCha20-Poly1305 comes from.
    public let aead: AEADBackend

    public init(aead: AEADBackend = .preferred) {
        self.aead = aead
    }

    public func makeHandshake(
        role: SecurityRole, localKey: PrivateKey, expectedRemotePeer: PeerID?, muxers: [String]
    ) throws -> any SecurityHandshake {
        NoiseSecurityHandshake(
            handshake: NoiseHandshake(
                initiator: role == .initiator, identity: localKey, expectedRemotePeer: expectedRemotePeer,
                muxers: muxers, aead: aead),
            role: role, expectedRemotePeer: expectedRemotePeer, muxers: muxers)
    }
}

/// The Noise XX handshake behind the security-protocol interface.
struct NoiseSecurityHandshake: SecurityHandshake {
    var handshake: NoiseHandshake
    let role: SecurityRole
    let expectedRemotePeer: PeerID?
    let muxers: [String]

    mutating func start(into output: inout ByteBuffer) throws {
        handshake.start(into: &output)
    }

    mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws -> SecuredConnection? {
        let result: NoiseHandshake.Result
        do {
            guard let done = try handshake.receive(&input, output: &output) else { return nil }
            result = done
        } catch {
            // A mismatch is reported as the protocol-independent error, so callers can tell it apart.
            if case .peerIDMismatch(_, let got) = error, let expectedRemotePeer, let actual = try? PeerID(got) {
                throw PeerIDMismatch(expected: expectedRemotePeer, actual: actual)
            }
            throw error
        }
        return SecuredConnection(
            remotePeer: result.remotePeer, remotePublicKey: result.remotePublicKey, session: result.transport,
            remainder: result.remainder,
            negotiatedMuxer: selectEarlyMuxer(role: role, local: muxers, remote: result.remoteMuxers))
    }
}

extension NoiseTransport: SecureSession {
    public mutating func receive(
        _ input: inout ByteBuffer, plaintexts: inout [ByteBuffer], output: inout ByteBuffer
    ) throws {
        try decrypt(&input, into: &plaintexts)
    }
}
