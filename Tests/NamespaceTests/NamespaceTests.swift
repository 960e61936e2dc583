import ChildProcess
import Foundation
import XCTest

/// A set of network namespaces joined by a bridge (in a namespace of its own),
/// created for one test and removed after it. Addresses come from 192.0.2.0/24
/// (TEST-NET-1), which exists only inside these namespaces.
final class TestNetwork {
    let prefix: String
    private(set) var hosts: [String] = []
    private var processes: [ChildProcess] = []

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

    /// Adds a host namespace with address 192.0.2.<index> on the bridge (or only
    /// 2001:db8::<index>, IPv6 documentation space, when `ipv6Only`).
    func addHost(_ index: Int, ipv6Only: Bool = false) throws -> String {
        let name = "\(prefix)-n\(index)"
        let veth = "\(prefix)v\(index)"
        try Self.ip(["netns", "add", name])
        hosts.append(name)
        try Self.ip(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name])
        try Self.ip(["link", "set", veth, "netns", "\(prefix)-br"])
        try Self.ip(["-n", "\(prefix)-br", "link", "set", veth, "master", "br0"])
        try Self.ip(["-n", "\(prefix)-br", "link", "set", veth, "up"])
        if ipv6Only {
            // No duplicate address detection: addresses are usable at once.
            try Self.run("/usr/sbin/ip", ["netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0"])
            try Self.run("/usr/sbin/ip", ["netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.default.accept_dad=0"])
            try Self.run("/usr/sbin/ip", ["netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.eth0.accept_dad=0"])
            try Self.ip(["-n", name, "addr", "add", "2001:db8::\(index)/64", "dev", "eth0", "nodad"])
        } else {
            try Self.ip(["-n", name, "addr", "add", "192.0.2.\(index)/24", "dev", "eth0"])
        }
        try Self.ip(["-n", name, "link", "set", "eth0", "up"])
        try Self.ip(["-n", name, "link", "set", "lo", "up"])
        return name
    }

    func tearDown() {
        for process in processes { process.terminate() }
        for process in processes { process.stop() }
        for host in hosts { _ = try? Self.ip(["netns", "del", host]) }
        _ = try? Self.ip(["netns", "del", "\(prefix)-br"])
    }

    func track(_ process: ChildProcess) { processes.append(process) }

    static func run(_ executable: String, _ arguments: [String]) throws {
        _ = try ChildProcess.run(executable, arguments)
    }

    static let ipPath = FileManager.default.fileExists(atPath: "/usr/sbin/ip") ? "/usr/sbin/ip" : "/sbin/ip"

    @discardableResult
    static func ip(_ arguments: [String]) throws -> Int32 {
        let status = try ChildProcess.run(ipPath, arguments).status
        guard status == 0 else {
            throw NSError(domain: "ip", code: Int(status), userInfo: [
                NSLocalizedDescriptionKey: "ip \(arguments.joined(separator: " ")) failed"
            ])
        }
        return status
    }
}

/// The real p2pchat binary running in a namespace; its stdout lines are collected,
/// and its log (stderr: warnings and errors unless -v) is shown when a wait times out.
final class ChatProcess: Sendable {
    let process: ChildProcess

    static var binary: String {
        URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("p2pchat").path
    }

    /// Runs the chat in `namespace`, or directly (loopback tests) when it is nil.
    init(
        namespace: String?, executable: String = ChatProcess.binary, arguments: [String], network: TestNetwork?,
        stderr: ChildProcess.Stream = .capture
    ) throws {
        if let namespace {
            process = try ChildProcess(
                TestNetwork.ipPath, ["netns", "exec", namespace, executable] + arguments, stdinPipe: true, stderr: stderr)
        } else {
            process = try ChildProcess(executable, arguments, stdinPipe: true, stderr: stderr)
        }
        network?.track(process)
    }

    deinit {
        process.stop()
    }

    /// Output lines parsed as JSON objects (for --json); numbers and booleans
    /// as their text, arrays joined by spaces.
    var events: [[String: String]] { output.compactMap(Self.event(in:)) }

    /// A --json line as text fields (numbers and booleans as their text, arrays joined by spaces).
    static func event(in line: String) -> [String: String]? {
        guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any] else { return nil }
        return object.mapValues { value in
            switch value {
            case let text as String: return text
            case let list as [Any]: return list.map { "\($0)" }.joined(separator: " ")
            default: return "\(value)"
            }
        }
    }

    /// Waits for the process to exit; its status.
    func waitForExit(within seconds: Double) async throws -> Int32 {
        do {
            return try await process.waitForExit(within: seconds)
        } catch {
            XCTFail("\(error)")
            throw error
        }
    }

    var output: [String] { process.outputLines }

    func send(_ line: String) { process.send(line) }

    func closeInput() { process.closeInput() }

    /// Waits until some output line satisfies `predicate`; returns it.
    @discardableResult
    func waitFor(_ what: String, within seconds: Double, _ predicate: (String) -> Bool) async throws -> String {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let line = output.first(where: predicate) { return line }
            try await Task.sleep(for: .milliseconds(20))
        }
        let logged = process.stderrText
        XCTFail(
            "timed out after \(seconds) s waiting for \(what); output:\n\(output.joined(separator: "\n"))"
                + (logged.isEmpty ? "" : "\nstderr:\n\(logged)"))
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

    func startChat(_ index: Int, topic: String = "lobby", extra: [String] = [], ipv6Only: Bool = false) async throws
        -> ChatProcess
    {
        let namespace = try network.addHost(index, ipv6Only: ipv6Only)
        // TCP and QUIC, as the chat's defaults (which also listen on the other IP family).
        let ip = ipv6Only ? "/ip6/::" : "/ip4/0.0.0.0"
        let chat = try ChatProcess(
            namespace: namespace,
            arguments: [topic, "--ephemeral", "--listen", "\(ip)/tcp/0", "--listen", "\(ip)/udp/0/quic-v1", "--mdns-interval", "1", "--mdns-ttl", "3"]
                + extra,
            network: network)
        let expected = ipv6Only ? "Listening on /ip6/2001:db8::" : "Listening on /ip4/192.0.2."
        try await chat.waitFor("startup", within: 20) { $0.hasPrefix(expected) }
        return chat
    }

    /// mDNS over IPv6 only (ff02::fb): two hosts without IPv4 find and reach each other.
    func testDiscoveryOverIPv6() async throws {
        let a = try await startChat(1, ipv6Only: true)
        let b = try await startChat(2, ipv6Only: true)
        let aID = try XCTUnwrap(a.peerID)
        let bID = try XCTUnwrap(b.peerID)
        try await a.waitFor("discovery of b", within: 10) { $0.hasPrefix("Got peer: \(bID) with addr /ip6/2001:db8::2/tcp/") }
        try await b.waitFor("discovery of a", within: 10) { $0.hasPrefix("Got peer: \(aID) with addr /ip6/2001:db8::1/tcp/") }
        try await a.waitFor("connection", within: 10) { $0.hasPrefix("Connected: \(bID)") }
        a.closeInput()
        b.closeInput()
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
        // Peers found by mDNS advertise QUIC beside TCP, and QUIC is dialled first: the chats meet over it.
        let connections = everyone.flatMap { $0.1.output.filter { $0.hasPrefix("Connected: ") } }
        XCTAssertTrue(connections.contains { $0.hasSuffix("/quic-v1") }, "no chat connected over QUIC: \(connections)")
        // Each lobby node says who joined its topic (full ids: the output is piped); D, on
        // another topic, sees no one join.
        for (name, node) in lobby {
            for (other, peer) in lobby where other != name {
                let id = peer.peerID!
                try await node.waitFor("\(other) joined", within: 10) { $0 == "\(id) joined lobby" }
            }
        }
        XCTAssertFalse(d.output.contains { $0.contains(" joined ") }, "D saw someone join its topic")
        // /who lists the topic's peers: B and C for A, nobody for D.
        a.send("/who")
        let who = try await a.waitFor("/who", within: 10) { $0.hasPrefix("On lobby: ") }
        XCTAssertEqual(
            Set(who.dropFirst("On lobby: ".count).split(separator: " ").map(String.init)), [b.peerID!, c.peerID!])
        d.send("/who")
        try await d.waitFor("/who on hello", within: 10) { $0 == "Nobody else on hello." }
        for (name, node) in everyone { node.send("hello from \(name)") }
        // D's line reaches nobody, and says so.
        try await d.waitFor("the nobody-on-topic notice", within: 10) { $0 == "nobody on hello yet: not delivered" }
        for (name, node) in lobby {
            XCTAssertFalse(node.output.contains { $0.contains("not delivered") }, "\(name) reported a delivered line")
        }
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
        // mDNS makes every pair dial each other at about the same time: still one
        // `Connected` per peer, and `/peers` lists each peer once.
        for (name, node) in everyone {
            node.send("/peers")
            for (other, peer) in everyone where peer !== node {
                let id = peer.peerID!
                try await node.waitFor("\(other) in /peers", within: 10) { $0.hasPrefix("\(id) /") }
                let output = node.output
                XCTAssertEqual(
                    output.filter { $0.hasPrefix("Connected: \(id)") }.count, 1, "\(name) reported \(other) connected")
                XCTAssertEqual(output.filter { $0.hasPrefix("\(id) /") }.count, 1, "\(name) listed \(other)")
            }
        }
        for (_, node) in everyone { node.closeInput() }
        for (_, node) in everyone {
            let deadline = Date().addingTimeInterval(10)
            while node.process.isRunning && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
            XCTAssertFalse(node.process.isRunning, "chat did not exit on end of input")
            XCTAssertEqual(node.process.terminationStatus, 0)
        }
    }

    /// A Swift node and a py-libp2p 0.8.1 node with mDNS find each other, both ways.
    func testSwiftAndPythonDiscoverEachOther() async throws {
        guard let python = ProcessInfo.processInfo.environment["P2PCHAT_PYTHON"], !python.isEmpty else {
            if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
                XCTFail("P2PCHAT_PYTHON is not set but interop is required")
            }
            throw XCTSkip("SKIPPED: mDNS interop with py-libp2p needs P2PCHAT_PYTHON (run ./scripts/test)")
        }
        let swift = try await startChat(1)
        let namespace = try network.addHost(2)
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Interop/py/peer.py").path
        let py = try ChatProcess(
            namespace: namespace, executable: python, arguments: [script, "mdns", "--timeout", "60"], network: network)
        let listening = try await py.waitFor("python listening", within: 30) { $0.contains("\"listening\"") }
        let pyPeer = try XCTUnwrap(
            ((try JSONSerialization.jsonObject(with: Data(listening.utf8))) as? [String: Any])?["peer"] as? String)
        let swiftPeer = try XCTUnwrap(swift.peerID)
        try await swift.waitFor("discovery of the python node", within: 15) {
            $0.hasPrefix("Got peer: \(pyPeer) with addr /ip4/192.0.2.2/tcp/")
        }
        try await py.waitFor("discovery of the swift node", within: 15) {
            $0.contains("\"discovered\"") && $0.contains(swiftPeer) && $0.contains("/ip4/192.0.2.1/tcp/")
        }
        py.closeInput()
        swift.closeInput()
    }

    func testChatOverMDNSWithGossipsub() async throws { try await chatScenario(router: "gossipsub") }
    func testChatOverMDNSWithFloodsub() async throws { try await chatScenario(router: "floodsub") }
}

/// The chat binary on loopback: JSON output, clean exits, redialing.
extension ChatProcess {
    /// A chat on loopback without mDNS, with --json, once it listens.
    static func loopback(_ arguments: [String]) async throws -> ChatProcess {
        let chat = try ChatProcess(
            namespace: nil, arguments: ["--no-mdns", "--json", "--listen", "/ip4/127.0.0.1/tcp/0"] + arguments, network: nil)
        try await chat.waitFor("listening", within: 20) { $0.contains("\"event\":\"listening\"") }
        return chat
    }

    /// `p2pchat dht-server` on loopback, and its /p2p/ address once it listens (a bootstrap node).
    static func dhtServerOnLoopback() async throws -> (server: ChatProcess, bootstrap: String) {
        let server = try ChatProcess(
            namespace: nil, arguments: ["dht-server", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0"], network: nil)
        let listening = try await server.waitFor("dht-server", within: 20) { $0.hasPrefix("Listening on /ip4/127.0.0.1") }
        return (server, String(listening.dropFirst("Listening on ".count)))
    }

    /// Its /p2p/ address (from its --json events).
    func dialAddress() throws -> String {
        let events = self.events
        let peer = try XCTUnwrap(events.first { $0["event"] == "local_peer" }?["peer"])
        let addr = try XCTUnwrap(events.first { $0["event"] == "listening" }?["addr"])
        return "\(addr)/p2p/\(peer)"
    }
}

final class ChatCLITests: XCTestCase {
    func start(_ arguments: [String]) async throws -> ChatProcess { try await ChatProcess.loopback(arguments) }

    func address(of chat: ChatProcess) throws -> String { try chat.dialAddress() }

    func testJSONEventsAndCleanExits() async throws {
        let a = try await start(["--ephemeral"])
        let b = try await start(["--ephemeral", "--connect", try address(of: a)])
        let aPeer = try XCTUnwrap(a.events.first { $0["event"] == "local_peer" }?["peer"])
        let bPeer = try XCTUnwrap(b.events.first { $0["event"] == "local_peer" }?["peer"])
        try await a.waitFor("connected", within: 10) { $0.contains("\"connected\"") && $0.contains(bPeer) }
        // Until B's subscription reached A, a line may go nowhere: repeat a probe until one lands.
        let deadline = Date().addingTimeInterval(10)
        while !a.output.contains(where: { $0.contains("probe") }) && Date() < deadline {
            b.send("probe")
            try await Task.sleep(for: .milliseconds(200))
        }
        b.send("hello from B")
        let line = try await a.waitFor("message", within: 10) { $0.contains("hello from B") }
        let event = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: String])
        XCTAssertEqual(event["event"], "message")
        XCTAssertEqual(event["from"], bPeer)
        XCTAssertEqual(event["topic"], "lobby")
        XCTAssertEqual(event["text"], "hello from B")
        XCTAssertNotNil(event["id"])
        // Every event has an ISO 8601 time; slashes are not escaped.
        for line in a.output {
            let object = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any], line)
            let ts = try XCTUnwrap(object["ts"] as? String, line)
            XCTAssertNotNil(try? Date(ts, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)), ts)
            XCTAssertFalse(line.contains("\\/"), line)
        }
        XCTAssertTrue(a.output.contains { $0.contains("\"addr\":\"/ip4/127.0.0.1/tcp/") }, "\(a.output)")
        try await a.waitFor("B joined", within: 10) { $0.contains("\"event\":\"joined\"") && $0.contains(bPeer) }
        a.send("/who")
        let who = try await a.waitFor("who", within: 10) { $0.contains("\"event\":\"who\"") }
        let whoEvent = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(who.utf8))) as? [String: Any])
        XCTAssertEqual(whoEvent["peers"] as? [String], [bPeer])
        // Quotes, backslashes, tabs and non-ASCII text survive the JSON encoding.
        let awkward = "say \"hi\" \\ back\tslash /path é ✓"
        b.send(awkward)
        let awkwardLine = try await a.waitFor("the awkward line", within: 10) { $0.contains("back\\tslash") }
        let awkwardEvent = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(awkwardLine.utf8))) as? [String: String])
        XCTAssertEqual(awkwardEvent["text"], awkward)
        // A line over the size limit is an error event; the chat goes on.
        b.send(String(repeating: "x", count: 1024 * 1024 + 1))
        try await b.waitFor("error event", within: 10) { $0.contains("\"event\":\"error\"") }
        // End of input: exit 0; the other side sees the disconnection. SIGTERM: exit 0.
        b.closeInput()
        let bStatus = try await b.waitForExit(within: 10)
        XCTAssertEqual(bStatus, 0)
        try await a.waitFor("disconnected", within: 10) { $0.contains("\"disconnected\"") }
        a.process.terminate()
        let aStatus = try await a.waitForExit(within: 10)
        XCTAssertEqual(aStatus, 0)
        XCTAssertEqual(a.process.termination, .exited(0), "SIGTERM must end the chat cleanly, not kill it")
        _ = aPeer
    }

    /// 100 lines pasted at once: the chat publishes 16 at once and the rest one
    /// every 5 ms (PublishPacer), so a go-libp2p peer's validation queue of 32
    /// keeps up; all arrive, in order, spread over at least 84 intervals.
    func testAPastedBlockArrivesWholeAndPaced() async throws {
        let a = try await start(["--ephemeral"])
        let b = try await start(["--ephemeral", "--connect", try address(of: a)])
        let deadline = Date().addingTimeInterval(10)
        while !a.output.contains(where: { $0.contains("probe") }) && Date() < deadline {
            b.send("probe")
            try await Task.sleep(for: .milliseconds(200))
        }
        for index in 1...100 { b.send("pasted line \(index)") }
        try await a.waitFor("the 100th line", within: 30) { $0.contains("\"pasted line 100\"") }
        let received = a.events.filter { $0["event"] == "message" && ($0["text"]?.hasPrefix("pasted line ") ?? false) }
        XCTAssertEqual(received.map { $0["text"] ?? "" }, (1...100).map { "pasted line \($0)" })
        let times = received.compactMap { $0["ts"].flatMap { try? Date($0, strategy: Date.ISO8601FormatStyle(includingFractionalSeconds: true)) } }
        XCTAssertEqual(times.count, 100)
        let span = try XCTUnwrap(times.last).timeIntervalSince(try XCTUnwrap(times.first))
        XCTAssertGreaterThanOrEqual(span, Double(100 - 16) * 0.005 * 0.9, "the block was not paced: it arrived within \(span) s")
        a.closeInput()
        b.closeInput()
    }

    func testDroppedConnectPeerIsRedialed() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pchat-redial-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let keyPath = directory.appendingPathComponent("a.key").path
        var a = try await start(["--identity", keyPath])
        let target = try address(of: a)
        let listen = target.components(separatedBy: "/p2p/")[0]
        let b = try await start(["--ephemeral", "--connect", target])
        try await b.waitFor("connected", within: 10) { $0.contains("\"connected\"") }
        a.process.terminate()
        _ = try await a.waitForExit(within: 10)
        try await b.waitFor("disconnected", within: 10) { $0.contains("\"disconnected\"") }
        // A comes back on the same address with the same key; B redials by itself.
        a = try ChatProcess(
            namespace: nil, arguments: ["--no-mdns", "--json", "--identity", keyPath, "--listen", listen], network: nil)
        let connectedBefore = b.output.filter { $0.contains("\"connected\"") }.count
        let deadline = Date().addingTimeInterval(20)
        while b.output.filter({ $0.contains("\"connected\"") }).count == connectedBefore && Date() < deadline {
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertGreaterThan(b.output.filter { $0.contains("\"connected\"") }.count, connectedBefore, "B did not redial")
        // Messages flow again.
        let probeDeadline = Date().addingTimeInterval(10)
        while !a.output.contains(where: { $0.contains("after restart") }) && Date() < probeDeadline {
            b.send("after restart")
            try await Task.sleep(for: .milliseconds(200))
        }
        XCTAssertTrue(a.output.contains { $0.contains("after restart") })
        a.closeInput()
        b.closeInput()
        _ = try await a.waitForExit(within: 10)
        _ = try await b.waitForExit(within: 10)
    }

    /// An interactive session under tmux: messages that arrive while the user types
    /// show above the typed line, which stays intact and is sent on Enter.
    func testInteractiveTerminalUnderTmux() async throws {
        let tmux = ["/usr/bin/tmux", "/bin/tmux"].first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let tmux else {
            if ProcessInfo.processInfo.environment["CI"] != nil { XCTFail("tmux is missing") }
            throw XCTSkip("SKIPPED: tmux is not installed")
        }
        let b = try await start(["--ephemeral"])
        let target = try address(of: b)
        let session = "p2pt\(getpid())"
        // Only capture-pane's output is read: the tmux server that new-session starts
        // would inherit (and hold open) any pipe given to it.
        func run(_ arguments: [String]) throws -> String {
            try ChildProcess.run(tmux, arguments, captureOutput: arguments.first == "capture-pane", within: 10).output
        }
        let command = [ChatProcess.binary, "--no-mdns", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--connect", target]
        _ = try run(["new-session", "-d", "-s", session, "-x", "160", "-y", "30", command.joined(separator: " ")])
        defer { _ = try? run(["kill-session", "-t", session]) }
        func screen() throws -> [String] {
            try run(["capture-pane", "-t", session, "-p"]).split(separator: "\n").map(String.init)
        }
        func waitForScreen(_ what: String, _ predicate: ([String]) -> Bool) async throws {
            let deadline = Date().addingTimeInterval(15)
            while Date() < deadline {
                if predicate(try screen()) { return }
                try await Task.sleep(for: .milliseconds(50))
            }
            XCTFail("screen never showed \(what):\n\(try screen().joined(separator: "\n"))")
            throw CancellationError()
        }
        try await waitForScreen("the connection") { $0.contains { $0.hasPrefix("Connected: ") } }
        _ = try run(["send-keys", "-t", session, "-l", "hello wor"])
        try await waitForScreen("the typed text") { $0.last { !$0.isEmpty } == "> hello wor" }
        // Messages arrive while the line is half typed.
        let deadline = Date().addingTimeInterval(15)
        while try !screen().contains(where: { $0.hasSuffix(": from B") }) && Date() < deadline {
            b.send("from B")
            try await Task.sleep(for: .milliseconds(300))
        }
        let lines = try screen().filter { !$0.isEmpty }
        XCTAssertTrue(lines.contains { $0.hasSuffix(": from B") }, lines.joined(separator: "\n"))
        XCTAssertEqual(lines.last, "> hello wor", "the typed line was garbled:\n\(lines.joined(separator: "\n"))")
        _ = try run(["send-keys", "-t", session, "-l", "ld"])
        _ = try run(["send-keys", "-t", session, "Enter"])
        try await b.waitFor("the typed line", within: 10) { $0.contains("\"text\":\"hello world\"") }
        b.closeInput()
    }
}

/// `p2pchat perf` against `p2pchat perf-server`, on loopback.
final class PerfCLITests: XCTestCase {
    func testPerfCommandAgainstPerfServer() async throws {
        let server = try ChatProcess(
            namespace: nil, arguments: ["perf-server", "--listen", "/ip4/127.0.0.1/tcp/0"], network: nil)
        let listening = try await server.waitFor("listening", within: 20) { $0.hasPrefix("Listening on ") }
        let address = String(listening.dropFirst("Listening on ".count))
        XCTAssertTrue(address.contains("/p2p/12D3KooW"), address)

        let json = try ChatProcess(
            namespace: nil, arguments: ["perf", address, "--upload", "2MiB", "--download", "3MiB", "--json"], network: nil)
        let jsonStatus = try await json.waitForExit(within: 60)
        XCTAssertEqual(jsonStatus, 0, json.output.joined(separator: "\n"))
        let line = try XCTUnwrap(json.output.first)
        let result = try XCTUnwrap((try JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any])
        XCTAssertEqual(result["upload_bytes"] as? Int, 2 * 1024 * 1024)
        XCTAssertEqual(result["download_bytes"] as? Int, 3 * 1024 * 1024)
        XCTAssertGreaterThan(try XCTUnwrap(result["connect_seconds"] as? Double), 0)
        XCTAssertGreaterThan(try XCTUnwrap(result["upload_bytes_per_second"] as? Double), 0)
        XCTAssertGreaterThan(try XCTUnwrap(result["download_bytes_per_second"] as? Double), 0)

        let human = try ChatProcess(
            namespace: nil, arguments: ["perf", address, "--upload", "1000", "--download", "0"], network: nil)
        let humanStatus = try await human.waitForExit(within: 60)
        XCTAssertEqual(humanStatus, 0)
        let lines = human.output
        XCTAssertTrue(lines.contains { $0.hasPrefix("Connected to 12D3KooW") && $0.contains("(tcp + /noise + /yamux/1.0.0)") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("Uploaded 1000 bytes in ") && $0.contains("MB/s") }, "\(lines)")
        XCTAssertTrue(lines.contains { $0.hasPrefix("Downloaded 0 bytes in ") }, "\(lines)")

        // A bad size and an unreachable server are errors with a non-zero exit.
        let badSize = try ChatProcess(namespace: nil, arguments: ["perf", address, "--upload", "12XB"], network: nil)
        let badSizeStatus = try await badSize.waitForExit(within: 20)
        XCTAssertNotEqual(badSizeStatus, 0)
        server.process.terminate()
        let serverStatus = try await server.waitForExit(within: 10)
        XCTAssertEqual(serverStatus, 0)
        XCTAssertEqual(server.process.termination, .exited(0))
        let unreachable = try ChatProcess(
            namespace: nil, arguments: ["perf", address, "--timeout", "5"], network: nil)
        let unreachableStatus = try await unreachable.waitForExit(within: 20)
        XCTAssertNotEqual(unreachableStatus, 0)
    }
}
