import Foundation
import Host
import Multiformats
import Ping
import Synchronization
import Transport

#if canImport(Glibc)
import Glibc
#endif

// MARK: One node with many connections

// The listener runs in a process of its own (this binary, `connections-listener`),
// so that its resident memory and CPU time are its own; the dialers are hosts
// in this process, one per connection, over TCP+Noise+Yamux on loopback.

/// Raises the soft descriptor limit to the hard one: N connections need N
/// sockets on each side, and `HostLimits` shrinks its connection limit to fit
/// the descriptors (children inherit the raised limit).
func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 0 }
    if limit.rlim_cur < limit.rlim_max {
        limit.rlim_cur = limit.rlim_max
        _ = setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit)
    }
    return Int(clamping: limit.rlim_cur)
}

/// User plus system CPU time of process `pid` so far (from /proc/<pid>/stat), in seconds.
func cpuSeconds(pid: Int32) -> Double {
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
        let end = stat.lastIndex(of: ")")
    else { return 0 }
    // After the command name: state is field 3, utime field 14, stime field 15.
    let fields = stat[stat.index(after: end)...].split(separator: " ")
    guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
    return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
}

/// Limits that let one host hold `connections` from loopback: the defaults
/// refuse beyond 512 connections and trim beyond 256 (the high-water mark).
/// Loopback is already exempt from the per-IP caps (`limitLoopback` false).
func connectionsBenchLimits(connections: Int) -> HostLimits {
    var limits = HostLimits()
    limits.maxConnections = connections + 64
    limits.highWater = connections + 64
    limits.lowWater = connections + 32
    return limits
}

/// `p2pbench connections-listener N`: a host that answers pings and holds up
/// to N connections. Prints `listening <address>`; answers each `stats` line
/// on its standard input with `connections <open> refused <refused> trimmed <trimmed>`;
/// exits at the end of its input.
func runConnectionsListener(connections: Int) async throws -> Never {
    _ = raiseDescriptorLimit()
    let host = try makeBenchHost(
        key: .generateEd25519(), configuration: benchConfiguration, group: group,
        limits: connectionsBenchLimits(connections: connections))
    PingService(host: host).start()
    let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
    // Written unbuffered: stdout is a pipe, where print would hold it back.
    FileHandle.standardOutput.write(Data("listening \(bound[0].encapsulating(.p2p(host.localPeer.bytes)))\n".utf8))
    // Standard input is read on a thread of its own: a blocking read must not
    // hold one of the concurrency pool's threads.
    let (lines, continuation) = AsyncStream.makeStream(of: String.self)
    Thread.detachNewThread {
        while let line = readLine() { continuation.yield(line) }
        continuation.finish()
    }
    for await line in lines where line == "stats" {
        let counters = host.limitCounters
        let refused = counters.refusedConnections.values.reduce(0, +) + counters.transport.values.reduce(0, +)
        FileHandle.standardOutput.write(
            Data("connections \(host.connections.count) refused \(refused) trimmed \(counters.trimmed)\n".utf8))
    }
    await host.close()
    exit(0)
}

/// The listener process, its standard input and output.
struct ListenerProcess {
    let process: Process
    let input: FileHandle
    let output: FileHandle
    var pending = ""

    /// The next line the listener prints (waits for it; nil at its end). It
    /// blocks its thread, as `memory(connections:)` does: only while the
    /// listener starts or answers `stats`, when nothing else is measured.
    mutating func readLine() -> String? {
        while !pending.contains("\n") {
            let data = output.availableData
            if data.isEmpty { return nil }
            pending += String(decoding: data, as: UTF8.self)
        }
        let end = pending.firstIndex(of: "\n")!
        let line = String(pending[..<end])
        pending = String(pending[pending.index(after: end)...])
        return line
    }

    mutating func stats() -> String {
        input.write(Data("stats\n".utf8))
        return readLine() ?? "(no answer)"
    }
}

struct ConnectionsFigures {
    var opened = 0
    var openPerSecond = 0.0
    var listenerIdleBytes = 0
    var listenerBytesPerConnection = 0
    var listenerCPUPerConnection = 0.0
    var pingP50 = 0.0
    var pingP99 = 0.0
    var pingWithStreamP50 = 0.0
    var pingWithStreamP99 = 0.0
    var idleCPUSeconds = 0.0
    var listenerStats = ""
}

/// Opens `connections` connections to a fresh listener process, `concurrency` dials at a time.
func connectionsBenchmark(connections: Int, concurrency: Int, idleSeconds: Int) async throws -> ConnectionsFigures {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: CommandLine.arguments[0])
    process.arguments = ["connections-listener", String(connections)]
    let output = Pipe()
    let input = Pipe()
    process.standardOutput = output
    process.standardInput = input
    try process.run()
    defer { if process.isRunning { process.terminate() } }
    var listener = ListenerProcess(
        process: process, input: input.fileHandleForWriting, output: output.fileHandleForReading)
    // Its first lines are the load average.
    var line = listener.readLine()
    while let text = line, !text.hasPrefix("listening ") { line = listener.readLine() }
    guard let line else { throw ConnectionsBenchError.listenerDidNotStart }
    let address = try Multiaddr(String(line.dropFirst("listening ".count)))
    let pid = process.processIdentifier
    try await Task.sleep(for: .milliseconds(500))
    var figures = ConnectionsFigures()
    figures.listenerIdleBytes = residentBytes(pid: pid)

    let clients = try (0..<connections).map { _ in
        try makeBenchHost(key: .generateEd25519(), configuration: benchConfiguration, group: group, transports: [TCPTransport(group: group)])
    }
    let cpuBeforeOpening = cpuSeconds(pid: pid)
    let start = clock.now
    let opened: [Connection] = try await withThrowingTaskGroup(of: Connection.self) { tasks in
        var next = 0
        var opened: [Connection] = []
        while next < min(concurrency, clients.count) {
            let client = clients[next]
            tasks.addTask { try await client.connect(address) }
            next += 1
        }
        while let connection = try await tasks.next() {
            opened.append(connection)
            if next < clients.count {
                let client = clients[next]
                tasks.addTask { try await client.connect(address) }
                next += 1
            }
        }
        return opened
    }
    figures.openPerSecond = Double(opened.count) / seconds(clock.now - start)
    figures.opened = opened.count
    figures.listenerCPUPerConnection = (cpuSeconds(pid: pid) - cpuBeforeOpening) / Double(connections)

    // One ping on each connection, one after another: its round trip as
    // PingService times it, and with the opening of its stream.
    var roundTrips: [Double] = []
    var withStream: [Double] = []
    for connection in opened {
        let pingStart = clock.now
        let rtts = try await PingService.ping(connection, count: 1)
        withStream.append(seconds(clock.now - pingStart) * 1e6)
        roundTrips.append(seconds(rtts[0]) * 1e6)
    }
    roundTrips.sort()
    withStream.sort()
    figures.pingP50 = roundTrips[roundTrips.count / 2]
    figures.pingP99 = roundTrips[roundTrips.count * 99 / 100]
    figures.pingWithStreamP50 = withStream[withStream.count / 2]
    figures.pingWithStreamP99 = withStream[withStream.count * 99 / 100]

    try await Task.sleep(for: .milliseconds(500))
    figures.listenerBytesPerConnection = (residentBytes(pid: pid) - figures.listenerIdleBytes) / connections
    // Idle: every connection open, nothing sent.
    let cpuBeforeIdle = cpuSeconds(pid: pid)
    try await Task.sleep(for: .seconds(idleSeconds))
    figures.idleCPUSeconds = cpuSeconds(pid: pid) - cpuBeforeIdle
    figures.listenerStats = listener.stats()

    for client in clients { await client.close() }
    try? listener.input.close()
    process.waitUntilExit()
    return figures
}

enum ConnectionsBenchError: Error, CustomStringConvertible {
    case listenerDidNotStart
    var description: String { "the connections-listener process did not print its address" }
}

/// `p2pbench connections [N...]`: for each N (100, 500, 1000 by default), a fresh listener and N connections.
func runConnectionsBenchmarks(counts: [Int]) async throws {
    let descriptors = raiseDescriptorLimit()
    let concurrency = 8
    let idleSeconds = 10
    print("p2pbench: one listener process, N TCP+Noise+Yamux connections from N hosts in this one, loopback")
    print("p2pbench: \(concurrency) dials at a time; listener limits: maxConnections N+64, highWater N+64 (defaults 512, 256); descriptors \(descriptors)")
    for count in counts {
        let figures = try await connectionsBenchmark(connections: count, concurrency: concurrency, idleSeconds: idleSeconds)
        print("N = \(count) (listener: \(figures.listenerStats))")
        report("  connections opened", Double(figures.opened), "")
        report("  opening rate", figures.openPerSecond, "connections/s")
        report("  listener CPU per connection opened", figures.listenerCPUPerConnection * 1e3, "ms")
        report("  listener resident memory, no connection", Double(figures.listenerIdleBytes) / 1024 / 1024, "MiB")
        report("  listener resident memory per connection", Double(figures.listenerBytesPerConnection) / 1024, "KiB")
        report("  one ping on each, round trip p50", figures.pingP50, "µs")
        report("  one ping on each, round trip p99", figures.pingP99, "µs")
        report("  with opening its stream, p50", figures.pingWithStreamP50, "µs")
        report("  with opening its stream, p99", figures.pingWithStreamP99, "µs")
        // /proc counts CPU time in clock ticks (10 ms).
        report("  listener CPU time in \(idleSeconds) s idle", figures.idleCPUSeconds * 1e3, "ms (in 10 ms ticks)")
    }
}
