import Crypto
import Foundation
import NIOCore

/// Errors of the Noise handshake and transport.
public enum NoiseError: Error, CustomStringConvertible, Sendable, Equatable {
    case frameTooLarge(Int)
    case messageTooShort(expected: Int, got: Int)
    case decryptionFailed
    case nonceExhausted
    case weakPublicKey
    case malformedPayload(String)
    case missingIdentityKey
    case invalidIdentityKey(String)
    case invalidSignature
    case peerIDMismatch(expected: String, got: String)
    case handshakeFinished
    case unexpectedData

    public var description: String {
        switch self {
        case .frameTooLarge(let n): return "noise frame of \(n) bytes exceeds 65535"
        case .messageTooShort(let expected, let got): return "handshake message of \(got) bytes, need at least \(expected)"
        case .decryptionFailed: return "decryption failed (bad key or tampered data)"
        case .nonceExhausted: return "nonce exhausted: the session must be rekeyed or closed"
        case .weakPublicKey: return "remote X25519 key is of low order (all-zero shared secret)"
        case .malformedPayload(let why): return "malformed handshake payload: \(why)"
        case .missingIdentityKey: return "handshake payload has no identity key"
        case .invalidIdentityKey(let why): return "invalid identity key: \(why)"
        case .invalidSignature: return "identity signature over the static key does not verify"
        case .peerIDMismatch(let expected, let got): return "expected peer \(expected) but the remote is \(got)"
        case .handshakeFinished: return "handshake already finished"
        case .unexpectedData: return "data before the handshake's turn"
        }
    }
}

/// Noise CipherState with ChaChaPoly: key, 64-bit counter nonce.
struct CipherState {
    static let tagLength = 16
    static let nonceLength = 12
    private let key: SymmetricKey
    private(set) var nonce: UInt64 = 0

    init(key: SymmetricKey) {
        self.key = key
    }

    /// Test hook: jump the counter (to test exhaustion).
    mutating func setNonce(_ value: UInt64) {
        nonce = value
    }

    private func nonceValue() throws(NoiseError) -> ChaChaPoly.Nonce {
        let bytes = try nonceBytes()
        return try! ChaChaPoly.Nonce(data: bytes)
    }

    /// The 12-byte ChaChaPoly nonce: 4 zero bytes, then the counter little-endian.
    private func nonceBytes() throws(NoiseError) -> [UInt8] {
        // 2^64-1 is reserved by the Noise spec; reaching it means we must stop.
        guard nonce < UInt64.max else { throw .nonceExhausted }
        var bytes = [UInt8](repeating: 0, count: 12)
        withUnsafeBytes(of: nonce.littleEndian) { raw in
            for index in 0..<8 { bytes[4 + index] = raw[index] }
        }
        return bytes
    }

    /// ciphertext || tag of `plaintext`, appended to `output`.
    mutating func encrypt<P: DataProtocol>(_ plaintext: P, ad: [UInt8], into output: inout ByteBuffer) throws(NoiseError) {
        let nonceValue = try nonceValue()
        guard let box = try? ChaChaPoly.seal(plaintext, using: key, nonce: nonceValue, authenticating: ad) else {
            throw .decryptionFailed
        }
        output.writeBytes(box.combined.dropFirst(Self.nonceLength))
        nonce += 1
    }

    /// The plaintext of `ciphertext || tag`.
    mutating func decrypt<C: DataProtocol>(_ ciphertext: C, ad: [UInt8]) throws(NoiseError) -> Data {
        guard ciphertext.count >= Self.tagLength else { throw .decryptionFailed }
        var sealed = Data(capacity: Self.nonceLength + ciphertext.count)
        sealed.append(contentsOf: [UInt8](repeating: 0, count: Self.nonceLength))
        sealed.append(contentsOf: ciphertext)
        return try open(&sealed, ad: ad)
    }

    /// The plaintext of `sealed`: 12 bytes of room for the nonce (overwritten
    /// here), then ciphertext || tag. Taking the frame in this form lets the
    /// caller assemble it with a single copy.
    mutating func open(_ sealed: inout Data, ad: [UInt8]) throws(NoiseError) -> Data {
        guard sealed.count >= Self.nonceLength + Self.tagLength else { throw .decryptionFailed }
        let start = sealed.startIndex
        sealed.replaceSubrange(start..<start + Self.nonceLength, with: try nonceBytes())
        guard let box = try? ChaChaPoly.SealedBox(combined: sealed),
            let plaintext = try? ChaChaPoly.open(box, using: key, authenticating: ad)
        else { throw .decryptionFailed }
        nonce += 1
        return plaintext
    }
}

/// Noise SymmetricState with SHA-256.
struct SymmetricState {
    private(set) var chainingKey: [UInt8]
    private(set) var handshakeHash: [UInt8]
    private var cipher: CipherState?

    init(protocolName: String) {
        let name = Array(protocolName.utf8)
        let initial = name.count <= 32 ? name + [UInt8](repeating: 0, count: 32 - name.count) : Array(SHA256.hash(data: name))
        chainingKey = initial
        handshakeHash = initial
    }

    mutating func mixHash(_ data: some DataProtocol) {
        var hasher = SHA256()
        hasher.update(data: handshakeHash)
        hasher.update(data: Array(data))
        handshakeHash = Array(hasher.finalize())
    }

    mutating func mixKey(_ inputKeyMaterial: [UInt8]) {
        let (ck, key) = Self.hkdf(chainingKey: chainingKey, inputKeyMaterial: inputKeyMaterial)
        chainingKey = ck
        cipher = CipherState(key: SymmetricKey(data: key))
    }

    mutating func encryptAndHash(_ plaintext: [UInt8], into output: inout ByteBuffer) throws(NoiseError) {
        guard cipher != nil else {
            output.writeBytes(plaintext)
            mixHash(plaintext)
            return
        }
        let start = output.writerIndex
        try cipher!.encrypt(plaintext, ad: handshakeHash, into: &output)
        mixHash(output.getBytes(at: start, length: output.writerIndex - start)!)
    }

    mutating func decryptAndHash(_ data: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard cipher != nil else {
            mixHash(data)
            return data
        }
        let plaintext = try cipher!.decrypt(data, ad: handshakeHash)
        mixHash(data)
        return Array(plaintext)
    }

    /// The two transport cipher states (initiator-to-responder, responder-to-initiator).
    func split() -> (CipherState, CipherState) {
        let (k1, k2) = Self.hkdf(chainingKey: chainingKey, inputKeyMaterial: [])
        return (CipherState(key: SymmetricKey(data: k1)), CipherState(key: SymmetricKey(data: k2)))
    }

    /// Noise's HKDF with two outputs, on HMAC-SHA256.
    static func hkdf(chainingKey: [UInt8], inputKeyMaterial: [UInt8]) -> ([UInt8], [UInt8]) {
        let tempKey = SymmetricKey(data: HMAC<SHA256>.authenticationCode(for: inputKeyMaterial, using: SymmetricKey(data: chainingKey)))
        let output1 = Array(HMAC<SHA256>.authenticationCode(for: [0x01], using: tempKey))
        let output2 = Array(HMAC<SHA256>.authenticationCode(for: output1 + [0x02], using: tempKey))
        return (output1, output2)
    }
}

/// X25519 agreement that refuses low-order remote keys.
func diffieHellman(_ local: Curve25519.KeyAgreement.PrivateKey, _ remote: [UInt8]) throws(NoiseError) -> [UInt8] {
    guard let remoteKey = try? Curve25519.KeyAgreement.PublicKey(rawRepresentation: remote),
        let secret = try? local.sharedSecretFromKeyAgreement(with: remoteKey)
    else { throw .weakPublicKey }
    let bytes = secret.withUnsafeBytes { Array($0) }
    // An all-zero result means the remote key was of low order (RFC 7748 §6.1).
    guard bytes.contains(where: { $0 != 0 }) else { throw .weakPublicKey }
    return bytes
}
