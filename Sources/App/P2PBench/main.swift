import Foundation
import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import LibP2PSecurity
import Noise
import Perf
import Ping
import PubSub
import Synchronization
import TLS
import Transport

// Measures the foundation's speed on loopback; run through Benchmarks/run.sh.

let usage = """
    Usage: p2pbench [PART] [--no-pubsub] [MiB]
    Measures the stack on loopback (release build: Benchmarks/run.sh). With no PART, runs every benchmark.
      stream [tls|ws]        one Yamux stream over Noise (or TLS 1.3, or Noise on /ws), in one process
      sealed                 raw TCP with Noise sealing, no Yamux
      ping                   ping round trips, alone and under a flooding stream
      pubsub                 gossipsub and floodsub on 20 nodes
      pubsub-scale [N...]    gossipsub and floodsub in networks of N nodes over /memory (default 50 200 1000)
      memory                 resident memory of an idle node and per connection
      connections [N...]     one listener with N connections (default 100 500 1000): opening rate,
                             memory and CPU per connection, one ping on each, CPU while idle
      dht [NODES]            Kademlia lookups over real loopback DHT servers (default 120 nodes)
      files                  a file transfer against perf on one connection, memory, chat latency while it runs
      history                history sync of 10 000 missed messages
      relay                  /perf through a circuit relay against a direct connection
      ping-under-load ADDR   ping a perf-server at ADDR while a /perf upload fills the connection
      attack KIND TARGET     one of issue 25's attacks against a running chat (`p2pbench attack --help`)
      --no-pubsub            skip the pubsub part of the full run
      MiB                    bytes per throughput run (default 256)
    Environment: P2PBENCH_ROUNDS (throughput rounds, default 5; files: 3), P2PBENCH_CHUNK (write size);
    files: P2PBENCH_FILE_CHUNK, P2PBENCH_FILE_DEPTH (chunk size, chunks in flight), P2PBENCH_PHASES
    (print each measured phase's CLOCK_MONOTONIC span, for `perf report --time`).
    """

if CommandLine.arguments.dropFirst().first == "attack" {
    // A hostile peer for Benchmarks/soak-under-attack.sh: no load average, one summary line.
    if CommandLine.arguments.contains(where: { ["--help", "-h"].contains($0) }) {
        print(attackUsage)
        exit(0)
    }
    try await runAttack(Array(CommandLine.arguments.dropFirst(2)))
    exit(0)
}
if CommandLine.arguments.contains(where: { ["--help", "-h", "help"].contains($0) }) {
    print(usage)
    finish()
}

printLoadAverage("before")
let megabytes = CommandLine.arguments.dropFirst().compactMap { Int($0) }.first ?? 256
let totalBytes = megabytes * 1024 * 1024
let chunk = (ProcessInfo.processInfo.environment["P2PBENCH_CHUNK"].flatMap(Int.init)) ?? 256 * 1024
let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
// The two ends of each measured connection live on different loops (threads),
// as they would in two processes: one encrypts while the other decrypts.
let serverLoop = group.next()
let clientLoop = group.next()
let clock = ContinuousClock()

func seconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
}

func report(_ name: String, _ value: Double, _ unit: String) {
    let padded = name.padding(toLength: 44, withPad: " ", startingAt: 0)
    print(padded + String(format: "%10.2f ", value) + unit)
}

if CommandLine.arguments.dropFirst().first == "files" {
    // A file transfer against perf on one connection, memory, and chat latency while it runs.
    try await runFileBenchmarks(megabytes: megabytes)
    finish()
}
if CommandLine.arguments.dropFirst().first == "relay" {
    try await runRelayBenchmark(megabytes: megabytes)
    finish()
}
if CommandLine.arguments.dropFirst().first == "history" {
    try await runHistoryBenchmark()
    finish()
}
if CommandLine.arguments.dropFirst().first == "ping-under-load" {
    // Ping a remote perf-server while a /perf upload fills the same connection
    // (Benchmarks/latency-under-load.sh runs it across a slow link).
    guard CommandLine.arguments.count > 2, let remote = try? Multiaddr(CommandLine.arguments[2]) else {
        print("usage: p2pbench ping-under-load <multiaddr of a perf-server>")
        exit(2)
    }
    try await pingUnderUpload(remote: remote)
    finish()
}

if CommandLine.arguments.dropFirst().first == "memory" {
    // Only the memory figures.
    if let (idle, perConnection) = try await memory(connections: 100) {
        report("idle node resident memory", Double(idle) / 1024 / 1024, "MiB")
        report("per additional connection", Double(perConnection) / 1024, "KiB")
    }
    finish()
}

if CommandLine.arguments.dropFirst().first == "connections-listener" {
    // The listener process of `connections` (started by it).
    try await runConnectionsListener(connections: CommandLine.arguments.dropFirst(2).compactMap { Int($0) }.first ?? 1000)
}
if CommandLine.arguments.dropFirst().first == "connections" {
    let counts = CommandLine.arguments.dropFirst(2).compactMap { Int($0) }
    try await runConnectionsBenchmarks(counts: counts.isEmpty ? [100, 500, 1000] : counts)
    finish()
}

if CommandLine.arguments.dropFirst().first == "dht" {
    // Only the DHT: lookups over NODES real loopback nodes (200 by default), then memory.
    let nodes = CommandLine.arguments.dropFirst(2).compactMap { Int($0) }.first ?? 200
    try await dhtLookupBenchmark(nodes: nodes, lookups: 200)
    dhtMemoryBenchmark()
    finish()
}

if CommandLine.arguments.dropFirst().first == "quic" {
    try await runQUICBenchmarks()
    exit(0)
}
if CommandLine.arguments.dropFirst().first == "pubsub-scale" {
    let sizes = CommandLine.arguments.dropFirst(2).compactMap { Int($0) }
    try await runPubSubScaleBenchmarks(sizes: sizes.isEmpty ? [50, 200, 1000] : sizes)
    finish()
}
if CommandLine.arguments.dropFirst().first == "pubsub" {
    // Only the pubsub benchmarks.
    try await runPubSubBenchmarks()
    finish()
}

let (server, serverAddress) = try await makeHost()
let client = try makeBenchHost(
    key: .generateEd25519(), configuration: benchConfiguration, group: clientLoop, security: [NoiseSecurity()])
let tlsClient = try makeBenchHost(
    key: .generateEd25519(), configuration: benchConfiguration, group: clientLoop, security: [TLSSecurity()])
if CommandLine.arguments.dropFirst().first == "sealed" {
    // Only the sealed-TCP ceiling.
    report("raw NIO TCP + Noise sealing (no Yamux)", try await tcpThroughput(sealed: true), "MB/s")
    finish()
}
if CommandLine.arguments.dropFirst().first == "ping" {
    try await reportPing(server: serverAddress, client: client)
    finish()
}
if CommandLine.arguments.dropFirst().first == "stream" {
    // Only the stream throughput (for profiling); `stream tls` and `stream ws` for the others.
    switch CommandLine.arguments.dropFirst(2).first {
    case "tls":
        report("one Yamux stream over TLS throughput", try await streamThroughput(server: serverAddress, client: tlsClient), "MB/s")
    case "ws":
        report("one Yamux stream over Noise over /ws", try await streamThroughput(server: webSocketAddress!, client: client), "MB/s")
    default:
        report("one Yamux stream over Noise throughput", try await streamThroughput(server: serverAddress, client: client), "MB/s")
    }
    finish()
}
/// Throughput runs alternate (raw, stream, sealed, raw, ...) for P2PBENCH_ROUNDS
/// rounds (default 5), and each figure is the median: on a shared VM one run
/// moves by ±20%, and alternating keeps a slow spell from hitting one figure only.
let rounds = max(1, ProcessInfo.processInfo.environment["P2PBENCH_ROUNDS"].flatMap(Int.init) ?? 5)
print("p2pbench: \(megabytes) MiB per throughput run, loopback, 2 event loops, median of \(rounds) alternating rounds")
print("p2pbench: Noise's ChaCha20-Poly1305 from \(AEADBackend.preferred.rawValue) (P2PCHAT_AEAD=swift-crypto forces swift-crypto)")
var rawRuns: [Double] = []
var streamRuns: [Double] = []
var tlsRuns: [Double] = []
var webSocketRuns: [Double] = []
var sealedRuns: [Double] = []
for _ in 0..<rounds {
    rawRuns.append(try await tcpThroughput(sealed: false))
    streamRuns.append(try await streamThroughput(server: serverAddress, client: client))
    tlsRuns.append(try await streamThroughput(server: serverAddress, client: tlsClient))
    webSocketRuns.append(try await streamThroughput(server: webSocketAddress!, client: client))
    sealedRuns.append(try await tcpThroughput(sealed: true))
}
func median(_ values: [Double]) -> Double {
    let sorted = values.sorted()
    return sorted.count % 2 == 1 ? sorted[sorted.count / 2] : (sorted[sorted.count / 2 - 1] + sorted[sorted.count / 2]) / 2
}
func spread(_ values: [Double], digits: Int = 0) -> String {
    String(format: "  (%.\(digits)f to %.\(digits)f)", values.min()!, values.max()!)
}
let raw = median(rawRuns)
report("raw NIO TCP throughput", raw, "MB/s" + spread(rawRuns))
let muxed = median(streamRuns)
report("one Yamux stream over Noise throughput", muxed, "MB/s" + spread(streamRuns))
report("  ratio to raw TCP", muxed / raw, "")
let overTLS = median(tlsRuns)
report("one Yamux stream over TLS 1.3", overTLS, "MB/s" + spread(tlsRuns))
report("  ratio to the stream over Noise", overTLS / muxed, "")
let overWebSocket = median(webSocketRuns)
report("one Yamux stream over Noise over /ws", overWebSocket, "MB/s" + spread(webSocketRuns))
report("  ratio to the stream over TCP", overWebSocket / muxed, "")
let chacha = try chachaThroughput()
report("ChaChaPoly (Noise framing) encrypt", chacha.encrypt, "MB/s")
report("ChaChaPoly (Noise framing) decrypt", chacha.decrypt, "MB/s")
report("  stream ratio to ChaChaPoly's limit", muxed / min(chacha.encrypt, chacha.decrypt), "")
let sealed = median(sealedRuns)
report("raw NIO TCP + Noise sealing (no Yamux)", sealed, "MB/s" + spread(sealedRuns))
report("  stream ratio to sealed TCP", muxed / sealed, "")
let roundRatios = zip(streamRuns, sealedRuns).map { $0 / $1 }
report("  same, median of each round's ratio", median(roundRatios), spread(roundRatios, digits: 2))
report("Noise XX handshakes (1 at a time)", try await handshakesPerSecond(server: serverAddress, count: 200, concurrency: 1), "/s")
report("Noise XX handshakes (8 concurrent)", try await handshakesPerSecond(server: serverAddress, count: 400, concurrency: 8), "/s")
report("TLS 1.3 handshakes (1 at a time)", try await handshakesPerSecond(
    server: serverAddress, count: 200, concurrency: 1, security: [TLSSecurity()]), "/s")
report("TLS 1.3 handshakes (8 concurrent)", try await handshakesPerSecond(
    server: serverAddress, count: 400, concurrency: 8, security: [TLSSecurity()]), "/s")
try await reportPing(server: serverAddress, client: client)
if let (idle, perConnection) = try await memory(connections: 100) {
    report("idle node resident memory", Double(idle) / 1024 / 1024, "MiB")
    report("per additional connection", Double(perConnection) / 1024, "KiB")
}
await client.close()
await tlsClient.close()
await server.close()
if !CommandLine.arguments.contains("--no-pubsub") {
    try await runPubSubBenchmarks()
}
try await group.shutdownGracefully()
printLoadAverage("after")
