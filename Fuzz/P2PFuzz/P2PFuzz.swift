import Foundation
import AutoNAT
import DCUtR
import Identity
import KadDHT
import MDNS
import Multiformats
import Multistream
import NIOCore
import Noise
import RedisRESP
import Relay
import TLS
import WebChat
import Yamux

// The protobuf types and the router are internal to their modules; debug
// builds (the fuzzing build is one) can reach them.
#if DEBUG
@testable import ChatHistory
@testable import FileShare
@testable import Identify
@testable import PubSub
#endif

/// Decoders of network input, each fed arbitrary bytes: they must return or
/// throw, never crash, hang or allocate without bound. One libFuzzer binary
/// for all (`FUZZ_TARGET` picks one); without libFuzzer the same binary
/// replays files (`p2pfuzz TARGET FILE...`), which is how the test command
/// runs the committed corpus.
enum FuzzTarget: String, CaseIterable {
    case varint, multiaddr, multistream, yamux, noise, dns, keys, envelope, identify, pubsub
    case noiseTransport = "noise-transport", tlsHandshake = "tls-handshake", tlsCertificate = "tls-certificate"
    case dht, relay, dcutr, autonat, file, history, resp, webchat
    case quicPacket = "quic-packet", quicFrame = "quic-frame", quicTransportParameters = "quic-transport-parameters"
    case quicConnection = "quic-connection"

    func run(_ bytes: [UInt8]) {
        switch self {
        case .varint:
            _ = try? Varint.decode(bytes)
        case .multiaddr:
            if let address = try? Multiaddr(bytes: bytes) {
                // What we decode we can print and parse back (within the text
                // length limit: text is longer than binary, an IPv6 address 16 bytes or 39 characters).
                let text = address.description
                guard text.utf8.count > Multiaddr.maxLength || (try? Multiaddr(text)) == address else {
                    fatalError("multiaddr \(text) does not round-trip")
                }
            }
        case .multistream:
            var negotiation = MultistreamNegotiation.responder(supports: { $0 == "/yes/1.0.0" })
            var output = ByteBuffer()
            negotiation.start(into: &output)
            for chunk in Self.chunks(bytes) {
                var input = ByteBuffer(bytes: chunk)
                guard (try? negotiation.receive(&input, output: &output)) != nil else { return }
            }
        case .yamux:
            var session = YamuxSession(isClient: false)
            for chunk in Self.chunks(bytes) {
                var input = ByteBuffer(bytes: chunk)
                guard (try? session.receive(&input)) != nil else { return }
                _ = session.takeOutput(dataBudget: .max)
            }
        case .noise:
            // A responder fed whatever comes (message 1, then message 3).
            var handshake = NoiseHandshake(initiator: false, identity: Self.identity)
            var output = ByteBuffer()
            for chunk in Self.chunks(bytes) {
                var input = ByteBuffer(bytes: chunk)
                guard (try? handshake.receive(&input, output: &output)) != nil else { return }
            }
        case .resp:
            // Redis replies as the client's frame decoder sees them: in pieces, value after value.
            let decoder = RESPDecoder()
            var pending: [UInt8] = []
            for chunk in Self.chunks(bytes) {
                pending += chunk
                while true {
                    let decoded: (value: RESPValue, consumed: Int)?
                    do { decoded = try decoder.decode(pending) } catch { return }
                    guard let (_, consumed) = decoded else { break }
                    guard consumed > 0, consumed <= pending.count else {
                        fatalError("RESP decoder consumed \(consumed) of \(pending.count) bytes")
                    }
                    pending.removeFirst(consumed)
                }
            }
        case .webchat:
            // What a page sends over the web chat's WebSocket, and a request target with its headers.
            if let lines = try? WebChatInput.decode(bytes) {
                guard lines.count <= WebChatInput.maxLines, !lines.contains(where: { $0.isEmpty || $0.contains(where: \.isNewline) }) else {
                    fatalError("web chat input decoded to bad lines: \(lines)")
                }
            }
            let text = String(decoding: bytes, as: UTF8.self)
            let access = WebChatAccess.forServer(host: "127.0.0.1", port: 8080, token: "0123456789abcdef")
            if access.check(target: text, host: "127.0.0.1:8080", origin: nil) == nil {
                guard WebChatAccess.queryValue("token", in: text) == "0123456789abcdef" else { fatalError("access without the token: \(text)") }
            }
        case .dns:
            _ = try? DNSMessage(bytes: bytes)
        case .keys:
            _ = try? PublicKey(marshaled: bytes)
            _ = try? PrivateKey(marshaled: bytes)
            _ = try? PeerID(bytes: bytes)
        case .envelope:
            _ = try? PeerRecord.open(bytes)
        case .identify:
            #if DEBUG
            // What the identify service reads from a message.
            guard let message = try? Identify_Pb_Identify(serializedBytes: bytes) else { return }
            for address in message.listenAddrs { _ = try? Multiaddr(bytes: Array(address)) }
            _ = try? Multiaddr(bytes: Array(message.observedAddr))
            _ = try? PublicKey(marshaled: Array(message.publicKey))
            _ = try? PeerRecord.open(Array(message.signedPeerRecord))
            #endif
        case .pubsub:
            #if DEBUG
            // An RPC from a gossipsub peer to a router subscribed to the topic "t", decoded as the service does.
            let configuration = PubSubConfiguration()
            guard let rpc = try? PubSubCodec.decode(bytes, limits: .init(configuration)) else { return }
            let now = ContinuousClock.now
            var router = GossipsubRouter(localKey: Self.identity, configuration: configuration)
            _ = router.subscribe("t", now: now)
            let peer = PeerID(publicKey: Self.remote.publicKey)
            _ = router.addPeer(peer, protocolID: "/meshsub/1.2.0", outbound: false)
            _ = router.handle(rpc, from: peer, now: now)
            _ = router.heartbeat(now: now)
            #endif
        case .noiseTransport:
            NoiseFuzzing.receive(bytes)
        case .tlsHandshake:
            TLSFuzzing.handshake(bytes)
        case .tlsCertificate:
            TLSFuzzing.certificate(bytes)
        case .dht:
            _ = try? DHTMessage(decoding: bytes)
        case .relay:
            _ = try? HopMessage(bytes: bytes)
            _ = try? StopMessage(bytes: bytes)
            _ = try? ReservationVoucher.open(bytes)
        case .dcutr:
            _ = try? HolePunchMessage(bytes: bytes)
        case .autonat:
            _ = try? AutoNATMessage(bytes: bytes)
        case .file:
            #if DEBUG
            // What both ends of /p2pchat/file/1.0.0 read, and a chat's file offer.
            _ = try? FileRequest(serializedBytes: bytes)
            _ = try? FileResponse(serializedBytes: bytes)
            _ = FileOffer(announcement: String(decoding: bytes, as: UTF8.self))
            _ = FileName.safe(String(decoding: bytes, as: UTF8.self))
            #endif
        case .history:
            #if DEBUG
            // What /p2pchat/history/1.0.0 reads (each line's signature checked), and a history file's records.
            if let response = try? HistoryResponse(serializedBytes: bytes) {
                let peer = PeerID(publicKey: Self.remote.publicKey)
                for wire in response.messages.prefix(64) {
                    if let message = try? PubSubMessage.verified(wire: Array(wire), maxSize: 64 * 1024, receivedFrom: peer) {
                        _ = HistoryLineTime(message, window: 24 * 3600, now: Date())
                    }
                }
            }
            // A line's send time, read from any seqno.
            let line = PubSubMessage(
                topic: "t", data: [], from: PeerID(publicKey: Self.remote.publicKey), seqno: Array(bytes.prefix(16)),
                id: MessageID([]), receivedFrom: nil, signature: [0])
            _ = HistoryLineTime(line, window: 24 * 3600, now: Date())
            _ = try? HistoryRequest(serializedBytes: bytes)
            _ = HistoryFile.decode(bytes, maxMessageSize: 64 * 1024)
            #endif
        case .quicPacket:
            QUICFuzzing.packet(bytes)
        case .quicFrame:
            QUICFuzzing.frames(bytes)
        case .quicTransportParameters:
            QUICFuzzing.transportParameters(bytes)
        case .quicConnection:
            QUICFuzzing.connection(bytes)
        }
    }

    /// The input split where a byte 0xA5 follows a byte 0x5A, so that machines
    /// fed piece by piece see fragmentation too.
    static func chunks(_ bytes: [UInt8]) -> [ArraySlice<UInt8>] {
        var result: [ArraySlice<UInt8>] = []
        var start = 0
        for index in bytes.indices.dropFirst() where bytes[index - 1] == 0x5A && bytes[index] == 0xA5 {
            result.append(bytes[start..<index])
            start = index
        }
        result.append(bytes[start...])
        return result
    }

    static let identity = PrivateKey.generateEd25519()
    static let remote = PrivateKey.generateEd25519()
}

/// The target named by `FUZZ_TARGET` (libFuzzer runs).
let selectedTarget: FuzzTarget? = ProcessInfo.processInfo.environment["FUZZ_TARGET"].flatMap(FuzzTarget.init(rawValue:))

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let target = selectedTarget else { fatalError("set FUZZ_TARGET to one of \(FuzzTarget.allCases.map(\.rawValue))") }
    let bytes = data.map { Array(UnsafeBufferPointer(start: $0, count: size)) } ?? []
    target.run(bytes)
    return 0
}

#if FUZZING
/// libFuzzer's driver (in the runtime `-sanitize=fuzzer` links). SwiftPM names
/// an executable's entry point itself, so `main` is ours and hands over to it.
@_silgen_name("LLVMFuzzerRunDriver")
func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>?, Int) -> CInt
) -> CInt

@main
enum Fuzz {
    static func main() {
        var argc = CommandLine.argc
        var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
        exit(runFuzzerDriver(&argc, &argv, fuzzTestOneInput))
    }
}
#else
/// Replays inputs without libFuzzer: `p2pfuzz TARGET FILE|DIRECTORY...`.
@main
enum Replay {
    static func main() {
        let arguments = CommandLine.arguments.dropFirst()
        if arguments.first == "--seeds" {
            writeSeeds(Array(arguments.dropFirst()))
            return
        }
        guard let name = arguments.first, let target = FuzzTarget(rawValue: name) else {
            print("usage: p2pfuzz TARGET FILE|DIRECTORY... (targets: \(FuzzTarget.allCases.map(\.rawValue).joined(separator: ", ")))")
            exit(2)
        }
        var count = 0
        for path in arguments.dropFirst() {
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { continue }
            let files =
                isDirectory.boolValue
                ? ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted().map { "\(path)/\($0)" }
                : [path]
            for file in files {
                guard let data = FileManager.default.contents(atPath: file) else { continue }
                target.run(Array(data))
                count += 1
            }
        }
        print("\(target.rawValue): \(count) inputs replayed")
    }

    /// `--seeds TARGET DIRECTORY`: writes the seeds made from real sessions (`SecuritySeeds`).
    static func writeSeeds(_ arguments: [String]) {
        guard arguments.count == 2, let target = FuzzTarget(rawValue: arguments[0]) else {
            print("usage: p2pfuzz --seeds TARGET DIRECTORY")
            exit(2)
        }
        do {
            for (name, bytes) in try SecuritySeeds.make(target).merging(ProtocolSeeds.make(target), uniquingKeysWith: { a, _ in a })
                .merging(QUICFuzzing.seeds(target), uniquingKeysWith: { a, _ in a }) {
                try Data(bytes).write(to: URL(fileURLWithPath: "\(arguments[1])/\(name)"))
            }
        } catch {
            print("seeds of \(target.rawValue): \(error)")
            exit(1)
        }
    }
}
#endif
