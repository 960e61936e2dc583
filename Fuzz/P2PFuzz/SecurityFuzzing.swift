import Foundation
import Identity
import LibP2PSecurity
import NIOCore
import Noise
import TLS

/// Noise after the handshake: a session fed frames. Each piece of the input
/// (split as `FuzzTarget.chunks`) is, by its first byte, either plaintext the
/// remote encrypts into well-formed frames (odd) or raw bytes (even): lengths,
/// tags and frames cut anywhere, mixed with frames that decrypt.
enum NoiseFuzzing {
    /// A session pair from one real handshake; each run starts from copies
    /// (the nonces are values, so every run starts at nonce 0). Unsafe but
    /// safe here: libFuzzer and the replay call the targets from one thread,
    /// the only one that touches the sessions' cipher contexts.
    nonisolated(unsafe) static let pair: (remote: NoiseTransport, local: NoiseTransport) = {
        var initiator = NoiseHandshake(initiator: true, identity: FuzzTarget.remote)
        var responder = NoiseHandshake(initiator: false, identity: FuzzTarget.identity)
        var toResponder = ByteBuffer()
        var toInitiator = ByteBuffer()
        initiator.start(into: &toResponder)
        var local: NoiseTransport?
        var remote: NoiseTransport?
        // XX: three messages; each side finishes on its last one.
        for _ in 0..<3 {
            if local == nil, let done = try? responder.receive(&toResponder, output: &toInitiator) {
                local = done.transport
            }
            if remote == nil, let done = try? initiator.receive(&toInitiator, output: &toResponder) {
                remote = done.transport
            }
        }
        guard let remote, let local else { fatalError("the Noise handshake between two local sessions failed") }
        return (remote, local)
    }()

    static func receive(_ bytes: [UInt8]) {
        var (remote, local) = pair
        var plaintexts: [ByteBuffer] = []
        for chunk in FuzzTarget.chunks(bytes) {
            guard let mode = chunk.first else { continue }
            var input = ByteBuffer()
            if mode & 1 == 1 {
                var plain = ByteBuffer(bytes: chunk.dropFirst())
                guard (try? remote.encrypt(&plain, into: &input)) != nil else { return }
            } else {
                input.writeBytes(chunk.dropFirst())
            }
            guard (try? local.decrypt(&input, into: &plaintexts)) != nil else { return }
            guard input.readableBytes == 0 else { fatalError("decrypt left \(input.readableBytes) bytes unconsumed") }
        }
    }
}

/// `/tls/1.0.0`: the handshake machine fed arbitrary bytes as the remote's
/// flights, and the libp2p certificate check fed arbitrary DER.
enum TLSFuzzing {
    /// The input's first byte picks our role: even, the responder (the input
    /// is a ClientHello and what follows); odd, the initiator after its
    /// ClientHello (the input plays the server). The rest is fed in pieces.
    static func handshake(_ bytes: [UInt8]) {
        guard let mode = bytes.first else { return }
        let role: SecurityRole = mode & 1 == 0 ? .responder : .initiator
        guard
            var handshake = try? TLSSecurity().makeHandshake(
                role: role, localKey: FuzzTarget.identity, expectedRemotePeer: nil, muxers: ["/yamux/1.0.0"])
        else { fatalError("no TLS handshake could be made") }
        var output = ByteBuffer()
        guard (try? handshake.start(into: &output)) != nil else { return }
        for chunk in FuzzTarget.chunks(Array(bytes.dropFirst())) {
            var input = ByteBuffer(bytes: chunk)
            output.clear()
            let result: SecuredConnection?
            do {
                result = try handshake.receive(&input, output: &output)
            } catch {
                return
            }
            if var secured = result {
                // A finished handshake (only a seed can get there): feed the rest to the session.
                var plaintexts: [ByteBuffer] = []
                _ = try? secured.session.receive(&secured.remainder, plaintexts: &plaintexts, output: &output)
                return
            }
        }
    }

    /// A presented certificate (DER) checked as the spec demands.
    static func certificate(_ bytes: [UInt8]) {
        _ = try? LibP2PCertificate.verify(chain: [bytes], expectedPeer: nil)
    }
}

/// Seeds of the security targets made from real sessions and handshakes
/// (`p2pfuzz --seeds TARGET DIRECTORY`): what is committed in `Fuzz/corpus`.
enum SecuritySeeds {
    static func make(_ target: FuzzTarget) throws -> [String: [UInt8]] {
        switch target {
        case .noiseTransport:
            let split: [UInt8] = [0x5A, 0xA5]
            return [
                "frame": [1] + Array("hello".utf8),
                "frames-then-cut": [1] + Array(repeating: 0x61, count: 300) + split + [0, 0x00, 0x40, 1, 2, 3],
                "short-frame": [0, 0x00, 0x05, 1, 2, 3, 4, 5],
                "empty-then-frame": [0, 0x00, 0x00] + split + [1, 0x42],
            ]
        case .tlsHandshake:
            var client = try TLSSecurity().makeHandshake(
                role: .initiator, localKey: FuzzTarget.remote, expectedRemotePeer: nil, muxers: ["/yamux/1.0.0"])
            var hello = ByteBuffer()
            try client.start(into: &hello)
            var server = try TLSSecurity().makeHandshake(
                role: .responder, localKey: FuzzTarget.identity, expectedRemotePeer: nil, muxers: ["/yamux/1.0.0"])
            var flight = ByteBuffer()
            try server.start(into: &flight)
            var input = hello
            _ = try server.receive(&input, output: &flight)
            return [
                "client-hello": [0] + Array(hello.readableBytesView),
                "server-flight": [1] + Array(flight.readableBytesView),
            ]
        case .tlsCertificate:
            return ["generated": try LibP2PCertificate.generate(identity: FuzzTarget.remote).certificateDER]
        default:
            return [:]
        }
    }
}
