import Crypto
import Foundation
import Identity
import NIOCore
import NIOFoundationCompat

/// The libp2p Noise handshake (`/noise`): Noise_XX_25519_ChaChaPoly_SHA256 with the
/// identity payload, sans-IO. Feed it arriving bytes; it writes the bytes to send
/// and, when done, returns the remote identity and the transport state.
public struct NoiseHandshake {
    public static let protocolName = "Noise_XX_25519_ChaChaPoly_SHA256"
    /// Prefix of what the identity key signs: this string + the Noise static key.
    public static let signaturePrefix = Array("noise-libp2p-static-key:".utf8)
    /// Handshake payloads larger than this are refused (they hold a key, a signature, a few extensions).
    static let maxPayload = 8192

    /// What the handshake established.
    public struct Result {
        public let remotePeer: PeerID
        public let remotePublicKey: PublicKey
        public var transport: NoiseTransport
        /// Bytes that arrived after the last handshake message: already transport frames.
        public var remainder: ByteBuffer
        /// The stream muxers the remote listed in its extensions (early muxer negotiation).
        public let remoteMuxers: [String]
    }

    private enum Step {
        case initiatorStart, initiatorAwaitingMessage2
        case responderAwaitingMessage1, responderAwaitingMessage3
        case done
    }

    private let isInitiator: Bool
    private let identity: PrivateKey
    private let expectedRemotePeer: PeerID?
    private let staticKey: Curve25519.KeyAgreement.PrivateKey
    private let ephemeralKey: Curve25519.KeyAgreement.PrivateKey
    private var symmetric = SymmetricState(protocolName: NoiseHandshake.protocolName)
    private var step: Step
    private var frames = FrameDecoder()
    private var remoteEphemeral: [UInt8] = []
    /// Test hook: send these bytes as our payload instead of the real one.
    var payloadOverride: [UInt8]?
    private var remoteStatic: [UInt8] = []
    /// Muxers we list in our payload's extensions (early muxer negotiation).
    private let muxers: [String]
    /// The transport ciphers' backend.
    private let aead: AEADBackend

    public init(
        initiator: Bool, identity: PrivateKey, expectedRemotePeer: PeerID? = nil, muxers: [String] = [],
        aead: AEADBackend = .preferred,
        staticKey: Curve25519.KeyAgreement.PrivateKey = .init(),
        ephemeralKey: Curve25519.KeyAgreement.PrivateKey = .init()
    ) {
        self.isInitiator = initiator
        self.muxers = muxers
        self.aead = aead
        self.identity = identity
        self.expectedRemotePeer = expectedRemotePeer
        self.staticKey = staticKey
        self.ephemeralKey = ephemeralKey
        self.step = initiator ? .initiatorStart : .responderAwaitingMessage1
        symmetric.mixHash([UInt8]())  // empty prologue
    }

    /// The initiator's first message (`-> e`); nothing for the responder.
    public mutating func start(into output: inout ByteBuffer) {
        guard step == .initiatorStart else { return }
        let e = Array(ephemeralKey.publicKey.rawRepresentation)
        var message = ByteBuffer()
        message.writeBytes(e)
        symmetric.mixHash(e)
        // Empty payload, no key yet: plaintext, hashed.
        try? symmetric.encryptAndHash([], into: &message)
        Self.writeFrame(message, into: &output)
        step = .initiatorAwaitingMessage2
    }

    /// Consumes arriving bytes; writes the handshake messages to send into `output`.
    /// Returns the result once the handshake is complete.
    public mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws(NoiseError) -> Result? {
        frames.append(&input)
        while let frame = try frames.next() {
            let message = Array(frame.readableBytesView)
            switch step {
            case .responderAwaitingMessage1:
                try readMessage1(message)
                try writeMessage2(into: &output)
                step = .responderAwaitingMessage3
            case .initiatorAwaitingMessage2:
                let remote = try readMessage2(message)
                try writeMessage3(into: &output)
                step = .done
                let (send, receive) = symmetric.split(backend: aead)
                return finish(remote: remote, send: send, receive: receive)
            case .responderAwaitingMessage3:
                let remote = try readMessage3(message)
                step = .done
                let (receive, send) = symmetric.split(backend: aead)
                return finish(remote: remote, send: send, receive: receive)
            case .initiatorStart:
                throw .unexpectedData
            case .done:
                throw .handshakeFinished
            }
        }
        return nil
    }

    private mutating func finish(
        remote: (PeerID, PublicKey, [String]), send: CipherState, receive: CipherState
    ) -> Result {
        var remainder = frames.takeRemainder()
        if remainder.readableBytes == 0 { remainder = ByteBuffer() }
        return Result(
            remotePeer: remote.0, remotePublicKey: remote.1,
            transport: NoiseTransport(send: send, receive: receive), remainder: remainder, remoteMuxers: remote.2)
    }

    // MARK: Messages

    /// `-> e` (responder side).
    private mutating func readMessage1(_ message: [UInt8]) throws(NoiseError) {
        guard message.count >= 32 else { throw .messageTooShort(expected: 32, got: message.count) }
        remoteEphemeral = Array(message[0..<32])
        symmetric.mixHash(remoteEphemeral)
        // Payload of message 1 is ignored (libp2p sends none), but it is hashed.
        _ = try symmetric.decryptAndHash(Array(message[32...]))
    }

    /// `<- e, ee, s, es` + payload (responder side).
    private mutating func writeMessage2(into output: inout ByteBuffer) throws(NoiseError) {
        var message = ByteBuffer()
        let e = Array(ephemeralKey.publicKey.rawRepresentation)
        message.writeBytes(e)
        symmetric.mixHash(e)
        symmetric.mixKey(try diffieHellman(ephemeralKey, remoteEphemeral))
        try symmetric.encryptAndHash(Array(staticKey.publicKey.rawRepresentation), into: &message)
        symmetric.mixKey(try diffieHellman(staticKey, remoteEphemeral))
        try symmetric.encryptAndHash(try payload(), into: &message)
        Self.writeFrame(message, into: &output)
    }

    /// `<- e, ee, s, es` + payload (initiator side).
    private mutating func readMessage2(_ message: [UInt8]) throws(NoiseError) -> (PeerID, PublicKey, [String]) {
        let minimum = 32 + 48 + 16
        guard message.count >= minimum else { throw .messageTooShort(expected: minimum, got: message.count) }
        remoteEphemeral = Array(message[0..<32])
        symmetric.mixHash(remoteEphemeral)
        symmetric.mixKey(try diffieHellman(ephemeralKey, remoteEphemeral))
        remoteStatic = try symmetric.decryptAndHash(Array(message[32..<80]))
        symmetric.mixKey(try diffieHellman(ephemeralKey, remoteStatic))
        let payload = try symmetric.decryptAndHash(Array(message[80...]))
        return try verify(payload)
    }

    /// `-> s, se` + payload (initiator side).
    private mutating func writeMessage3(into output: inout ByteBuffer) throws(NoiseError) {
        var message = ByteBuffer()
        try symmetric.encryptAndHash(Array(staticKey.publicKey.rawRepresentation), into: &message)
        symmetric.mixKey(try diffieHellman(staticKey, remoteEphemeral))
        try symmetric.encryptAndHash(try payload(), into: &message)
        Self.writeFrame(message, into: &output)
    }

    /// `-> s, se` + payload (responder side).
    private mutating func readMessage3(_ message: [UInt8]) throws(NoiseError) -> (PeerID, PublicKey, [String]) {
        let minimum = 48 + 16
        guard message.count >= minimum else { throw .messageTooShort(expected: minimum, got: message.count) }
        remoteStatic = try symmetric.decryptAndHash(Array(message[0..<48]))
        symmetric.mixKey(try diffieHellman(ephemeralKey, remoteStatic))
        let payload = try symmetric.decryptAndHash(Array(message[48...]))
        return try verify(payload)
    }

    // MARK: Payload

    /// Our payload: identity key and its signature over our static key.
    private func payload() throws(NoiseError) -> [UInt8] {
        if let payloadOverride { return payloadOverride }
        var payload = Noise_Pb_NoiseHandshakePayload()
        payload.identityKey = Data(identity.publicKey.marshal())
        guard let signature = try? identity.sign(Self.signaturePrefix + Array(staticKey.publicKey.rawRepresentation))
        else { throw .invalidIdentityKey("cannot sign with our own key") }
        payload.identitySig = Data(signature)
        if !muxers.isEmpty {
            payload.extensions.streamMuxers = muxers
        }
        guard let bytes: [UInt8] = try? payload.serializedBytes() else { throw .malformedPayload("encoding") }
        return bytes
    }

    /// Checks the remote payload: key, signature over the remote static key, expected peer id.
    private func verify(_ bytes: [UInt8]) throws(NoiseError) -> (PeerID, PublicKey, [String]) {
        guard bytes.count <= Self.maxPayload else { throw .malformedPayload("\(bytes.count) bytes is too large") }
        let payload: Noise_Pb_NoiseHandshakePayload
        do {
            payload = try Noise_Pb_NoiseHandshakePayload(serializedBytes: bytes)
        } catch {
            throw .malformedPayload("\(error)")
        }
        guard payload.hasIdentityKey else { throw .missingIdentityKey }
        let key: PublicKey
        do {
            key = try PublicKey(marshaled: Array(payload.identityKey))
        } catch {
            throw .invalidIdentityKey("\(error)")
        }
        guard key.verify(signature: Array(payload.identitySig), for: Self.signaturePrefix + remoteStatic) else {
            throw .invalidSignature
        }
        let peer = PeerID(publicKey: key)
        if let expected = expectedRemotePeer, expected != peer {
            throw .peerIDMismatch(expected: "\(expected)", got: "\(peer)")
        }
        return (peer, key, payload.hasExtensions ? payload.extensions.streamMuxers : [])
    }

    static func writeFrame(_ message: ByteBuffer, into output: inout ByteBuffer) {
        output.writeInteger(UInt16(message.readableBytes))
        var message = message
        output.writeBuffer(&message)
    }
}

/// Splits a byte stream into 2-byte-length-prefixed frames; holds at most one partial frame.
struct FrameDecoder {
    private var buffer = ByteBuffer()

    mutating func append(_ input: inout ByteBuffer) {
        if buffer.readableBytes == 0 {
            swap(&buffer, &input)
        } else {
            buffer.writeBuffer(&input)
        }
        input.clear()
    }

    /// The next complete frame's body, nil if more bytes are needed.
    mutating func next() throws(NoiseError) -> ByteBuffer? {
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt16.self),
            buffer.readableBytes >= 2 + Int(length)
        else { return nil }
        buffer.moveReaderIndex(forwardBy: 2)
        return buffer.readSlice(length: Int(length))!
    }

    mutating func takeRemainder() -> ByteBuffer {
        defer { buffer = ByteBuffer() }
        return buffer
    }
}

/// Encrypts and decrypts the framed transport messages after the handshake.
public struct NoiseTransport {
    /// Largest ciphertext in one frame (the 2-byte length limit).
    public static let maxFrame = 65535
    /// Largest plaintext in one frame.
    public static let maxPlaintext = maxFrame - CipherState.tagLength

    private var send: CipherState
    private var receive: CipherState
    /// The start of a frame split across reads (length prefix included), held
    /// until the rest arrives. Frames that arrive whole are decrypted in place
    /// of the read buffer, without this copy. Its storage is kept and reused:
    /// a fresh 64 KiB buffer per split frame cost a page fault per page.
    private var partial = ByteBuffer()

    init(send: CipherState, receive: CipherState) {
        self.send = send
        self.receive = receive
    }

    /// Encrypts all of `plaintext` (consumed) into one or more frames appended to `output`.
    public mutating func encrypt(_ plaintext: inout ByteBuffer, into output: inout ByteBuffer) throws(NoiseError) {
        try encrypt(pieces: [plaintext], into: &output)
        plaintext.moveReaderIndex(forwardBy: plaintext.readableBytes)
    }

    /// Encrypts the concatenation of `pieces` into frames appended to `output`.
    /// Each frame is sealed from the pieces where they lie: a payload is never
    /// copied to join its header.
    public mutating func encrypt(pieces: [ByteBuffer], into output: inout ByteBuffer) throws(NoiseError) {
        var remaining = pieces.reduce(0) { $0 + $1.readableBytes }
        let frames = (remaining + Self.maxPlaintext - 1) / Self.maxPlaintext
        output.reserveCapacity(minimumWritableBytes: remaining + frames * (2 + CipherState.tagLength))
        var next = pieces.makeIterator()
        var current: ByteBuffer?
        var frameParts: [ByteBuffer] = []
        while remaining > 0 {
            frameParts.removeAll(keepingCapacity: true)
            var size = 0
            while size < Self.maxPlaintext {
                guard var piece = current ?? next.next() else { break }
                current = nil
                let room = Self.maxPlaintext - size
                if piece.readableBytes > room {
                    frameParts.append(piece.readSlice(length: room)!)
                    current = piece
                    size += room
                } else if piece.readableBytes > 0 {
                    frameParts.append(piece)
                    size += piece.readableBytes
                }
            }
            output.writeInteger(UInt16(size + CipherState.tagLength))
            try send.encrypt(parts: frameParts, ad: [], into: &output)
            remaining -= size
        }
    }

    /// Decrypts every complete frame of the arriving bytes (consumed) into
    /// `plaintexts`; a partial frame waits for the next call.
    public mutating func decrypt(_ input: inout ByteBuffer, into plaintexts: inout [ByteBuffer]) throws(NoiseError) {
        if partial.readableBytes > 0 {
            // Complete the held frame first: take just the bytes it lacks.
            if partial.readableBytes < 2 {
                var piece = input.readSlice(length: min(2 - partial.readableBytes, input.readableBytes))!
                partial.writeBuffer(&piece)
                guard partial.readableBytes == 2 else { return }
            }
            let length = Int(partial.getInteger(at: partial.readerIndex, as: UInt16.self)!)
            let missing = 2 + length - partial.readableBytes
            var piece = input.readSlice(length: min(missing, input.readableBytes))!
            partial.writeBuffer(&piece)
            guard partial.readableBytes == 2 + length else { return }
            // The plaintext goes to a buffer of its own: the frame's storage is unshared again after this.
            var frame = ByteBuffer()
            swap(&frame, &partial)
            try decryptFrame(&frame, into: &plaintexts)
            frame.clear()
            partial = frame
        }
        while input.readableBytes >= 2 {
            let length = Int(input.getInteger(at: input.readerIndex, as: UInt16.self)!)
            guard input.readableBytes >= 2 + length else { break }
            try decryptFrame(&input, into: &plaintexts)
        }
        if input.readableBytes > 0 {
            partial.clear()
            if input.readableBytes >= 2 {
                let length = Int(input.getInteger(at: input.readerIndex, as: UInt16.self)!)
                partial.reserveCapacity(2 + length)
            }
            partial.writeBuffer(&input)
        }
    }

    /// Decrypts the one complete frame (prefix included) at the front of `buffer`.
    private mutating func decryptFrame(_ buffer: inout ByteBuffer, into plaintexts: inout [ByteBuffer]) throws(NoiseError) {
        let length = Int(buffer.readInteger(as: UInt16.self)!)
        guard length >= CipherState.tagLength else { throw .decryptionFailed }
        let sealed = buffer.readSlice(length: length)!
        plaintexts.append(try receive.decrypt(sealed, ad: []))
    }

    /// Test hook: set the send nonce (to test exhaustion).
    mutating func setSendNonce(_ value: UInt64) {
        send.setNonce(value)
    }
}
