import Foundation
import Host
import Multiformats
import NIOCore
import Perf
import Ping
import Relay
import Transport

// `p2pbench relay [MiB]`: /perf through a circuit relay v2 against a direct
// connection between the same two hosts, and ping on each.

/// A host on one of the loops with TCP and the circuit transport.
private func circuitHost(on loop: EventLoopGroup) async throws -> (Libp2pHost, Multiaddr) {
    let circuit = CircuitTransport()
    let host = try makeBenchHost(
        key: .generateEd25519(), configuration: benchConfiguration, group: loop,
        transports: [TCPTransport(group: loop), circuit])
    circuit.attach(host)
    PerfService(host: host).start()
    PingService(host: host).start()
    let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
    return (host, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
}

func runRelayBenchmark(megabytes: Int) async throws {
    let size = UInt64(megabytes) * 1024 * 1024
    // The relay gets a loop of its own work: it decrypts and encrypts both legs.
    let (relay, relayAddress) = try await circuitHost(on: serverLoop)
    var limits = RelayLimits()
    limits.circuit = CircuitLimit(duration: nil, data: nil)
    RelayService(host: relay, limits: limits).start()
    let (server, serverAddress) = try await circuitHost(on: serverLoop)
    let (client, _) = try await circuitHost(on: clientLoop)
    let circuitAddress = try await server.listen(on: [relayAddress.encapsulating(.p2pCircuit)])[0]
    let relayed = try await client.connect(circuitAddress.encapsulating(.p2p(server.localPeer.bytes)))
    precondition(relayed.isRelayed, "not relayed: \(relayed)")
    // A direct connection beside it (a new dial, not the relayed one).
    let direct = try await client.dial(serverAddress, role: .initiator)
    print("relay: \(megabytes) MiB /perf downloads, three hosts in one process on loopback, median of 3 alternating rounds")
    var relayedRates: [Double] = []
    var directRates: [Double] = []
    for _ in 0..<3 {
        let overRelay = try await PerfService.run(relayed, upload: 0, download: size)
        relayedRates.append(Double(size) / seconds(overRelay.downloadDuration) / 1e6)
        let overDirect = try await PerfService.run(direct, upload: 0, download: size)
        directRates.append(Double(size) / seconds(overDirect.downloadDuration) / 1e6)
    }
    report("perf download, relayed (circuit relay v2)", median(relayedRates), "MB/s" + spread(relayedRates))
    report("perf download, direct", median(directRates), "MB/s" + spread(directRates))
    report("  relayed / direct", median(relayedRates) / median(directRates), "")
    let relayedPing = try await PingService.ping(relayed, count: 50).sorted()
    let directPing = try await PingService.ping(direct, count: 50).sorted()
    report("ping relayed / direct, median of 50", seconds(relayedPing[25]) * 1e6, String(format: "/ %.0f µs", seconds(directPing[25]) * 1e6))
    await client.close()
    await server.close()
    await relay.close()
}
