import CNIOBoringSSL
import Crypto

#if canImport(FoundationEssentials)
import FoundationEssentials  // DataProtocol, which swift-crypto's AEADs take
#else
import Foundation
#endif

/// The TLS 1.3 cipher suites QUIC can run (RFC 9001 §5.3); each fixes the
/// AEAD, the header protection cipher and the hash of HKDF.
public enum CipherSuite: UInt16, Sendable, CaseIterable {
    case aes128GCMSHA256 = 0x1301
    case aes256GCMSHA384 = 0x1302
    case chacha20Poly1305SHA256 = 0x1303

    var keyLength: Int { self == .aes128GCMSHA256 ? 16 : 32 }
    var hashLength: Int { self == .aes256GCMSHA384 ? 48 : 32 }
}

/// Why a packet's protection could not be removed (or applied).
public enum QUICProtectionError: Error, Equatable, Sendable {
    /// Fewer than 4 + 16 bytes after the packet number offset: no sample (§5.4.2).
    case packetTooShortForSample(length: Int)
    /// The packet has no packet number (Retry, Version Negotiation).
    case noPacketNumber
    /// The AEAD tag did not verify: wrong keys, or forged or damaged bytes. The packet is dropped.
    case authenticationFailed
    /// Reserved header bits were not 0 after protection was removed (§17.2: PROTOCOL_VIOLATION).
    case reservedBitsSet
    /// A key of the wrong length for its suite came from TLS.
    case invalidSecret(length: Int)
}

/// HKDF as TLS 1.3 uses it (RFC 8446 §7.1), which QUIC's key schedule reuses.
public enum TLSKeySchedule {
    /// HKDF-Expand-Label(secret, label, context, length), "tls13 " prefixed to the label.
    public static func expandLabel(secret: [UInt8], label: String, context: [UInt8] = [], length: Int, suite: CipherSuite) -> [UInt8] {
        let fullLabel = Array("tls13 \(label)".utf8)
        var info: [UInt8] = [UInt8(length >> 8), UInt8(length & 0xFF), UInt8(fullLabel.count)]
        info += fullLabel
        info.append(UInt8(context.count))
        info += context
        let key: SymmetricKey
        switch suite {
        case .aes256GCMSHA384:
            key = HKDF<SHA384>.expand(pseudoRandomKey: secret, info: info, outputByteCount: length)
        case .aes128GCMSHA256, .chacha20Poly1305SHA256:
            key = HKDF<SHA256>.expand(pseudoRandomKey: secret, info: info, outputByteCount: length)
        }
        return key.withUnsafeBytes { Array($0) }
    }

    /// The next generation's secret for a key update (§6.1, "quic ku").
    public static func updatedSecret(_ secret: [UInt8], suite: CipherSuite) -> [UInt8] {
        expandLabel(secret: secret, label: "quic ku", length: suite.hashLength, suite: suite)
    }
}

/// The Initial keys, which anyone can derive from the client's first
/// destination connection ID (RFC 9001 §5.2): they stop tampering, not reading.
public enum InitialSecrets {
    /// initial_salt of QUIC v1.
    public static let saltV1: [UInt8] = [
        0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17,
        0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad, 0xcc, 0xbb, 0x7f, 0x0a,
    ]

    public static func secrets(destination: ConnectionID) -> (client: [UInt8], server: [UInt8]) {
        let initial = HKDF<SHA256>.extract(inputKeyMaterial: SymmetricKey(data: destination.bytes), salt: saltV1)
        let prk = Array(initial)
        return (
            TLSKeySchedule.expandLabel(secret: prk, label: "client in", length: 32, suite: .aes128GCMSHA256),
            TLSKeySchedule.expandLabel(secret: prk, label: "server in", length: 32, suite: .aes128GCMSHA256)
        )
    }

    public static func keys(destination: ConnectionID) -> (client: PacketKeys, server: PacketKeys) {
        let (client, server) = secrets(destination: destination)
        // Both secrets are 32 bytes, the length AES-128-GCM-SHA256 wants.
        return (try! PacketKeys(secret: client, suite: .aes128GCMSHA256), try! PacketKeys(secret: server, suite: .aes128GCMSHA256))
    }
}

/// The keys of one direction at one encryption level: AEAD key and IV for
/// the payload, and the header protection key (RFC 9001 §5.1).
public struct PacketKeys: Sendable {
    public let suite: CipherSuite
    public let secret: [UInt8]
    public let key: [UInt8]
    public let iv: [UInt8]
    public let headerProtectionKey: [UInt8]
    /// The AES key schedule of the header protection key, expanded once
    /// (a C struct of integers, so a plain value).
    private let headerAESKey: AES_KEY?
    /// The packet AEAD with `key`, set up once.
    private let aead: PacketAEAD

    public init(secret: [UInt8], suite: CipherSuite) throws(QUICProtectionError) {
        guard secret.count == suite.hashLength else { throw .invalidSecret(length: secret.count) }
        self.suite = suite
        self.secret = secret
        key = TLSKeySchedule.expandLabel(secret: secret, label: "quic key", length: suite.keyLength, suite: suite)
        iv = TLSKeySchedule.expandLabel(secret: secret, label: "quic iv", length: 12, suite: suite)
        headerProtectionKey = TLSKeySchedule.expandLabel(secret: secret, label: "quic hp", length: suite.keyLength, suite: suite)
        aead = PacketAEAD(suite: suite, key: key)
        if suite == .chacha20Poly1305SHA256 {
            headerAESKey = nil
        } else {
            var schedule = AES_KEY()
            let status = headerProtectionKey.withUnsafeBufferPointer {
                AES_set_encrypt_key($0.baseAddress, UInt32($0.count * 8), &schedule)
            }
            // Only fails for key lengths other than 128/192/256 bits, which the suite rules out.
            precondition(status == 0, "AES_set_encrypt_key failed for a \(headerProtectionKey.count)-byte key")
            headerAESKey = schedule
        }
    }

    /// The keys after a key update (§6): a new secret, the same header protection key.
    public func updated() -> PacketKeys {
        // The updated secret has the suite's hash length by construction.
        try! PacketKeys(updating: self)
    }

    private init(updating previous: PacketKeys) throws(QUICProtectionError) {
        let next = TLSKeySchedule.updatedSecret(previous.secret, suite: previous.suite)
        suite = previous.suite
        secret = next
        key = TLSKeySchedule.expandLabel(secret: next, label: "quic key", length: suite.keyLength, suite: suite)
        iv = TLSKeySchedule.expandLabel(secret: next, label: "quic iv", length: 12, suite: suite)
        aead = PacketAEAD(suite: suite, key: key)
        headerProtectionKey = previous.headerProtectionKey
        headerAESKey = previous.headerAESKey
    }

    /// The nonce: the IV with the packet number XORed into its low bytes (§5.3).
    public func nonce(packetNumber: UInt64) -> [UInt8] {
        var nonce = iv
        for index in 0..<8 {
            nonce[nonce.count - 1 - index] ^= UInt8(truncatingIfNeeded: packetNumber >> (8 * UInt64(index)))
        }
        return nonce
    }

    /// Ciphertext followed by the 16-byte tag.
    public func seal(_ plaintext: [UInt8], header: [UInt8], packetNumber: UInt64) -> [UInt8] {
        var out: [UInt8] = []
        seal(plaintext, header: header, packetNumber: packetNumber, appendingTo: &out)
        return out
    }

    /// Appends the ciphertext and tag to `out` (the packet, after its header).
    func seal(_ plaintext: [UInt8], header: [UInt8], packetNumber: UInt64, appendingTo out: inout [UInt8]) {
        aead.seal(plaintext, nonce: nonce(packetNumber: packetNumber), header: header, appendingTo: &out)
    }

    public func open(_ sealed: ArraySlice<UInt8>, header: ArraySlice<UInt8>, packetNumber: UInt64) throws(QUICProtectionError) -> [UInt8] {
        guard sealed.count >= 16, let plaintext = aead.open(sealed, nonce: nonce(packetNumber: packetNumber), header: header) else {
            throw .authenticationFailed
        }
        return plaintext
    }

    /// The 5-byte header protection mask for a 16-byte sample (§5.4.3, §5.4.4).
    public func headerProtectionMask(sample: ArraySlice<UInt8>) -> [UInt8] {
        precondition(sample.count == 16, "header protection samples are 16 bytes")
        let input = Array(sample)
        if var schedule = headerAESKey {
            // AES-ECB of one block: the first 5 bytes are the mask.
            var block = [UInt8](repeating: 0, count: 16)
            AES_encrypt(input, &block, &schedule)
            return Array(block.prefix(5))
        }
        // ChaCha20 with the sample's first 4 bytes (little-endian) as the block
        // counter and the other 12 as the nonce, run over five zero bytes.
        let counter = UInt32(input[0]) | UInt32(input[1]) << 8 | UInt32(input[2]) << 16 | UInt32(input[3]) << 24
        let nonce = Array(input[4..<16])
        let zeros = [UInt8](repeating: 0, count: 5)
        var mask = [UInt8](repeating: 0, count: 5)
        CRYPTO_chacha_20(&mask, zeros, 5, headerProtectionKey, nonce, counter)
        return mask
    }
}

/// A packet whose protection was removed.
public struct OpenedPacket: Equatable, Sendable {
    public var header: PacketHeader
    public var packetNumber: UInt64
    /// The 1-RTT key phase bit (false for long headers).
    public var keyPhase: Bool
    /// The decrypted frames.
    public var payload: [UInt8]
}

/// Applying and removing packet protection: AEAD over the payload with the
/// header as associated data, then the header protection mask over the
/// first byte's low bits and the packet number (RFC 9001 §5.3-§5.4).
public enum PacketProtection {
    /// The AEAD tag's length, for all three suites.
    public static let tagLength = 16
    /// The header protection sample starts 4 bytes after the packet number
    /// offset whatever the packet number length, so payloads are padded to reach it.
    static let sampleOffset = 4
    static let sampleLength = 16

    /// A protected Initial, 0-RTT or Handshake packet. `payload` is the
    /// encoded frames; it is padded with PADDING when too short to sample.
    /// The packet number length follows from `largestAcked` unless given (1-4).
    public static func seal(
        _ header: LongHeader, packetNumber: UInt64, largestAcked: UInt64?, payload: [UInt8], keys: PacketKeys,
        packetNumberLength: Int? = nil
    ) -> [UInt8] {
        let numberLength = packetNumberLength ?? PacketNumber.encodedLength(packetNumber, largestAcked: largestAcked)
        let plaintext = padded(payload, packetNumberLength: numberLength)
        var packet: [UInt8] = []
        header.encode(packetNumber: packetNumber, packetNumberLength: numberLength, payloadLength: plaintext.count + tagLength, into: &packet)
        return protect(headerBytes: packet, packetNumberLength: numberLength, packetNumber: packetNumber, plaintext: plaintext, keys: keys)
    }

    /// A protected 1-RTT packet.
    public static func seal(
        _ header: ShortHeader, packetNumber: UInt64, largestAcked: UInt64?, keyPhase: Bool, payload: [UInt8], keys: PacketKeys,
        packetNumberLength: Int? = nil
    ) -> [UInt8] {
        let numberLength = packetNumberLength ?? PacketNumber.encodedLength(packetNumber, largestAcked: largestAcked)
        let plaintext = padded(payload, packetNumberLength: numberLength)
        var packet: [UInt8] = []
        header.encode(packetNumber: packetNumber, packetNumberLength: numberLength, keyPhase: keyPhase, into: &packet)
        return protect(headerBytes: packet, packetNumberLength: numberLength, packetNumber: packetNumber, plaintext: plaintext, keys: keys)
    }

    static func padded(_ payload: [UInt8], packetNumberLength: Int) -> [UInt8] {
        let minimum = sampleOffset - packetNumberLength
        return payload.count >= minimum ? payload : payload + [UInt8](repeating: 0, count: minimum - payload.count)
    }

    /// Seals `plaintext` after `headerBytes` (which end with the packet
    /// number) and masks the header.
    static func protect(headerBytes: [UInt8], packetNumberLength: Int, packetNumber: UInt64, plaintext: [UInt8], keys: PacketKeys) -> [UInt8] {
        var packet = headerBytes
        packet.reserveCapacity(headerBytes.count + plaintext.count + PacketProtection.tagLength)
        keys.seal(plaintext, header: headerBytes, packetNumber: packetNumber, appendingTo: &packet)
        let numberOffset = headerBytes.count - packetNumberLength
        let sampleStart = numberOffset + sampleOffset
        let mask = keys.headerProtectionMask(sample: packet[sampleStart..<(sampleStart + sampleLength)])
        packet[0] ^= mask[0] & (packet[0] & 0x80 != 0 ? 0x0F : 0x1F)
        for index in 0..<packetNumberLength {
            packet[numberOffset + index] ^= mask[1 + index]
        }
        return packet
    }

    /// Removes header protection, recovers the packet number against
    /// `largestReceived` (the largest in the packet's space) and decrypts.
    public static func open(_ packet: ProtectedPacket, keys: PacketKeys, largestReceived: UInt64?) throws(QUICProtectionError) -> OpenedPacket {
        guard let numberOffset = packet.packetNumberOffset else { throw .noPacketNumber }
        var bytes = Array(packet.bytes)
        let sampleStart = numberOffset + sampleOffset
        guard bytes.count >= sampleStart + sampleLength else { throw .packetTooShortForSample(length: bytes.count) }
        let mask = keys.headerProtectionMask(sample: bytes[sampleStart..<(sampleStart + sampleLength)])
        let isLong = bytes[0] & 0x80 != 0
        bytes[0] ^= mask[0] & (isLong ? 0x0F : 0x1F)
        let numberLength = Int(bytes[0] & 0x03) + 1
        var truncated: UInt64 = 0
        for index in 0..<numberLength {
            bytes[numberOffset + index] ^= mask[1 + index]
            truncated = truncated << 8 | UInt64(bytes[numberOffset + index])
        }
        let packetNumber = PacketNumber.decode(truncated: truncated, length: numberLength, largest: largestReceived)
        let headerEnd = numberOffset + numberLength
        let payload = try keys.open(bytes[headerEnd...], header: bytes[..<headerEnd], packetNumber: packetNumber)
        // Checked only after the AEAD verified, so that the check reveals nothing to an attacker (§17.2, §17.3.1).
        let reserved: UInt8 = isLong ? 0x0C : 0x18
        guard bytes[0] & reserved == 0 else { throw .reservedBitsSet }
        return OpenedPacket(header: packet.header, packetNumber: packetNumber, keyPhase: !isLong && bytes[0] & 0x04 != 0, payload: payload)
    }
}

/// The Retry Integrity Tag (RFC 9001 §5.8): AES-128-GCM with fixed key and
/// nonce over the Retry packet prefixed by the original destination ID.
public enum RetryIntegrity {
    public static let tagLength = RetryPacket.tagLength
    static let keyV1: [UInt8] = [
        0xbe, 0x0c, 0x69, 0x0b, 0x9f, 0x66, 0x57, 0x5a, 0x1d, 0x76, 0x6b, 0x54, 0xe3, 0x68, 0xc8, 0x4e,
    ]
    static let nonceV1: [UInt8] = [0x46, 0x15, 0x99, 0xd3, 0x5d, 0x63, 0x2b, 0xf2, 0x23, 0x98, 0x25, 0xbb]

    public static func tag(retryWithoutTag: [UInt8], originalDestination: ConnectionID) -> [UInt8] {
        let pseudoPacket = [UInt8(originalDestination.count)] + originalDestination.bytes + retryWithoutTag
        // Fixed 16-byte key and 12-byte nonce: sealing cannot fail.
        let box = try! AES.GCM.seal([UInt8](), using: SymmetricKey(data: keyV1), nonce: AES.GCM.Nonce(data: nonceV1), authenticating: pseudoPacket)
        return Array(box.tag)
    }

    /// A Retry packet with its tag computed.
    public static func seal(_ packet: RetryPacket, originalDestination: ConnectionID, unusedBits: UInt8 = 0) -> [UInt8] {
        let body = packet.encodedWithoutTag(unusedBits: unusedBits)
        return body + tag(retryWithoutTag: body, originalDestination: originalDestination)
    }

    /// Whether a received Retry (its bytes as parsed) carries a valid tag.
    public static func isValid(_ packet: ProtectedPacket, originalDestination: ConnectionID) -> Bool {
        guard case .retry = packet.header, packet.bytes.count >= tagLength else { return false }
        let expected = tag(retryWithoutTag: Array(packet.bytes.dropLast(tagLength)), originalDestination: originalDestination)
        // Constant-time comparison is not needed: the key is public; the tag only detects corruption and off-path spoofing.
        return expected == Array(packet.bytes.suffix(tagLength))
    }
}

/// A BoringSSL AEAD context for one packet key, set up once: swift-crypto's
/// one-shot API expanded the key and copied every packet into and out of
/// `Data` on each call, a third of QUIC's sending and receiving time.
final class PacketAEAD: @unchecked Sendable {
    // @unchecked Sendable: `context` is set in init and freed in deinit only;
    // BoringSSL's seal and open take it as const, so concurrent use is safe.
    private let context: UnsafeMutablePointer<EVP_AEAD_CTX>
    static let tagLength = 16

    init(suite: CipherSuite, key: [UInt8]) {
        let algorithm = switch suite {
        case .aes128GCMSHA256: EVP_aead_aes_128_gcm()
        case .aes256GCMSHA384: EVP_aead_aes_256_gcm()
        case .chacha20Poly1305SHA256: EVP_aead_chacha20_poly1305()
        }
        let made = key.withUnsafeBufferPointer { EVP_AEAD_CTX_new(algorithm, $0.baseAddress, $0.count, Self.tagLength) }
        // Fails only for a key of the wrong length (the suite fixes it) or no memory.
        guard let made else { fatalError("EVP_AEAD_CTX_new failed for a \(key.count)-byte \(suite) key") }
        context = made
    }

    deinit { EVP_AEAD_CTX_free(context) }

    func seal(_ plaintext: [UInt8], nonce: [UInt8], header: [UInt8], appendingTo out: inout [UInt8]) {
        let start = out.count
        let length = plaintext.count + Self.tagLength
        out.append(contentsOf: repeatElement(0, count: length))
        var written = 0
        let status = out.withUnsafeMutableBufferPointer { buffer in
            plaintext.withUnsafeBufferPointer { input in
                header.withUnsafeBufferPointer { ad in
                    nonce.withUnsafeBufferPointer { nonce in
                        EVP_AEAD_CTX_seal(
                            context, buffer.baseAddress! + start, &written, length, nonce.baseAddress, nonce.count,
                            input.baseAddress, input.count, ad.baseAddress, ad.count)
                    }
                }
            }
        }
        // 12-byte nonces and room for the tag by construction: sealing cannot fail.
        precondition(status == 1 && written == length, "AEAD seal failed")
    }

    /// The plaintext, or nil when the tag does not authenticate.
    func open(_ sealed: ArraySlice<UInt8>, nonce: [UInt8], header: ArraySlice<UInt8>) -> [UInt8]? {
        guard sealed.count >= Self.tagLength else { return nil }
        var plaintext = [UInt8](repeating: 0, count: sealed.count - Self.tagLength)
        var written = 0
        let status = plaintext.withUnsafeMutableBufferPointer { out in
            sealed.withUnsafeBufferPointer { input in
                header.withUnsafeBufferPointer { ad in
                    nonce.withUnsafeBufferPointer { nonce in
                        EVP_AEAD_CTX_open(
                            context, out.baseAddress, &written, out.count, nonce.baseAddress, nonce.count,
                            input.baseAddress, input.count, ad.baseAddress, ad.count)
                    }
                }
            }
        }
        return status == 1 && written == plaintext.count ? plaintext : nil
    }
}
