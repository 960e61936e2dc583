import Crypto
import Foundation
import Multiformats
import SwiftProtobuf
import _CryptoExtras

/// The key algorithms of libp2p (numbers as in the key protobuf).
public enum KeyType: Int, Sendable, CustomStringConvertible {
    case rsa = 0
    case ed25519 = 1
    case secp256k1 = 2
    case ecdsa = 3

    public var description: String {
        switch self {
        case .rsa: "RSA"
        case .ed25519: "Ed25519"
        case .secp256k1: "Secp256k1"
        case .ecdsa: "ECDSA"
        }
    }
}

/// Errors decoding or using keys.
public enum KeyError: Error, CustomStringConvertible, Sendable, Equatable {
    case malformedProtobuf(String)
    case unknownKeyType(Int)
    case invalidKey(KeyType, String)
    case unsupportedPrivateKey(KeyType)

    public var description: String {
        switch self {
        case .malformedProtobuf(let why): return "malformed key protobuf: \(why)"
        case .unknownKeyType(let t): return "unknown key type \(t)"
        case .invalidKey(let type, let why): return "invalid \(type) key: \(why)"
        case .unsupportedPrivateKey(let type): return "\(type) private keys are not supported"
        }
    }
}

/// A libp2p public key: its type and its bytes in the libp2p encoding
/// (Ed25519: 32 raw bytes; Secp256k1: 33-byte compressed point; ECDSA and RSA: DER PKIX).
public struct PublicKey: Hashable, Sendable, CustomStringConvertible {
    public let type: KeyType
    public let data: [UInt8]

    /// RSA modulus sizes we accept from peers.
    public static let rsaBits = 2048...8192

    /// Validates the key material for its type.
    public init(type: KeyType, data: [UInt8]) throws(KeyError) {
        switch type {
        case .ed25519:
            guard (try? Curve25519.Signing.PublicKey(rawRepresentation: data)) != nil else {
                throw .invalidKey(type, "need 32 bytes, got \(data.count)")
            }
        case .secp256k1:
            guard Secp256k1.parse(data) != nil else { throw .invalidKey(type, "not a valid curve point") }
        case .ecdsa:
            guard ECDSAKey(der: data) != nil else { throw .invalidKey(type, "not a P-256/P-384/P-521 PKIX key") }
        case .rsa:
            guard data.count <= 2048 else { throw .invalidKey(type, "key of \(data.count) bytes is too large") }
            guard let key = RSAPublicKeyDER.parse(data) else {
                throw .invalidKey(type, "not a DER PKIX RSA key")
            }
            guard Self.rsaBits.contains(key.keySizeInBits) else {
                throw .invalidKey(type, "\(key.keySizeInBits) bits is outside \(Self.rsaBits)")
            }
        }
        self.type = type
        self.data = data
    }

    /// Decodes the protobuf `PublicKey` message.
    public init(marshaled bytes: [UInt8]) throws(KeyError) {
        let message: Libp2p_Crypto_Pb_PublicKey
        do {
            message = try Libp2p_Crypto_Pb_PublicKey(serializedBytes: bytes)
        } catch {
            throw .malformedProtobuf("\(error)")
        }
        guard message.hasType, message.hasData else { throw .malformedProtobuf("missing Type or Data") }
        guard let type = KeyType(rawValue: message.type.rawValue) else {
            throw .unknownKeyType(message.type.rawValue)
        }
        try self.init(type: type, data: Array(message.data))
    }

    /// The protobuf `PublicKey` message, deterministic (Type then Data), as peer ids need.
    public func marshal() -> [UInt8] {
        var out: [UInt8] = [0x08]  // field 1, varint
        out.append(UInt8(type.rawValue))
        out.append(0x12)  // field 2, length-delimited
        Varint.append(UInt64(data.count), to: &out)
        out.append(contentsOf: data)
        return out
    }

    /// Whether `signature` is this key's signature of `message`.
    public func verify(signature: [UInt8], for message: [UInt8]) -> Bool {
        switch type {
        case .ed25519:
            guard let key = try? Curve25519.Signing.PublicKey(rawRepresentation: data) else { return false }
            return key.isValidSignature(signature, for: message)
        case .secp256k1:
            return Secp256k1.verify(publicKey: data, derSignature: signature, message: message)
        case .ecdsa:
            return ECDSAKey(der: data)?.verify(derSignature: signature, message: message) ?? false
        case .rsa:
            guard let key = RSAPublicKeyDER.parse(data),
                Self.rsaBits.contains(key.keySizeInBits)
            else { return false }
            return key.isValidSignature(
                _RSA.Signing.RSASignature(rawRepresentation: signature), for: message, padding: .insecurePKCS1v1_5)
        }
    }

    public var description: String { "\(type) public key" }
}

/// ECDSA public keys over the NIST curves, from DER PKIX.
private enum ECDSAKey {
    case p256(P256.Signing.PublicKey)
    case p384(P384.Signing.PublicKey)
    case p521(P521.Signing.PublicKey)

    init?(der: [UInt8]) {
        if let key = try? P256.Signing.PublicKey(derRepresentation: der) {
            self = .p256(key)
        } else if let key = try? P384.Signing.PublicKey(derRepresentation: der) {
            self = .p384(key)
        } else if let key = try? P521.Signing.PublicKey(derRepresentation: der) {
            self = .p521(key)
        } else {
            return nil
        }
    }

    /// libp2p signs SHA-256 of the message with ECDSA whatever the curve.
    func verify(derSignature: [UInt8], message: [UInt8]) -> Bool {
        let digest = SHA256.hash(data: message)
        switch self {
        case .p256(let key):
            guard let sig = try? P256.Signing.ECDSASignature(derRepresentation: derSignature) else { return false }
            return key.isValidSignature(sig, for: digest)
        case .p384(let key):
            guard let sig = try? P384.Signing.ECDSASignature(derRepresentation: derSignature) else { return false }
            return key.isValidSignature(sig, for: digest)
        case .p521(let key):
            guard let sig = try? P521.Signing.ECDSASignature(derRepresentation: derSignature) else { return false }
            return key.isValidSignature(sig, for: digest)
        }
    }
}

/// Our own identity key. Ed25519 is what nodes generate; Secp256k1 and ECDSA P-256
/// keys can be loaded (and sign) too.
public struct PrivateKey: Sendable {
    enum Backing: Sendable {
        // Raw bytes: swift-crypto's key types are not Sendable.
        case ed25519(seed: [UInt8])
        case secp256k1([UInt8])
        case ecdsaP256(der: [UInt8])
    }
    let backing: Backing
    public let publicKey: PublicKey

    /// A fresh random Ed25519 key.
    public static func generateEd25519() -> PrivateKey {
        let key = Curve25519.Signing.PrivateKey()
        return PrivateKey(
            backing: .ed25519(seed: Array(key.rawRepresentation)),
            publicKey: try! PublicKey(type: .ed25519, data: Array(key.publicKey.rawRepresentation)))
    }

    /// A fresh random secp256k1 key.
    public static func generateSecp256k1() -> PrivateKey {
        while true {
            var generator = SystemRandomNumberGenerator()
            let secret = (0..<32).map { _ in UInt8.random(in: 0...255, using: &generator) }
            if let key = try? PrivateKey(secp256k1Secret: secret) { return key }
        }
    }

    /// A fresh random ECDSA P-256 key.
    public static func generateECDSAP256() -> PrivateKey {
        let key = P256.Signing.PrivateKey()
        return PrivateKey(
            backing: .ecdsaP256(der: Array(key.derRepresentation)),
            publicKey: try! PublicKey(type: .ecdsa, data: Array(key.publicKey.derRepresentation)))
    }

    /// An Ed25519 key from its 32-byte seed.
    public init(ed25519Seed seed: [UInt8]) throws(KeyError) {
        guard let key = try? Curve25519.Signing.PrivateKey(rawRepresentation: seed) else {
            throw .invalidKey(.ed25519, "seed must be 32 bytes, got \(seed.count)")
        }
        self.backing = .ed25519(seed: seed)
        self.publicKey = try PublicKey(type: .ed25519, data: Array(key.publicKey.rawRepresentation))
    }

    init(secp256k1Secret secret: [UInt8]) throws(KeyError) {
        guard let pub = Secp256k1.publicKey(secret: secret) else {
            throw .invalidKey(.secp256k1, "invalid 32-byte secret")
        }
        self.backing = .secp256k1(secret)
        self.publicKey = try PublicKey(type: .secp256k1, data: pub)
    }

    private init(backing: Backing, publicKey: PublicKey) {
        self.backing = backing
        self.publicKey = publicKey
    }

    public var type: KeyType { publicKey.type }

    /// Signs `message` as libp2p does for this key type.
    public func sign(_ message: [UInt8]) throws -> [UInt8] {
        switch backing {
        case .ed25519(let seed):
            return Array(try Curve25519.Signing.PrivateKey(rawRepresentation: seed).signature(for: message))
        case .secp256k1(let secret):
            guard let signature = Secp256k1.sign(secret: secret, message: message) else {
                throw KeyError.invalidKey(.secp256k1, "signing failed")
            }
            return signature
        case .ecdsaP256(let der):
            let key = try P256.Signing.PrivateKey(derRepresentation: der)
            return Array(try key.signature(for: SHA256.hash(data: message)).derRepresentation)
        }
    }

    /// The protobuf `PrivateKey` message (Ed25519 data: 32-byte seed + 32-byte public key, as go-libp2p).
    public func marshal() -> [UInt8] {
        var message = Libp2p_Crypto_Pb_PrivateKey()
        switch backing {
        case .ed25519(let seed):
            message.type = .ed25519
            message.data = Data(seed + publicKey.data)
        case .secp256k1(let secret):
            message.type = .secp256K1
            message.data = Data(secret)
        case .ecdsaP256(let der):
            message.type = .ecdsa
            message.data = Data(der)
        }
        return (try? message.serializedBytes()) ?? []
    }

    /// Decodes the protobuf `PrivateKey` message.
    public init(marshaled bytes: [UInt8]) throws(KeyError) {
        let message: Libp2p_Crypto_Pb_PrivateKey
        do {
            message = try Libp2p_Crypto_Pb_PrivateKey(serializedBytes: bytes)
        } catch {
            throw .malformedProtobuf("\(error)")
        }
        guard message.hasType, message.hasData else { throw .malformedProtobuf("missing Type or Data") }
        let data = Array(message.data)
        switch message.type {
        case .ed25519:
            // 64 bytes (seed + public key) as go-libp2p writes, or the bare 32-byte seed.
            guard data.count == 64 || data.count == 32 else {
                throw .invalidKey(.ed25519, "private key data must be 32 or 64 bytes, got \(data.count)")
            }
            try self.init(ed25519Seed: Array(data.prefix(32)))
            if data.count == 64 && Array(data.suffix(32)) != publicKey.data {
                throw .invalidKey(.ed25519, "public half does not match the seed")
            }
        case .secp256K1:
            try self.init(secp256k1Secret: data)
        case .ecdsa:
            guard let key = try? P256.Signing.PrivateKey(derRepresentation: data) else {
                throw .invalidKey(.ecdsa, "not a DER P-256 private key")
            }
            self.init(
                backing: .ecdsaP256(der: data),
                publicKey: try PublicKey(type: .ecdsa, data: Array(key.publicKey.derRepresentation)))
        case .rsa:
            throw .unsupportedPrivateKey(.rsa)
        }
    }
}
