import Foundation
import Host
import Multiformats
import NIOCore
import NIOPosix
import Noise
import Ping
import QUICTransport
import Transport

/// `p2pbench quic [MB]`: QUIC beside TCP in one run, rounds alternating: one
/// stream's throughput, 8 concurrent streams, handshakes, ping idle and under
/// a flood. TCP is Noise + Yamux, as the chat uses it.
func runQUICBenchmarks() async throws {
    let server = try makeBenchHost(
        key: .generateEd25519(), configuration: benchConfiguration, group: serverLoop,
        transports: [TCPTransport(group: serverLoop), QUICTransport(group: serverLoop)])
    PingService(host: server).start()
    serveSink(on: server)
    let bound = try await server.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0"), Multiaddr("/ip4/127.0.0.1/udp/0/quic-v1")])
    let tcpAddress = bound[0].encapsulating(.p2p(server.localPeer.bytes))
    let quicAddress = bound[1].encapsulating(.p2p(server.localPeer.bytes))
    func makeClient() throws -> Libp2pHost {
        try makeBenchHost(
            key: .generateEd25519(), configuration: benchConfiguration, group: clientLoop,
            transports: [TCPTransport(group: clientLoop), QUICTransport(group: clientLoop)])
    }
    let tcpClient = try makeClient()
    let quicClient = try makeClient()
    let rounds = max(1, ProcessInfo.processInfo.environment["P2PBENCH_ROUNDS"].flatMap(Int.init) ?? 3)
    print("p2pbench quic: \(megabytes) MiB per throughput run, loopback, 2 event loops, median of \(rounds) alternating rounds")
    var tcpOne: [Double] = [], quicOne: [Double] = [], tcpEight: [Double] = [], quicEight: [Double] = []
    for _ in 0..<rounds {
        tcpOne.append(try await streamThroughput(server: tcpAddress, client: tcpClient))
        quicOne.append(try await streamThroughput(server: quicAddress, client: quicClient))
        tcpEight.append(try await concurrentThroughput(server: tcpAddress, client: tcpClient, streams: 8))
        quicEight.append(try await concurrentThroughput(server: quicAddress, client: quicClient, streams: 8))
    }
    report("one Yamux stream over Noise (TCP)", median(tcpOne), "MB/s" + spread(tcpOne))
    report("one QUIC stream", median(quicOne), "MB/s" + spread(quicOne))
    report("  ratio QUIC / TCP", median(quicOne) / median(tcpOne), "")
    report("8 concurrent Yamux streams over Noise (TCP)", median(tcpEight), "MB/s" + spread(tcpEight))
    report("8 concurrent QUIC streams", median(quicEight), "MB/s" + spread(quicEight))
    report("  ratio QUIC / TCP", median(quicEight) / median(tcpEight), "")
    report("Noise XX + Yamux handshakes (1 at a time)", try await handshakesPerSecond(server: tcpAddress, count: 200, concurrency: 1), "/s")
    report("QUIC handshakes (1 at a time)", try await handshakesPerSecond(
        server: quicAddress, count: 200, concurrency: 1, transports: { [QUICTransport(group: group)] }), "/s")
    report("Noise XX + Yamux handshakes (8 concurrent)", try await handshakesPerSecond(server: tcpAddress, count: 400, concurrency: 8), "/s")
    report("QUIC handshakes (8 concurrent)", try await handshakesPerSecond(
        server: quicAddress, count: 400, concurrency: 8, transports: { [QUICTransport(group: group)] }), "/s")
    report("ping over TCP (median of 200)", try await pingRoundTrip(server: tcpAddress, client: tcpClient), "µs")
    report("ping over QUIC (median of 200)", try await pingRoundTrip(server: quicAddress, client: quicClient), "µs")
    for (name, address, client) in [("TCP", tcpAddress, tcpClient), ("QUIC", quicAddress, quicClient)] {
        let loaded = try await pingUnderLoad(server: address, client: client)
        report("ping over \(name) under a flooding stream, p50 / p99", loaded.p50, String(format: "µs / %.0f µs, flood %.0f MB/s", loaded.p99, loaded.flood))
    }
    await tcpClient.close()
    await quicClient.close()
    await server.close()
}

/// `streams` streams to the sink at once, `megabytes` in all; MB/s.
func concurrentThroughput(server: Multiaddr, client: Libp2pHost, streams: Int) async throws -> Double {
    let connection = try await client.connect(server)
    let share = totalBytes / streams
    let start = clock.now
    try await withThrowingTaskGroup(of: Void.self) { tasks in
        for _ in 0..<streams {
            tasks.addTask {
                let stream = try await connection.newStream(protocols: [sinkProtocol])
                try await sendThroughSink(stream, bytes: share)
            }
        }
        try await tasks.waitForAll()
    }
    return Double(share * streams) / seconds(clock.now - start) / 1e6
}
