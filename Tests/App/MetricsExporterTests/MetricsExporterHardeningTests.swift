import Foundation
import MetricsExporter
import Multiformats
import NIOCore
import NIOPosix
import Prometheus
import TestSupport
import XCTest

/// Issue 25, row 13: what a client of `--metrics` can make the node hold.
final class MetricsExporterHardeningTests: XCTestCase {
    /// A registry whose text is about 60 KiB (1000 labelled counters), so that answers weigh.
    static func heavyRegistry() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        let descriptor = MetricNameDescriptor(metricName: "p2p_test", unitName: "total", helpText: "")
        for index in 0..<1000 {
            registry.makeCounter(descriptor: descriptor, labels: [("peer", "peer-number-\(index)")]).increment(by: Int64(index))
        }
        return registry
    }

    static func serve(_ registry: PrometheusCollectorRegistry, limits: MetricsExporterLimits = .init()) async throws -> (MetricsExporter, UInt16) {
        let exporter = try await MetricsExporter.serve(registry, on: try Multiaddr("/ip4/127.0.0.1/tcp/0"), limits: limits)
        guard case .tcp(let port)? = exporter.address.components.last else { throw XCTSkip("no port in \(exporter.address)") }
        return (exporter, port)
    }

    static let get = Array("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".utf8)

    static var residentBytes: Int {
        let fields = (try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8))?.split(separator: " ") ?? []
        return (fields.count > 1 ? Int(fields[1]) ?? 0 : 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    /// Row 13: a client pipelines 4000 requests and never reads an answer.
    /// The exporter answers one, reads nothing more until it is taken, and
    /// closes the connection (too many waiting, then the timeout): the
    /// process grows by less than 32 MiB. Before, every request was answered
    /// into the connection's write queue (60 KiB each here: about 240 MB; the
    /// report's +1.7 GiB in 6 s).
    func testPipelinedRequestsAccumulateNothing() async throws {
        let (exporter, port) = try await Self.serve(Self.heavyRegistry())
        let answer = try LoopbackTCPClient(port: port)
        answer.send(Self.get)
        let one = answer.readAll()
        XCTAssertTrue(String(decoding: one.prefix(15), as: UTF8.self).hasPrefix("HTTP/1.1 200 OK"))
        XCTAssertGreaterThan(one.count, 40_000, "a heavy answer")
        let before = Self.residentBytes
        try await withDeadline(30) {
            let client = try LoopbackTCPClient(port: port, receiveBuffer: 4096)
            let burst = Array([[UInt8]](repeating: Self.get, count: 4000).joined())
            var sent = 0
            let until = Date().addingTimeInterval(3)
            while sent < burst.count, Date() < until {
                let count = client.send(Array(burst[sent...]), blocking: false)
                if count > 0 { sent += count } else { try await Task.sleep(for: .milliseconds(10)) }
            }
            // Give the server the time it would take to answer everything it read.
            try await Task.sleep(for: .seconds(2))
            let grown = Self.residentBytes - before
            XCTAssertLessThan(grown, 32 << 20, "\(grown) bytes more after \(sent) bytes of pipelined requests")
            XCTAssertTrue(client.isClosedByServer(within: 5))
        }
        try await exporter.close()
    }

    /// Row 13: 40 connections held open: 16 are kept, the others closed at
    /// once; those kept are closed when idle past the timeout, and a scrape
    /// then works. Before, every connection was kept for ever (1100 idle
    /// connections took the process's descriptors and stopped p2p pings).
    func testConnectionsAreCappedAndIdleOnesClosed() async throws {
        var limits = MetricsExporterLimits()
        limits.timeout = .seconds(3)
        let (exporter, port) = try await Self.serve(PrometheusCollectorRegistry(), limits: limits)
        let kept = limits.maxConnections
        try await withDeadline(30) {
            let start = Date()
            let clients = try (0..<40).map { _ in try LoopbackTCPClient(port: port) }
            try await waitUntil("the connections over the cap are closed", seconds: 2) { exporter.refusedConnections == 40 - kept }
            try await Task.sleep(for: .milliseconds(100))
            let closedAtOnce = clients.filter { $0.isClosedByServer(within: 0) }.count
            XCTAssertEqual(closedAtOnce, 40 - kept)
            XCTAssertLessThan(Date().timeIntervalSince(start), 2.5, "closed at once, not by the timeout")
            XCTAssertEqual(exporter.openConnections, kept)
            // The idle ones go after the timeout.
            let idleClosed = clients.filter { $0.isClosedByServer(within: 5) }.count
            XCTAssertEqual(idleClosed, 40)
            // Room again: a scrape works.
            let scrape = try LoopbackTCPClient(port: port)
            scrape.send(Self.get)
            XCTAssertTrue(String(decoding: scrape.readAll().prefix(15), as: UTF8.self).hasPrefix("HTTP/1.1 200 OK"))
        }
        try await exporter.close()
    }

    /// Row 13: a request over 8 KiB (a 20 KiB header) closes the connection
    /// unanswered; a slow client (a header trickled in) is closed at the timeout.
    /// Before, headers up to NIO's 80 KiB were taken and answered.
    func testLargeAndSlowRequestsAreRefused() async throws {
        var limits = MetricsExporterLimits()
        limits.timeout = .seconds(1)
        let (exporter, port) = try await Self.serve(PrometheusCollectorRegistry(), limits: limits)
        try await withDeadline(30) {
            let large = try LoopbackTCPClient(port: port)
            large.send(Array("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Padding: \(String(repeating: "a", count: 20_000))\r\n\r\n".utf8))
            let answer = large.readAll()
            XCTAssertFalse(String(decoding: answer.prefix(15), as: UTF8.self).hasPrefix("HTTP/1.1 200"), "answered")
            XCTAssertTrue(large.isClosedByServer(within: 2))
            let slow = try LoopbackTCPClient(port: port)
            slow.send(Array("GET /metrics HTTP/1.1\r\n".utf8))
            let start = Date()
            for _ in 0..<4 {
                slow.send(Array("X-A: b\r\n".utf8))
                try await Task.sleep(for: .milliseconds(400))
            }
            XCTAssertTrue(slow.isClosedByServer(within: 3))
            XCTAssertLessThan(Date().timeIntervalSince(start), 4)
        }
        try await exporter.close()
    }
}
