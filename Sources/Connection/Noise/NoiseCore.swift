import CLibcryptoAEAD
import Crypto
import Foundation
import NIOCore

/// Errors of the Noise handshake and transport.
public enum NoiseError: Error, CustomStringConvertible, Sendable, Equatable {
    case frameTooLarge(Int)
    case messageTooShort(expected: Int, got: Int)
    case decryptionFailed
    /// Sealing a message failed (OpenSSL could not allocate): nothing was sent.
    case encryptionFailed
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
        case .encryptionFailed: return "encryption failed (the cipher could not seal the message)"
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

/// Where ChaCha20-Poly1305 comes from.
public enum AEADBackend: String, Sendable, CaseIterable {
    /// The system's libcrypto (OpenSSL), loaded at run time: seals and opens
    /// on the caller's buffers.
    case libcrypto
    /// swift-crypto's `ChaChaPoly`: always there, slower (its API copies each
    /// message into and out of `Data`; about a third less throughput).
    case swiftCrypto = "swift-crypto"

    /// Whether the system's libcrypto could be loaded.
    public static var libcryptoAvailable: Bool { p2p_aead_available() == 1 }

    /// libcrypto when the system has it, else swift-crypto;
    /// `P2PCHAT_AEAD=swift-crypto` forces the latter.
    public static let preferred: AEADBackend = {
        if ProcessInfo.processInfo.environment["P2PCHAT_AEAD"] == AEADBackend.swiftCrypto.rawValue { return .swiftCrypto }
        return libcryptoAvailable ? .libcrypto : .swiftCrypto
    }()
}

/// A libcrypto cipher context, reused for every message of one CipherState.
///
/// `@unchecked Sendable` is not claimed: a context belongs to one CipherState,
/// which belongs to one connection, driven by one event loop.
final class LibcryptoContext {
    let pointer: UnsafeMutableRawPointer

    init?() {
        guard let context = p2p_aead_context_new() else { return nil }
        pointer = context
    }

    deinit {
        p2p_aead_context_free(pointer)
    }
}

/// Noise CipherState with ChaChaPoly: key, 64-bit counter nonce.
///
/// With libcrypto the cipher works on the caller's buffers: ciphertext is
/// written straight into the output buffer and plaintext into a fresh one,
/// with no copy on either side.
struct CipherState {
    static let tagLength = 16
    static let nonceLength = 12

    private enum Engine {
        case libcrypto(LibcryptoContext)
        case swiftCrypto(SymmetricKey)
    }

    private let key: [UInt8]
    private let engine: Engine
    private(set) var nonce: UInt64 = 0

    init(key: [UInt8], backend: AEADBackend = .preferred) {
        precondition(key.count == 32, "ChaChaPoly keys are 32 bytes")
        self.key = key
        if backend == .libcrypto, let context = LibcryptoContext() {
            engine = .libcrypto(context)
        } else {
            engine = .swiftCrypto(SymmetricKey(data: key))
        }
    }

    /// The backend in use (libcrypto asked for but missing gives swift-crypto).
    var backend: AEADBackend {
        if case .libcrypto = engine { return .libcrypto }
        return .swiftCrypto
    }

    /// Test hook: jump the counter (to test exhaustion).
    mutating func setNonce(_ value: UInt64) {
        nonce = value
    }

    /// The 12-byte ChaChaPoly nonce: 4 zero bytes, then the counter little-endian.
    private func nonceBytes() throws(NoiseError) -> [UInt8] {
        // 2^64-1 is reserved by the Noise spec; reaching it means we must stop.
        guard nonce < UInt64.max else { throw .nonceExhausted }
        var bytes = [UInt8](repeating: 0, count: Self.nonceLength)
        withUnsafeBytes(of: nonce.littleEndian) { raw in
            for index in 0..<8 { bytes[4 + index] = raw[index] }
        }
        return bytes
    }

    /// ciphertext || tag of `plaintext`, appended to `output`.
    mutating func encrypt(_ plaintext: ByteBuffer, ad: [UInt8], into output: inout ByteBuffer) throws(NoiseError) {
        try encrypt(parts: CollectionOfOne(plaintext), ad: ad, into: &output)
    }

    /// ciphertext || tag of the concatenation of `parts`, appended to `output`;
    /// with libcrypto the parts are read where they lie, never gathered into one buffer.
    mutating func encrypt(parts: some Collection<ByteBuffer>, ad: [UInt8], into output: inout ByteBuffer) throws(NoiseError) {
        let nonceBytes = try nonceBytes()
        let sealed: Bool
        switch engine {
        case .libcrypto(let context):
            sealed = Self.seal(parts: parts, ad: ad, key: key, nonce: nonceBytes, context: context.pointer, into: &output)
        case .swiftCrypto(let symmetricKey):
            sealed = Self.seal(parts: parts, ad: ad, key: symmetricKey, nonce: nonceBytes, into: &output)
        }
        // Sealing fails only if the library does (out of memory): nothing is written then.
        guard sealed else { throw .encryptionFailed }
        nonce += 1
    }

    private static func seal(
        parts: some Collection<ByteBuffer>, ad: [UInt8], key: [UInt8], nonce nonceBytes: [UInt8],
        context: UnsafeMutableRawPointer, into output: inout ByteBuffer
    ) -> Bool {
        let length = parts.reduce(0) { $0 + $1.readableBytes }
        var sealed = false
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: length + Self.tagLength) { out in
            let out = out.baseAddress!.assumingMemoryBound(to: UInt8.self)
            sealed = key.withUnsafeBufferPointer { key in
                ad.withUnsafeBufferPointer { ad in
                    p2p_aead_seal_init(context, key.baseAddress, nonceBytes, ad.baseAddress, ad.count) == 1
                }
            }
            var offset = 0
            for part in parts where sealed {
                sealed = part.withUnsafeReadableBytes { input in
                    p2p_aead_seal_update(context, input.baseAddress?.assumingMemoryBound(to: UInt8.self), input.count, out + offset) == 1
                }
                offset += part.readableBytes
            }
            sealed = sealed && p2p_aead_seal_final(context, out + length) == 1
            return sealed ? length + Self.tagLength : 0
        }
        return sealed
    }

    private static func seal(
        parts: some Collection<ByteBuffer>, ad: [UInt8], key: SymmetricKey, nonce nonceBytes: [UInt8],
        into output: inout ByteBuffer
    ) -> Bool {
        let message: ByteBuffer
        if parts.count == 1, let only = parts.first {
            message = only
        } else {
            var gathered = ByteBuffer()
            gathered.reserveCapacity(parts.reduce(0) { $0 + $1.readableBytes })
            for var part in parts { gathered.writeBuffer(&part) }
            message = gathered
        }
        guard let nonce = try? ChaChaPoly.Nonce(data: nonceBytes),
            let box = try? ChaChaPoly.seal(message.readableBytesView, using: key, nonce: nonce, authenticating: ad)
        else { return false }
        output.writeBytes(box.ciphertext)
        output.writeBytes(box.tag)
        return true
    }

    /// The plaintext of `ciphertext || tag`.
    mutating func decrypt(_ sealed: ByteBuffer, ad: [UInt8]) throws(NoiseError) -> ByteBuffer {
        guard sealed.readableBytes >= Self.tagLength else { throw .decryptionFailed }
        let nonceBytes = try nonceBytes()
        let plaintext: ByteBuffer?
        switch engine {
        case .libcrypto(let context):
            plaintext = Self.open(sealed, ad: ad, key: key, nonce: nonceBytes, context: context.pointer)
        case .swiftCrypto(let symmetricKey):
            plaintext = Self.open(sealed, ad: ad, key: symmetricKey, nonce: nonceBytes)
        }
        guard let plaintext else { throw .decryptionFailed }
        nonce += 1
        return plaintext
    }

    private static func open(
        _ sealed: ByteBuffer, ad: [UInt8], key: [UInt8], nonce nonceBytes: [UInt8], context: UnsafeMutableRawPointer
    ) -> ByteBuffer? {
        let length = sealed.readableBytes - Self.tagLength
        var plaintext = ByteBuffer()
        plaintext.reserveCapacity(length)
        var opened = false
        plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: max(length, 1)) { out in
            sealed.withUnsafeReadableBytes { input in
                key.withUnsafeBufferPointer { key in
                    ad.withUnsafeBufferPointer { ad in
                        opened =
                            p2p_aead_open(
                                context, key.baseAddress, nonceBytes, ad.baseAddress, ad.count,
                                input.baseAddress!.assumingMemoryBound(to: UInt8.self), length,
                                out.baseAddress!.assumingMemoryBound(to: UInt8.self)) == 1
                    }
                }
            }
            return opened ? length : 0
        }
        return opened ? plaintext : nil
    }

    private static func open(_ sealed: ByteBuffer, ad: [UInt8], key: SymmetricKey, nonce nonceBytes: [UInt8]) -> ByteBuffer? {
        let length = sealed.readableBytes - Self.tagLength
        let view = sealed.readableBytesView
        guard let nonce = try? ChaChaPoly.Nonce(data: nonceBytes),
            let box = try? ChaChaPoly.SealedBox(nonce: nonce, ciphertext: view.prefix(length), tag: view.suffix(Self.tagLength)),
            let opened = try? ChaChaPoly.open(box, using: key, authenticating: ad)
        else { return nil }
        return ByteBuffer(bytes: opened)
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
        cipher = CipherState(key: key)
    }

    mutating func encryptAndHash(_ plaintext: [UInt8], into output: inout ByteBuffer) throws(NoiseError) {
        guard cipher != nil else {
            output.writeBytes(plaintext)
            mixHash(plaintext)
            return
        }
        let start = output.writerIndex
        try cipher!.encrypt(ByteBuffer(bytes: plaintext), ad: handshakeHash, into: &output)
        mixHash(output.getBytes(at: start, length: output.writerIndex - start)!)
    }

    mutating func decryptAndHash(_ data: [UInt8]) throws(NoiseError) -> [UInt8] {
        guard cipher != nil else {
            mixHash(data)
            return data
        }
        let plaintext = try cipher!.decrypt(ByteBuffer(bytes: data), ad: handshakeHash)
        mixHash(data)
        return Array(plaintext.readableBytesView)
    }

    /// The two transport cipher states (initiator-to-responder, responder-to-initiator).
    func split(backend: AEADBackend = .preferred) -> (CipherState, CipherState) {
        let (k1, k2) = Self.hkdf(chainingKey: chainingKey, inputKeyMaterial: [])
        return (CipherState(key: k1, backend: backend), CipherState(key: k2, backend: backend))
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
