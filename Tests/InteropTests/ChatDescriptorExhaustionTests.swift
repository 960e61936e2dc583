import ChildProcess
import Foundation
import Host
import Multiformats
import NIOPosix
import Noise
import Ping
import TestSupport
import Transport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Found 3 of issue 14 against the chat binary: with few file descriptors
/// (`ulimit -n`) and more completed connections held than it has, the node
/// spun in accept and, after a while, died. It must stay up, stay idle, and
/// serve again once the connections are gone. `P2PCHAT_BINARY` picks another
/// binary (to measure an older build).
final class ChatDescriptorExhaustionTests: XCTestCase {
    static var binary: String {
        ProcessInfo.processInfo.environment["P2PCHAT_BINARY"]
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
            .appendingPathComponent("p2pchat").path
    }

    /// User and system CPU seconds of a process so far (from /proc).
    func cpuSeconds(of pid: pid_t) -> Double? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
            let close = stat.lastIndex(of: ")")
        else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        guard fields.count > 13, let user = Double(fields[11]), let system = Double(fields[12]) else { return nil }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// How many descriptors a process has open (from /proc).
    func openDescriptors(of pid: pid_t) -> Int? {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count
    }

    func testChatSurvivesRunningOutOfDescriptors() async throws {
        let group = MultiThreadedEventLoopGroup.singleton
        let descriptors = 256
        let chat = try ChildProcess(
            "/bin/sh",
            ["-c", "ulimit -n \(descriptors) && exec \(Self.binary) --no-mdns --json --ephemeral --listen /ip4/127.0.0.1/tcp/0"],
            stdinPipe: true, stderr: .discard)
        defer { chat.stop() }
        let target = try await waitFor("the chat printed its address", seconds: 20) { () -> Multiaddr? in
            let events = chat.outputLines.compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: String]
            }
            guard let peer = events.first(where: { $0["event"] == "local_peer" })?["peer"],
                let listening = events.first(where: { $0["event"] == "listening" })?["addr"]
            else { return nil }
            return try Multiaddr("\(listening)/p2p/\(peer)")
        }
        let idleDescriptors = try XCTUnwrap(openDescriptors(of: chat.pid))
        // Our side needs a descriptor per connection too.
        var limits = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
        limits.rlim_cur = limits.rlim_max
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
        // More completed connections than the chat has descriptors, each from its own peer.
        let clients = try (0..<(descriptors + 64)).map { _ in
            try Libp2pHost(key: .generateEd25519(), group: group, security: [NoiseSecurity()])
        }
        let connected = try await withThrowingTaskGroup(of: Bool.self) { tasks in
            for (index, client) in clients.enumerated() {
                tasks.addTask {
                    try await Task.sleep(for: .milliseconds(5 * index))
                    return (try? await withDeadline(20) { try await client.connect(target) }) != nil
                }
            }
            return try await tasks.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        // Held for a while: the chat must stay up and idle.
        let before = cpuSeconds(of: chat.pid) ?? 0
        try await Task.sleep(for: .seconds(15))
        let burnt = (cpuSeconds(of: chat.pid) ?? 0) - before
        print("chat with \(descriptors) descriptors, \(connected) of \(clients.count) connections held: \(burnt) s of CPU in 15 s, running: \(chat.isRunning)")
        XCTAssertTrue(chat.isRunning, "the chat died: \(String(describing: chat.termination))")
        XCTAssertLessThan(burnt, 3, "the chat spun while out of descriptors")
        for client in clients { await client.close() }
        // Served again once the connections are gone from the chat too.
        try await waitUntil("the chat closed the clients' connections", seconds: 20) {
            (openDescriptors(of: chat.pid) ?? .max) <= idleDescriptors + 8
        }
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await withDeadline(20) { try await client.connect(target) }
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        XCTAssertTrue(chat.isRunning)
        await client.close()
    }
}
