import ChatHistory
import FileShare
import Foundation
import Host
import Multiformats
import NIOCore
import Perf
import PubSub
import Synchronization
import Transport

// MARK: Files beside the chat, and history after a partition

/// Two hosts on the two loops, connected: the sender serves files, perf and
/// pubsub; the receiver fetches and subscribes.
struct DataPlanePair {
    let sender: Libp2pHost
    let receiver: Libp2pHost
    let senderFiles: FileShareService
    let receiverFiles: FileShareService
    let senderPubSub: PubSubService
    let receiverPubSub: PubSubService
    let connection: Connection

    static func make() async throws -> DataPlanePair {
        let sender = try makeBenchHost(key: .generateEd25519(), configuration: benchConfiguration, group: serverLoop)
        let receiver = try makeBenchHost(key: .generateEd25519(), configuration: benchConfiguration, group: clientLoop)
        PerfService(host: sender).start()
        // Experiments: P2PBENCH_FILE_CHUNK (bytes) and P2PBENCH_FILE_DEPTH (chunks in flight).
        var files = FileShareConfiguration()
        let environment = ProcessInfo.processInfo.environment
        if let chunk = environment["P2PBENCH_FILE_CHUNK"].flatMap(Int.init) { files.chunkSize = chunk }
        if let depth = environment["P2PBENCH_FILE_DEPTH"].flatMap(Int.init) { files.chunksInFlight = depth }
        let senderFiles = FileShareService(host: sender, configuration: files)
        senderFiles.start()
        let senderPubSub = try PubSubService(host: sender)
        let receiverPubSub = try PubSubService(host: receiver)
        senderPubSub.start()
        receiverPubSub.start()
        let address = try await sender.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])[0]
        let connection = try await receiver.connect(address.encapsulating(.p2p(sender.localPeer.bytes)))
        return DataPlanePair(
            sender: sender, receiver: receiver, senderFiles: senderFiles, receiverFiles: FileShareService(host: receiver, configuration: files),
            senderPubSub: senderPubSub, receiverPubSub: receiverPubSub, connection: connection)
    }

    func close() async {
        await senderPubSub.stop()
        await receiverPubSub.stop()
        await receiver.close()
        await sender.close()
    }
}

func percentile(_ values: [Double], _ fraction: Double) -> Double {
    guard !values.isEmpty else { return .nan }
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * fraction))]
}

/// Chat lines (pubsub messages carrying their send time) from sender to
/// receiver every 10 ms while `during` runs; their delivery latencies in ms.
func chatLatencies(_ pair: DataPlanePair, while during: @escaping @Sendable () async throws -> Void) async throws -> [Double] {
    let topic = "bench-latency"
    let messages = await pair.receiverPubSub.subscribe(topic)
    _ = await pair.senderPubSub.subscribe(topic)
    while await !pair.senderPubSub.peers(in: topic).contains(pair.receiver.localPeer) {
        try await Task.sleep(for: .milliseconds(10))
    }
    let origin = ContinuousClock.now
    let latencies = Mutex<[Double]>([])
    let collector = Task {
        for await message in messages where message.data.count == 8 {
            let sentNanos = message.data.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let now = ContinuousClock.now - origin
            let nowNanos = UInt64(now.components.seconds) * 1_000_000_000 + UInt64(now.components.attoseconds / 1_000_000_000)
            latencies.withLock { $0.append(Double(nowNanos &- sentNanos) / 1e6) }
        }
    }
    let done = Atomic<Bool>(false)
    let publisher = Task {
        while !done.load(ordering: .relaxed) {
            let elapsed = ContinuousClock.now - origin
            let nanos = UInt64(elapsed.components.seconds) * 1_000_000_000 + UInt64(elapsed.components.attoseconds / 1_000_000_000)
            _ = try? await pair.senderPubSub.publish(topic, data: (0..<8).map { UInt8(truncatingIfNeeded: nanos >> (56 - 8 * UInt64($0))) })
            try? await Task.sleep(for: .milliseconds(10))
        }
    }
    try await during()
    done.store(true, ordering: .relaxed)
    await publisher.value
    try await Task.sleep(for: .milliseconds(200))
    collector.cancel()
    await pair.receiverPubSub.unsubscribe(topic)
    await pair.senderPubSub.unsubscribe(topic)
    return latencies.withLock { $0 }
}

func runFileBenchmarks(megabytes: Int) async throws {
    let size = UInt64(megabytes) * 1024 * 1024
    let work = NSTemporaryDirectory() + "p2pbench-files-\(UUID().uuidString)"
    let downloads = work + "/downloads"
    try FileManager.default.createDirectory(atPath: downloads, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(atPath: work) }
    // A sparse file: its bytes come from the page cache, as a file just written would.
    let path = work + "/payload.bin"
    FileManager.default.createFile(atPath: path, contents: nil)
    let handle = try XCTUnwrapFile(FileHandle(forWritingAtPath: path))
    try handle.truncate(atOffset: size)
    try handle.close()
    let pair = try await DataPlanePair.make()
    let offer = try await pair.senderFiles.offer(path: path)
    let rounds = ProcessInfo.processInfo.environment["P2PBENCH_ROUNDS"].flatMap(Int.init) ?? 3
    print("files: \(megabytes) MiB, loopback, sender and receiver on separate loops, median of \(rounds) alternating rounds")
    var fileRates: [Double] = []
    var perfRates: [Double] = []
    // Both ends' CPU (user + system) per MB moved, and the cores that kept busy.
    var fileCPU: [Double] = []
    var perfCPU: [Double] = []
    var peakResident = 0
    let startResident = ownResidentBytes()
    for _ in 0..<rounds {
        let sampler = Task {
            var peak = 0
            while !Task.isCancelled {
                peak = max(peak, ownResidentBytes())
                try? await Task.sleep(for: .milliseconds(50))
            }
            return peak
        }
        let start = ContinuousClock.now
        let cpuBefore = ownCPUSeconds()
        let fetchBegan = monotonicSeconds()
        let saved = try await pair.receiverFiles.fetch(offer, from: pair.sender.localPeer, into: downloads)
        let elapsed = seconds(ContinuousClock.now - start)
        fileCPU.append(ownCPUSeconds() - cpuBefore)
        printPhase("fetch", from: fetchBegan)
        sampler.cancel()
        peakResident = max(peakResident, await sampler.value)
        try FileManager.default.removeItem(atPath: saved)
        fileRates.append(Double(size) / elapsed / 1e6)
        let perfCPUBefore = ownCPUSeconds()
        let perfBegan = monotonicSeconds()
        let perf = try await PerfService.run(pair.connection, upload: 0, download: size)
        perfCPU.append(ownCPUSeconds() - perfCPUBefore)
        printPhase("perf", from: perfBegan)
        perfRates.append(Double(size) / seconds(perf.downloadDuration) / 1e6)
    }
    let files = median(fileRates)
    let perf = median(perfRates)
    report("file transfer (fetch, verify, write)", files, "MB/s" + spread(fileRates))
    report("perf download, same connection", perf, "MB/s" + spread(perfRates))
    report("  file transfer / perf", files / perf, "")
    let megabytesMoved = Double(size) / 1e6
    report("CPU per MB, file transfer / perf", median(fileCPU) / megabytesMoved * 1000,
        String(format: "/ %.2f ms (both ends, user + system)", median(perfCPU) / megabytesMoved * 1000))
    report("  cores busy meanwhile, file / perf", median(fileCPU) / (megabytesMoved / files),
        String(format: "/ %.2f of %d", median(perfCPU) / (megabytesMoved / perf), ProcessInfo.processInfo.activeProcessorCount))
    report("resident memory before / peak during", Double(startResident) / 1048576, String(format: "/ %.1f MiB", Double(peakResident) / 1048576))
    // Chat latency, idle and while the file moves.
    let idle = try await chatLatencies(pair) { try await Task.sleep(for: .seconds(2)) }
    let loaded = try await chatLatencies(pair) {
        let saved = try await pair.receiverFiles.fetch(offer, from: pair.sender.localPeer, into: downloads)
        try FileManager.default.removeItem(atPath: saved)
    }
    report("chat line latency idle, p50 / p99", percentile(idle, 0.5), String(format: "/ %.2f ms (%d lines)", percentile(idle, 0.99), idle.count))
    report("  while the file moves, p50 / p99", percentile(loaded, 0.5), String(format: "/ %.2f ms (%d lines)", percentile(loaded, 0.99), loaded.count))
    await pair.close()
}

func runHistoryBenchmark(count: Int = 10_000) async throws {
    let pair = try await DataPlanePair.make()
    let holder = try HistoryService(host: pair.sender, maxCount: count)
    holder.start()
    let asker = try HistoryService(host: pair.receiver, maxCount: count)
    var first: PubSubMessage?
    for index in 0..<count {
        let message = try await pair.senderPubSub.publishMessage("bench-history", data: Array("line \(index) of the history".utf8)).message
        holder.record(message)
        if first == nil { first = message }
    }
    // The asker saw the first line, then was cut off for the rest.
    if let first { asker.record(first) }
    let start = ContinuousClock.now
    let result = try await asker.sync(topic: "bench-history", with: pair.sender.localPeer)
    let elapsed = seconds(ContinuousClock.now - start)
    precondition(result.new.count == count - 1, "synced \(result.new.count) of \(count - 1)")
    report("history sync of \(count - 1) missed messages", elapsed * 1000, "ms (verified, in order)")
    await pair.close()
}

/// This process's user plus system CPU time so far, in seconds (`getrusage`).
func ownCPUSeconds() -> Double {
    var usage = rusage()
    getrusage(RUSAGE_SELF.rawValue, &usage)
    func seconds(_ time: timeval) -> Double { Double(time.tv_sec) + Double(time.tv_usec) / 1e6 }
    return seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// CLOCK_MONOTONIC now, in seconds: the clock of `perf record -k CLOCK_MONOTONIC`.
func monotonicSeconds() -> Double {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return Double(now.tv_sec) + Double(now.tv_nsec) / 1e9
}

/// With P2PBENCH_PHASES set, prints when a measured phase ran (CLOCK_MONOTONIC
/// seconds), to profile it alone: `perf record -k CLOCK_MONOTONIC`, then
/// `perf report --time START,END`.
func printPhase(_ name: String, from start: Double) {
    guard ProcessInfo.processInfo.environment["P2PBENCH_PHASES"] != nil else { return }
    print("phase \(name) " + String(format: "%.6f,%.6f", start, monotonicSeconds()))
}

/// Unwraps a file handle or says which file could not be opened.
func XCTUnwrapFile(_ handle: FileHandle?) throws -> FileHandle {
    guard let handle else { throw CocoaError(.fileWriteUnknown) }
    return handle
}
