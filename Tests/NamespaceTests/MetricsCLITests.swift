import ChildProcess
import Foundation
import TestSupport
import XCTest

/// `--metrics` and `P2PCHAT_LOG` on the chat binary, on loopback.
final class MetricsCLITests: XCTestCase {
    /// Two chats exchange a line; A's /metrics, scraped over HTTP, counts the
    /// connection, its streams, bytes, the delivered message and the mesh, and a
    /// garbage dial as a handshake failure; `P2PCHAT_LOG=pubsub=debug` logs pubsub
    /// at debug level and the host at the default (warning) only.
    func testMetricsAreScrapedAndLogLevelsApplyPerSubsystem() async throws {
        let a = try ChatProcess(
            namespace: nil, executable: "/usr/bin/env",
            arguments: [
                "P2PCHAT_LOG=pubsub=debug", ChatProcess.binary, "--no-mdns", "--json", "--ephemeral",
                "--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "/ip4/127.0.0.1/tcp/0",
            ],
            network: nil, stderr: .capture)
        try await a.waitFor("listening", within: 20) { $0.contains("\"event\":\"listening\"") }
        let events = a.events
        let metricsAddress = try XCTUnwrap(events.first { $0["event"] == "metrics" }?["addr"])
        let port = try XCTUnwrap(metricsAddress.split(separator: "/").last.flatMap { UInt16($0) })
        let peer = try XCTUnwrap(events.first { $0["event"] == "local_peer" }?["peer"])
        let listen = try XCTUnwrap(events.first { $0["event"] == "listening" }?["addr"])
        let b = try ChatProcess(
            namespace: nil,
            arguments: ["--no-mdns", "--json", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--connect", "\(listen)/p2p/\(peer)"],
            network: nil)
        try await b.waitFor("A joined", within: 10) { $0.contains("\"event\":\"joined\"") && $0.contains(peer) }
        b.send("hello metrics")
        try await a.waitFor("the message", within: 10) { $0.contains("hello metrics") }
        // A connection that opens with another header than multistream-select's fails its upgrade.
        let listenPort = try XCTUnwrap(listen.split(separator: "/").last.flatMap { UInt16($0) })
        _ = try Self.exchange(port: listenPort, request: "\u{6}hello\n")

        // The mesh forms on a heartbeat (1 s) and the failure is counted when the socket closes: wait for both.
        var metrics: [String: Double] = [:]
        let deadline = Date().addingTimeInterval(15)
        repeat {
            let response = try Self.exchange(port: port, request: "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 200 OK"), response)
            metrics = Self.samples(response)
            if metrics["libp2p_pubsub_mesh_peers{topic=\"lobby\"}"] == 1,
                metrics["libp2p_handshake_failures_total{reason=\"negotiation\"}"] != nil
            {
                break
            }
            try await Task.sleep(for: .milliseconds(200))
        } while Date() < deadline
        let connection = "direction=\"inbound\",transport=\"tcp\",security=\"/noise\""
        XCTAssertEqual(metrics["libp2p_connections{\(connection)}"], 1, "\(metrics)")
        XCTAssertEqual(metrics["libp2p_connections_opened_total{\(connection)}"], 1)
        XCTAssertGreaterThanOrEqual(
            metrics["libp2p_streams_opened_total{protocol=\"/meshsub/1.2.0\",direction=\"inbound\"}"] ?? 0, 1, "\(metrics)")
        XCTAssertGreaterThanOrEqual(
            metrics["libp2p_streams_opened_total{protocol=\"/ipfs/id/1.0.0\",direction=\"inbound\"}"] ?? 0, 1, "\(metrics)")
        XCTAssertGreaterThan(metrics["libp2p_bytes_received_total"] ?? 0, 1000)
        XCTAssertGreaterThan(metrics["libp2p_bytes_sent_total"] ?? 0, 1000)
        XCTAssertEqual(metrics["libp2p_pubsub_messages_delivered_total"], 1)
        XCTAssertEqual(metrics["libp2p_pubsub_duplicates_total"], 0)
        XCTAssertEqual(metrics["libp2p_pubsub_messages_rejected_total{reason=\"invalidSignature\"}"], 0)
        XCTAssertEqual(metrics["libp2p_pubsub_graylisted_peers"], 0)
        XCTAssertEqual(metrics["libp2p_pubsub_mesh_peers{topic=\"lobby\"}"], 1)
        XCTAssertEqual(metrics["libp2p_handshake_failures_total{reason=\"negotiation\"}"], 1, "\(metrics)")
        let notFound = try Self.exchange(port: port, request: "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        XCTAssertTrue(notFound.hasPrefix("HTTP/1.1 404"), notFound)

        b.closeInput()
        _ = try await b.waitForExit(within: 10)
        a.closeInput()
        _ = try await a.waitForExit(within: 10)
        let log = try await Self.stderr(of: a.process, containing: " debug p2p.pubsub")
        XCTAssertFalse(log.contains(" debug p2p.host"), "the host stays at warning:\n\(log)")
    }

    /// A bad P2PCHAT_LOG entry is an error, not ignored.
    func testBadLogLevelIsRefused() async throws {
        let chat = try ChatProcess(
            namespace: nil, executable: "/usr/bin/env",
            arguments: ["P2PCHAT_LOG=pubsub=loud", ChatProcess.binary, "--no-mdns", "--ephemeral"], network: nil,
            stderr: .capture)
        let status = try await chat.waitForExit(within: 20)
        XCTAssertEqual(status, 1)
        _ = try await Self.stderr(of: chat.process, containing: "P2PCHAT_LOG: bad entry \"pubsub=loud\"")
    }

    /// The process's stderr once it contains `text` (its reader may lag behind the exit); fails after 10 s.
    static func stderr(of process: ChildProcess, containing text: String) async throws -> String {
        let deadline = Date().addingTimeInterval(10)
        while !process.stderrText.contains(text) && Date() < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        let log = process.stderrText
        XCTAssertTrue(log.contains(text), "stderr never showed \(text):\n\(log)")
        return log
    }

    /// The samples of a Prometheus text response: `name{labels}` to value.
    static func samples(_ response: String) -> [String: Double] {
        var result: [String: Double] = [:]
        let body = response.components(separatedBy: "\r\n\r\n").dropFirst().joined(separator: "\r\n\r\n")
        for line in body.split(separator: "\n") where !line.hasPrefix("#") {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else { continue }
            result[String(line[..<space])] = value
        }
        return result
    }

    /// Sends `request` to 127.0.0.1:`port` and reads until the server closes (at most 10 s).
    static func exchange(port: UInt16, request: String) throws -> String {
        try LoopbackTCPClient.exchange(port: port, request: request)
    }
}
