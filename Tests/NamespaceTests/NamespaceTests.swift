import Foundation
import XCTest

/// A set of network namespaces joined by a bridge (in a namespace of its own),
/// created for one test and removed after it. Addresses come from 192.0.2.0/24
/// (TEST-NET-1), which exists only inside these namespaces.
final class TestNetwork {
    let prefix: String
    private(set) var hosts: [String] = []
    private var processes: [Process] = []

    init() throws {
        guard getuid() == 0 else {
            print("SKIPPED: namespace tests need root (ip netns); they run in CI as root")
            throw XCTSkip("SKIPPED: namespace tests need root")
        }
        prefix = "p2pt\(getpid() % 100_000)"
        try Self.ip(["netns", "add", "\(prefix)-br"])
        try Self.ip(["-n", "\(prefix)-br", "link", "add", "br0", "type", "bridge"])
        try Self.ip(["-n", "\(prefix)-br", "link", "set", "br0", "up"])
    }

    /// Adds a host namespace with address 192.0.2.<index> on the bridge.
    func addHost(_ index: Int) throws -> String {
        let name = "\(prefix)-n\(index)"
        let veth = "\(prefix)v\(index)"
        try Self.ip(["netns", "add", name])
        hosts.append(name)
        try Self.ip(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
        try Self.ip(["link", "set", veth, "netns", "\(prefix)-br"])
        try Self.ip(["-n", "\(prefix)-br", "link", "set", veth, "master", "br0"])
        try Self.ip(["-n", "\(prefix)-br", "link", "set", veth, "up"])
        try Self.ip(["-n", name, "addr", "add", "192.0.2.\(index)/24", "dev", "eth0"])
        try Self.ip(["-n", name, "link", "set", "eth0", "up"])
        try Self.ip(["-n", name, "link", "set", "lo", "up"])
        return name
    }

    func tearDown() {
        for process in processes where process.isRunning { process.terminate() }
        for process in processes { process.waitUntilExit() }
        for host in hosts { try? Self.ip(["netns", "del", host]) }
        try? Self.ip(["netns", "del", "\(prefix)-br"])
    }

    func track(_ process: Process) { processes.append(process) }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> Int32 {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        if !FileManager.default.fileExists(atPath: "/usr/sbin/ip") {
            process.executableURL = URL(fileURLWithPath: "/sbin/ip")
        }
        process.arguments = arguments
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw NSError(domain: "ip", code: Int(process.terminationStatus), userInfo: [
                NSLocalizedDescriptionKey: "ip \(arguments.joined(separator: " ")) failed"
            ])
        }
        return process.terminationStatus
    }
}

/// The real p2pchat binary running in a namespace; its stdout lines are collected.
final class ChatProcess: @unchecked Sendable {
    // Safe: `lines` is only touched under `lock`; the rest is set once in init.
    let process = Process()
    let input = Pipe()
    private let lock = NSLock()
    private var lines: [String] = []
    private var pending = Data()

    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("p2pchat").path
    }

    init(namespace: String, arguments: [String], network: TestNetwork) throws {
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        if !FileManager.default.fileExists(atPath: "/usr/sbin/ip") { process.executableURL = URL(fileURLWithPath: "/sbin/ip") }
        process.arguments = ["netns", "exec", namespace, Self.binary] + arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        process.standardInput = input
        output.fileHandleForReading.readabilityHandler = { [weak self] handle in
            let data = handle.availableData
            guard let self else { return }
            if data.isEmpty {
                handle.readabilityHandler = nil
                return
            }
            self.lock.lock()
            self.pending.append(data)
            while let newline = self.pending.firstIndex(of: UInt8(ascii: "\n")) {
                self.lines.append(String(decoding: self.pending[self.pending.startIndex..<newline], as: UTF8.self))
                self.pending.removeSubrange(self.pending.startIndex...newline)
            }
            self.lock.unlock()
        }
        try process.run()
        network.track(process)
    }

    var output: [String] {
        lock.lock()
        defer { lock.unlock() }
        return lines
    }

    func send(_ line: String) { input.fileHandleForWriting.write(Data((line + "\n").utf8)) }

    func closeInput() { try? input.fileHandleForWriting.close() }

    /// Waits until some output line satisfies `predicate`; returns it.
    @discardableResult
    func waitFor(_ what: String, within seconds: Double, _ predicate: (String) -> Bool) async throws -> String {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let line = output.first(where: predicate) { return line }
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTFail("timed out after \(seconds) s waiting for \(what); output:\n\(output.joined(separator: "\n"))")
        throw CancellationError()
    }

    var peerID: String? {
        output.first { $0.hasPrefix("Local peer id: ") }.map { String($0.dropFirst("Local peer id: ".count)) }
    }
}

final class NamespaceTests: XCTestCase {
    var network: TestNetwork!

    override func setUpWithError() throws {
        network = try TestNetwork()
    }

    override func tearDown() {
        network?.tearDown()
    }

    func startChat(_ index: Int, topic: String = "lobby", extra: [String] = []) async throws -> ChatProcess {
        let namespace = try network.addHost(index)
        let chat = try ChatProcess(
            namespace: namespace,
            arguments: [topic, "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/0", "--mdns-interval", "1", "--mdns-ttl", "3"] + extra,
            network: network)
        try await chat.waitFor("startup", within: 20) { $0.hasPrefix("Listening on /ip4/192.0.2.") }
        return chat
    }

    func testThreeNodesDiscoverEachOtherAndExpire() async throws {
        var nodes: [ChatProcess] = []
        for index in 1...3 { nodes.append(try await startChat(index)) }
        let ids = nodes.map { $0.peerID! }
        // Within 2 s of the last node starting, everyone has found everyone.
        for (index, node) in nodes.enumerated() {
            for (other, id) in ids.enumerated() where other != index {
                try await node.waitFor("discovery of \(id)", within: 2) {
                    $0.hasPrefix("Got peer: \(id) with addr /ip4/192.0.2.\(other + 1)/tcp/")
                }
            }
        }
        // A node that stops is reported expired after its TTL (3 s here).
        nodes[2].closeInput()
        for node in nodes.prefix(2) {
            try await node.waitFor("expiry of \(ids[2])", within: 8) { $0.hasPrefix("Removed peer: \(ids[2])") }
        }
    }

    func chatScenario(router: String) async throws {
        let extra = ["--router", router]
        let a = try await startChat(1, extra: extra)
        let b = try await startChat(2, extra: extra)
        let c = try await startChat(3, extra: extra)
        let d = try await startChat(4, topic: "hello", extra: extra)
        let lobby = [("A", a), ("B", b), ("C", c)]
        let everyone = lobby + [("D", d)]
        // Wait for each node to be connected to the three others.
        for (_, node) in everyone {
            for (_, other) in everyone where other !== node {
                let id = other.peerID!
                try await node.waitFor("connection to \(id)", within: 10) { $0.hasPrefix("Connected: \(id)") }
            }
        }
        // Meshes form on the first heartbeats: let the lobby nodes see a probe through before the real lines.
        for (name, node) in everyone { node.send("hello from \(name)") }
        for (name, node) in lobby {
            for (other, _) in lobby where other != name {
                try await node.waitFor("line of \(other)", within: 10) { $0.hasSuffix(": hello from \(other)") }
            }
        }
        // A marker from A flushes anything still in flight; then count.
        a.send("marker")
        for (_, node) in [("B", b), ("C", c)] {
            try await node.waitFor("marker", within: 10) { $0.hasSuffix(": marker") }
        }
        for (name, node) in lobby {
            let output = node.output
            for (other, _) in everyone where other != name {
                let count = output.filter { $0.hasSuffix(": hello from \(other)") }.count
                XCTAssertEqual(count, other == "D" ? 0 : 1, "\(name) printed \(other)'s line \(count) times")
            }
            XCTAssertEqual(output.filter { $0.hasSuffix(": hello from \(name)") }.count, 0, "\(name) echoed itself")
        }
        XCTAssertFalse(d.output.contains { $0.contains(": hello from ") }, "D heard the lobby")
        for (_, node) in everyone { node.closeInput() }
        for (_, node) in everyone {
            let deadline = Date().addingTimeInterval(10)
            while node.process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            XCTAssertFalse(node.process.isRunning, "chat did not exit on end of input")
            XCTAssertEqual(node.process.terminationStatus, 0)
        }
    }

    func testChatOverMDNSWithGossipsub() async throws { try await chatScenario(router: "gossipsub") }
    func testChatOverMDNSWithFloodsub() async throws { try await chatScenario(router: "floodsub") }
}
