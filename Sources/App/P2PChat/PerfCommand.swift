import ArgumentParser
import Foundation
import Host
import Identity
import Libp2p
import Multiformats
import ServiceLifecycle
import Perf
import Transport

/// A byte count typed as `1048576`, `64KiB`, `100M`, `1GiB` (binary) or `10MB`, `1GB` (decimal).
struct ByteCount: ExpressibleByArgument, Sendable {
    let value: UInt64

    init?(argument: String) {
        let text = argument.trimmingCharacters(in: .whitespaces)
        let digits = text.prefix { $0.isNumber }
        guard let number = UInt64(digits) else { return nil }
        let multipliers: [String: UInt64] = [
            "": 1, "B": 1,
            "K": 1 << 10, "KI": 1 << 10, "KIB": 1 << 10, "KB": 1000,
            "M": 1 << 20, "MI": 1 << 20, "MIB": 1 << 20, "MB": 1_000_000,
            "G": 1 << 30, "GI": 1 << 30, "GIB": 1 << 30, "GB": 1_000_000_000,
        ]
        guard let multiplier = multipliers[text.dropFirst(digits.count).uppercased()] else { return nil }
        let (product, overflow) = number.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { return nil }
        value = product
    }
}

struct PerfCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perf",
        abstract: "Measure throughput to a peer over /perf/1.0.0: upload, then download.",
        discussion: "The peer must serve /perf/1.0.0 (p2pchat perf-server, or any libp2p perf server).")

    @Argument(help: "The server's multiaddr, e.g. /ip4/127.0.0.1/tcp/4001/p2p/12D3KooW...")
    var address: String

    @Option(help: "Bytes to upload (suffixes K, M, G = KiB, MiB, GiB; KB, MB, GB decimal).")
    var upload: ByteCount = ByteCount(argument: "100MiB")!

    @Option(help: "Bytes to download.")
    var download: ByteCount = ByteCount(argument: "100MiB")!

    @Option(help: "Seconds to wait for the connection and for the transfer.")
    var timeout: Double = 120

    @Flag(help: "Print the result as one JSON object.")
    var json = false

    @OptionGroup var identity: IdentityOptions

    func run() async throws {
        let (target, host, _) = startTool(address: address, identity: identity)
        let (upload, download, timeout, json) = (self.upload.value, self.download.value, self.timeout, self.json)
        do {
            let clock = ContinuousClock()
            let start = clock.now
            let connection = try await withTimeout(.milliseconds(Int(timeout * 1000)), "connecting to \(address)") {
                try await host.connect(target)
            }
            let connectTime = clock.now - start
            let result = try await withTimeout(.milliseconds(Int(timeout * 1000)), "perf transfer") {
                try await PerfService.run(connection, upload: upload, download: download)
            }
            if json {
                say(
                    jsonLine([
                        "peer": .string("\(connection.remotePeer)"),
                        "connect_seconds": .decimal(connectTime.seconds, digits: 6),
                        "upload_bytes": .int(result.uploadBytes),
                        "upload_seconds": .decimal(result.uploadDuration.seconds, digits: 6),
                        "upload_bytes_per_second": .decimal(result.uploadBytesPerSecond, digits: 0),
                        "download_bytes": .int(result.downloadBytes),
                        "download_seconds": .decimal(result.downloadDuration.seconds, digits: 6),
                        "download_bytes_per_second": .decimal(result.downloadBytesPerSecond, digits: 0),
                    ]))
            } else {
                say("Connected to \(connection.remotePeer) in \(formatMilliseconds(connectTime)) (\(connection.transport) + \(connection.security) + \(connection.muxer))")
                say(describe("Uploaded", result.uploadBytes, result.uploadDuration, result.uploadBytesPerSecond))
                say(describe("Downloaded", result.downloadBytes, result.downloadDuration, result.downloadBytesPerSecond))
            }
            await host.close()
        } catch {
            await host.close()
            exitWithError("\(error)")
        }
    }

    func describe(_ verb: String, _ bytes: UInt64, _ duration: Duration, _ rate: Double) -> String {
        let throughput = bytes == 0 ? "-" : "\(formatNumber(rate / 1e6, digits: 1)) MB/s (\(formatNumber(rate * 8 / 1e6, digits: 0)) Mbit/s)"
        return "\(verb) \(bytes) bytes in \(formatNumber(duration.seconds, digits: 3)) s: \(throughput)"
    }
}

struct PerfServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perf-server",
        abstract: "Serve /perf/1.0.0 (and ping, identify) until SIGINT or SIGTERM.")

    @Option(help: "Address to listen on (repeatable).")
    var listen: [String] = ["/ip4/0.0.0.0/tcp/0", "/ip6/::/tcp/0", "/ip4/0.0.0.0/udp/0/quic-v1", "/ip6/::/udp/0/quic-v1"]

    @OptionGroup var identity: IdentityOptions
    @OptionGroup var metrics: MetricsOption

    func run() async throws {
        bootstrapLogging(verbose: identity.verbose)
        let signals = TerminationSignalService()
        let exporter = await metrics.start { say("Metrics at \($0)/metrics") }
        let (host, identify, ping) = makeHost(key: identity.toolKey(), options: identity)
        let perf = PerfService(host: host)
        perf.start()
        await listenOrExit(host, on: listen) { FileHandle.standardError.write(Data("error: \($0)\n".utf8)) }
        say("Local peer id: \(host.localPeer)")
        for address in host.listenAddresses {
            say("Listening on \(address.encapsulating(.p2p(host.localPeer.bytes)))")
        }
        var services: [any Service] = []
        // The exporter is shut down last: it reports until the host is gone.
        if let exporter { services.append(StartStopService("metrics", stop: { try? await exporter.close() })) }
        await runUntilTerminationSignal(signals, services + [HostService(host), identify.service(), ping.service(), perf.service()])
    }
}
