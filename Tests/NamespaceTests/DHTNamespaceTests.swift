import ChildProcess
import Foundation
import XCTest

/// Two chats on separate networks joined only by a router (which forwards
/// unicast, never multicast: mDNS cannot cross it) find each other through a
/// DHT bootstrap node running on the router, and exchange a line.
final class DHTNamespaceTests: XCTestCase {
    private var namespaces: [String] = []
    private var processes: [ChatProcess] = []

    override func setUpWithError() throws {
        guard getuid() == 0 else {
            print("SKIPPED: namespace tests need root (ip netns); they run in CI as root")
            throw XCTSkip("SKIPPED: namespace tests need root")
        }
    }

    override func tearDown() {
        for process in processes { process.process.stop() }
        for namespace in namespaces { _ = try? TestNetwork.ip(["netns", "del", namespace]) }
    }

    private func sh(_ namespace: String, _ arguments: [String]) throws {
        try TestNetwork.run(TestNetwork.ipPath, ["netns", "exec", namespace] + arguments)
    }

    /// Router namespace R with 10.1.0.1 toward A (10.1.0.2) and 10.2.0.1 toward B (10.2.0.2).
    private func makeRoutedNetwork() throws -> (router: String, a: String, b: String) {
        let prefix = "p2pd\(getpid() % 100_000)"
        let (router, a, b) = ("\(prefix)-r", "\(prefix)-a", "\(prefix)-b")
        for name in [router, a, b] {
            try TestNetwork.ip(["netns", "add", name])
            namespaces.append(name)
            try TestNetwork.ip(["-n", name, "link", "set", "lo", "up"])
        }
        for (index, host) in [(1, a), (2, b)] {
            let veth = "\(prefix)r\(index)"
            try TestNetwork.ip(["link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host])
            try TestNetwork.ip(["link", "set", veth, "netns", router])
            try TestNetwork.ip(["-n", router, "addr", "add", "10.\(index).0.1/24", "dev", veth])
            try TestNetwork.ip(["-n", router, "link", "set", veth, "up"])
            try TestNetwork.ip(["-n", host, "addr", "add", "10.\(index).0.2/24", "dev", "eth0"])
            try TestNetwork.ip(["-n", host, "link", "set", "eth0", "up"])
            try TestNetwork.ip(["-n", host, "route", "add", "default", "via", "10.\(index).0.1"])
        }
        try sh(router, ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        return (router, a, b)
    }

    private func start(_ namespace: String, _ arguments: [String]) throws -> ChatProcess {
        let process = try ChatProcess(namespace: namespace, arguments: arguments, network: nil)
        processes.append(process)
        return process
    }

    func testChatsOnSeparateNetworksMeetThroughTheDHT() async throws {
        let (router, a, b) = try makeRoutedNetwork()
        let bootstrap = try start(router, ["dht-server", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/4001"])
        try await bootstrap.waitFor("bootstrap node", within: 20) { $0.hasPrefix("Listening on /ip4/10.") }
        let bootstrapID = try XCTUnwrap(bootstrap.peerID)
        func chat(_ namespace: String, _ routerAddress: String, _ extra: [String]) throws -> ChatProcess {
            try start(
                namespace,
                [
                    "lobby", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/0", "--dht-interval", "1",
                    "--bootstrap", "/ip4/\(routerAddress)/tcp/4001/p2p/\(bootstrapID)",
                ] + extra)
        }
        // A keeps mDNS (it finds nobody across the router); B runs without it.
        let chatA = try chat(a, "10.1.0.1", ["--mdns-interval", "1"])
        let chatB = try chat(b, "10.2.0.1", ["--no-mdns"])
        try await chatA.waitFor("A started", within: 20) { $0.hasPrefix("Listening on /ip4/10.1.0.2") }
        try await chatB.waitFor("B started", within: 20) { $0.hasPrefix("Listening on /ip4/10.2.0.2") }
        let idA = try XCTUnwrap(chatA.peerID)
        let idB = try XCTUnwrap(chatB.peerID)
        try await chatA.waitFor("B connected to A", within: 30) { $0.hasPrefix("Connected: \(idB)") }
        try await chatB.waitFor("A connected to B", within: 30) { $0.hasPrefix("Connected: \(idA)") }
        XCTAssertFalse(chatA.output.contains { $0.hasPrefix("Got peer: \(idB)") }, "mDNS crossed the router")
        // Gossipsub meshes form on heartbeats: repeat the line until it arrives.
        let deadline = Date().addingTimeInterval(20)
        var heard = false
        while !heard && Date() < deadline {
            chatB.send("hello across the DHT")
            try await Task.sleep(for: .milliseconds(500))
            heard = chatA.output.contains { $0 == "\(idB): hello across the DHT" }
        }
        XCTAssertTrue(heard, "A never printed B's line; A's output:\n\(chatA.output.joined(separator: "\n"))")
        for chat in [chatA, chatB] { chat.closeInput() }
        for chat in [chatA, chatB] {
            let status = try await chat.waitForExit(within: 15)
            XCTAssertEqual(status, 0)
        }
    }
}

/// `p2pchat dht-server` and the `p2pchat dht` queries on loopback.
final class DHTCLITests: XCTestCase {
    private func run(_ arguments: [String]) async throws -> (status: Int32, output: [String]) {
        let (status, output, _) = try await runCapturingErrors(arguments)
        return (status, output)
    }

    /// A `dht` query: its status, stdout lines and stderr (read to its end).
    private func runCapturingErrors(_ arguments: [String]) async throws -> (status: Int32, output: [String], errors: String) {
        let process = try ChatProcess(namespace: nil, arguments: ["dht"] + arguments + ["--timeout", "20"], network: nil)
        let status = try await process.waitForExit(within: 30)
        // The readers may lag behind the exit by a moment.
        let errors = status == 0 ? process.process.stderrText : try await MetricsCLITests.stderr(of: process.process, containing: "\n")
        return (status, process.output, errors)
    }

    /// Issue 22: `providers` that found nothing printed nothing and exited 0;
    /// a refused put said "a peer that stores ... not found". Each failure is
    /// one `error:` line and exit 1.
    func testNothingFoundAndRefusalsAreOneErrorLine() async throws {
        let (server, bootstrap) = try await ChatProcess.dhtServerOnLoopback()
        defer { server.process.stop() }
        let cidV0 = "QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"
        let absent = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
        let cases: [([String], String)] = [
            (["providers", cidV0], "error: providers of \(cidV0) not found in the DHT\n"),
            (["providers", "--topic", "empty"], "error: providers of topic empty not found in the DHT\n"),
            (["get", "/p2pchat/nobody"], "error: record /p2pchat/nobody not found in the DHT\n"),
            (["find-peer", absent], "error: peer \(absent) not found in the DHT\n"),
            (
                ["put", "/elsewhere/x", "y"],
                "error: DHT peers refuse /elsewhere/x: no validator for record namespace /elsewhere/ (not sent)\n"
            ),
        ]
        for (arguments, expected) in cases {
            let result = try await runCapturingErrors(arguments + ["--bootstrap", bootstrap])
            XCTAssertEqual(result.status, 1, "\(arguments)")
            XCTAssertEqual(result.output, [], "\(arguments)")
            XCTAssertEqual(result.errors, expected, "\(arguments)")
        }
    }

    func testQueriesAgainstABootstrapNode() async throws {
        let (server, bootstrap) = try await ChatProcess.dhtServerOnLoopback()
        defer { server.process.stop() }

        let put = try await run(["put", "/p2pchat/alice", "hello", "--bootstrap", bootstrap])
        XCTAssertEqual(put.status, 0)
        XCTAssertEqual(put.output, ["Stored /p2pchat/alice at 1 peers"])
        let get = try await run(["get", "/p2pchat/alice", "--bootstrap", bootstrap, "--json"])
        XCTAssertEqual(get.status, 0)
        let value = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data((get.output.first ?? "").utf8)) as? [String: String])
        XCTAssertEqual(value["value"], "hello")
        let missing = try await run(["get", "/p2pchat/nobody", "--bootstrap", bootstrap])
        XCTAssertEqual(missing.status, 1, "nothing found is an error")
        let refused = try await run(["put", "/elsewhere/x", "y", "--bootstrap", bootstrap])
        XCTAssertEqual(refused.status, 1, "a namespace without a validator is refused")

        // A chat with the bootstrap node provides its topic; the queries find it.
        let chat = try ChatProcess(
            namespace: nil,
            arguments: [
                "lobby", "--ephemeral", "--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0", "--bootstrap", bootstrap,
                "--dht-interval", "1",
            ], network: nil)
        defer { chat.process.stop() }
        try await chat.waitFor("chat connected to the bootstrap node", within: 20) { $0.hasPrefix("Connected: ") }
        let chatID = try XCTUnwrap(chat.peerID)
        var providers: [String] = []
        let deadline = Date().addingTimeInterval(20)
        while !providers.contains(where: { $0.hasPrefix(chatID) }) && Date() < deadline {
            providers = try await run(["providers", "--topic", "lobby", "--bootstrap", bootstrap]).output
        }
        XCTAssertTrue(providers.contains { $0.hasPrefix("\(chatID) /ip4/127.0.0.1/tcp/") }, "\(providers)")
        let found = try await run(["find-peer", chatID, "--bootstrap", bootstrap])
        XCTAssertEqual(found.status, 0)
        XCTAssertTrue(found.output.contains { $0.hasPrefix("/ip4/127.0.0.1/tcp/") }, "\(found.output)")
        // /topic moves the advertisement at once.
        chat.send("/topic elsewhere")
        try await chat.waitFor("topic moved", within: 20) { $0 == "Now on topic elsewhere" }
        var moved: [String] = []
        let movedDeadline = Date().addingTimeInterval(20)
        while !moved.contains(where: { $0.hasPrefix(chatID) }) && Date() < movedDeadline {
            moved = try await run(["providers", "--topic", "elsewhere", "--bootstrap", bootstrap]).output
        }
        XCTAssertTrue(moved.contains { $0.hasPrefix(chatID) }, "\(moved)")
        chat.closeInput()
        let status = try await chat.waitForExit(within: 15)
        XCTAssertEqual(status, 0)
    }
}
