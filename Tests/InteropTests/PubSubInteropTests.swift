import ChildProcess
import Host
import Identity
import Multiformats
import NIOPosix
import PubSub
import TestSupport
import Transport
import XCTest

/// Floodsub and gossipsub against py-libp2p 0.8.1 on loopback.
final class PubSubInteropTests: XCTestCase {
    var peers: [PythonPeer] = []
    var hosts: [Libp2pHost] = []

    override func tearDown() async throws {
        for peer in peers { peer.stop() }
        for host in hosts { await host.close() }
    }

    func swiftNode(_ router: RouterKind) async throws -> (PubSubService, Multiaddr) {
        let (host, address) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        hosts.append(host)
        var configuration = PubSubConfiguration()
        configuration.router = router
        let pubsub = try PubSubService(host: host, configuration: configuration)
        pubsub.start()
        return (pubsub, address)
    }

    func pythonNode(_ router: RouterKind, connect: Multiaddr? = nil) async throws -> (PythonPeer, PeerID, Multiaddr) {
        var arguments = ["pubsub", "--router", router.rawValue, "--topic", "lobby", "--timeout", "120"]
        if let connect { arguments += ["--connect", "\(connect)"] }
        let peer = try PythonPeer(arguments)
        peers.append(peer)
        let listening = try await peer.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        return (peer, try XCTUnwrap(address.peerID), address)
    }

    /// The next message line a python peer prints that did not come from itself.
    func nextForeignMessage(_ peer: PythonPeer, own: PeerID) async throws -> (from: String, text: String) {
        while true {
            let line = try await peer.next("message", within: 30)
            let from = line["from"] as? String ?? ""
            if from != own.description { return (from, line["text"] as? String ?? "") }
        }
    }

    func waitForTopicPeer(_ pubsub: PubSubService, _ peer: PeerID) async throws {
        let subscribed = try await withDeadline(20) { await pubsub.waitUntilSubscribed(peer, to: "lobby") }
        XCTAssertTrue(subscribed, "\(peer) never announced the topic")
    }

    func waitForMesh(_ pubsub: PubSubService, _ expected: Set<PeerID>) async throws {
        try await waitUntil("the mesh of \(pubsub.host.localPeer) holds \(expected)", seconds: 20) {
            expected.isSubset(of: Set(await pubsub.mesh("lobby")))
        }
    }

    func exchange(swift router: RouterKind, python pythonRouter: RouterKind) async throws {
        let (python, pythonID, pythonAddress) = try await pythonNode(pythonRouter)
        let (pubsub, _) = try await swiftNode(router)
        let inbox = await pubsub.subscribe("lobby").makeAsyncIterator()
        _ = try await pubsub.host.connect(pythonAddress)
        try await waitForTopicPeer(pubsub, pythonID)
        // py-libp2p announces its subscription before it is ready to take messages from a
        // new peer (it registers the peer asynchronously): probe until one arrives.
        let probeDeadline = ContinuousClock.now + .seconds(20)
        var probes = 0
        while true {
            probes += 1
            try await pubsub.publish("lobby", data: Array("probe \(probes)".utf8))
            if let line = try? await python.next("message", within: 0.5),
                (line["from"] as? String) == pubsub.host.localPeer.description
            {
                break
            }
            guard ContinuousClock.now < probeDeadline else { return XCTFail("python never received a probe") }
        }
        try await pubsub.publish("lobby", data: Array("hello from swift".utf8))
        var atPython = try await nextForeignMessage(python, own: pythonID)
        while atPython.text.hasPrefix("probe ") { atPython = try await nextForeignMessage(python, own: pythonID) }
        XCTAssertEqual(atPython.text, "hello from swift")
        XCTAssertEqual(atPython.from, pubsub.host.localPeer.description)
        // The other way: py-libp2p publishes to its mesh only (no flood publishing), which
        // holds us only after its heartbeat grafts us; probe until a line comes through.
        let box = SubscriptionBox(inbox)
        let inboxStream = Inbox(box)
        var pyProbes = 0
        let pyDeadline = ContinuousClock.now + .seconds(20)
        while await inboxStream.count == 0 {
            guard ContinuousClock.now < pyDeadline else { return XCTFail("swift never received a probe from python") }
            pyProbes += 1
            python.send("py probe \(pyProbes)")
            try await Task.sleep(for: .milliseconds(300))
        }
        python.send("hello from py")
        let atSwift = try await inboxStream.firstMatching { !String(decoding: $0.data, as: UTF8.self).hasPrefix("py probe ") }
        XCTAssertEqual(String(decoding: atSwift.data, as: UTF8.self), "hello from py")
        XCTAssertEqual(atSwift.from, pythonID)
        if router == .gossipsub && pythonRouter == .gossipsub {
            // Both speak gossipsub v1.2: py-libp2p tells its mesh IDONTWANT for what it publishes.
            let protocols = await pubsub.pubsubPeers()
            XCTAssertEqual(protocols[pythonID], PubSubProtocol.meshsub12)
            try await waitUntil("python sent IDONTWANT") { await pubsub.counters().receivedIDontWant > 0 }
        }
        _ = inbox
    }

    func testGossipsubWithPython() async throws { try await exchange(swift: .gossipsub, python: .gossipsub) }
    func testFloodsubWithPython() async throws { try await exchange(swift: .floodsub, python: .floodsub) }
    func testDefaultGossipsubReachesFloodsubOnlyPython() async throws {
        try await exchange(swift: .gossipsub, python: .floodsub)
    }

    /// S1 - P2 - S3 - P4 - S5 - P6 in a line: what either end publishes reaches all six, once.
    func testLineOfSixAlternatingNodes() async throws {
        let (s1, s1Address) = try await swiftNode(.gossipsub)
        let s1Inbox = Inbox(await s1.subscribe("lobby"))
        let (p2, p2ID, p2Address) = try await pythonNode(.gossipsub, connect: s1Address)
        let (s3, _) = try await swiftNode(.gossipsub)
        let s3Inbox = Inbox(await s3.subscribe("lobby"))
        _ = try await s3.host.connect(p2Address)
        let s3Address = s3.host.boundAddresses[0].encapsulating(.p2p(s3.host.localPeer.bytes))
        let (p4, p4ID, p4Address) = try await pythonNode(.gossipsub, connect: s3Address)
        let (s5, _) = try await swiftNode(.gossipsub)
        let s5Inbox = Inbox(await s5.subscribe("lobby"))
        _ = try await s5.host.connect(p4Address)
        let s5Address = s5.host.boundAddresses[0].encapsulating(.p2p(s5.host.localPeer.bytes))
        let (p6, p6ID, _) = try await pythonNode(.gossipsub, connect: s5Address)
        try await waitForTopicPeer(s1, p2ID)
        try await waitForTopicPeer(s3, p4ID)
        try await waitForTopicPeer(s5, p6ID)
        // Wait for the meshes along the line to form (GRAFTs after the first heartbeats).
        try await waitForMesh(s1, [p2ID])
        try await waitForMesh(s3, [p2ID, p4ID])
        try await waitForMesh(s5, [p4ID, p6ID])
        let pythons = [(p2, p2ID), (p4, p4ID), (p6, p6ID)]
        try await s1.publish("lobby", data: Array("from S1".utf8))
        p6.send("from P6")
        var pythonTexts: [PeerID: [String]] = [:]
        for (peer, id) in pythons {
            // Each python node sees the other end's messages (P6 sees only S1's).
            let expected = id == p6ID ? 1 : 2
            for _ in 0..<expected { pythonTexts[id, default: []].append(try await nextForeignMessage(peer, own: id).text) }
        }
        XCTAssertEqual(Set(pythonTexts[p2ID] ?? []), ["from S1", "from P6"])
        XCTAssertEqual(Set(pythonTexts[p4ID] ?? []), ["from S1", "from P6"])
        XCTAssertEqual(pythonTexts[p6ID], ["from S1"])
        for inbox in [s3Inbox, s5Inbox] {
            let texts = try await inbox.take(2)
            XCTAssertEqual(Set(texts), ["from S1", "from P6"])
        }
        let atS1 = try await s1Inbox.take(1)
        XCTAssertEqual(atS1, ["from P6"])
        // Exactly once: after a final marker from S1 arrives everywhere, nothing else came in between.
        try await s1.publish("lobby", data: Array("marker".utf8))
        for (peer, id) in pythons {
            let next = try await nextForeignMessage(peer, own: id)
            XCTAssertEqual(next.text, "marker", "duplicate at \(id)")
        }
        for inbox in [s3Inbox, s5Inbox] {
            let next = try await inbox.take(1)
            XCTAssertEqual(next, ["marker"])
        }
    }
}

/// One subscription read by one test task at a time.
final class SubscriptionBox: @unchecked Sendable {
    // Safe: the test awaits each call before the next.
    var iterator: AsyncStream<PubSubMessage>.AsyncIterator
    init(_ iterator: AsyncStream<PubSubMessage>.AsyncIterator) { self.iterator = iterator }
    func next() async -> PubSubMessage? { await iterator.next() }
}

extension Inbox {
    init(_ box: SubscriptionBox) {
        let (stream, continuation) = AsyncStream.makeStream(of: PubSubMessage.self)
        Task {
            while let message = await box.next() { continuation.yield(message) }
            continuation.finish()
        }
        self.init(stream)
    }
}

/// Collects a subscription's texts.
actor Inbox {
    private var texts: [String] = []
    private var messages: [PubSubMessage] = []
    init(_ stream: AsyncStream<PubSubMessage>) {
        Task { [weak self] in
            for await message in stream {
                await self?.append(message)
            }
        }
    }
    private func append(_ message: PubSubMessage) {
        texts.append(String(decoding: message.data, as: UTF8.self))
        messages.append(message)
    }

    var count: Int { messages.count }

    /// The first message (received so far or later, within a deadline) that matches.
    func firstMatching(within seconds: Double = 30, _ predicate: (PubSubMessage) -> Bool) async throws -> PubSubMessage {
        try await waitFor("a matching message", seconds: seconds) { messages.first(where: predicate) }
    }

    /// The next `count` texts, within a deadline.
    func take(_ count: Int, within seconds: Double = 30) async throws -> [String] {
        try await waitUntil("\(count) messages arrived", seconds: seconds) { texts.count >= count }
        let result = Array(texts.prefix(count))
        texts.removeFirst(count)
        return result
    }
}

/// The real `p2pchat` binary and a py-libp2p chat peer on one topic.
final class ChatBinaryInteropTests: XCTestCase {
    func testChatBinaryWithPythonBothRouters() async throws {
        for router in ["gossipsub", "floodsub"] {
            let python = try PythonPeer(["pubsub", "--router", router, "--topic", "lobby", "--timeout", "60"])
            defer { python.stop() }
            let listening = try await python.next("listening")
            let address = try XCTUnwrap(listening["addr"] as? String)
            let pythonID = try XCTUnwrap(listening["peer"] as? String)
            let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
                .appendingPathComponent("p2pchat").path
            let chat = try ChildProcess(
                binary,
                [
                    "lobby", "--json", "--no-mdns", "--ephemeral", "--router", router, "--listen", "/ip4/127.0.0.1/tcp/0",
                    "--connect", address,
                ],
                stdinPipe: true, stderr: .discard)
            defer { chat.stop() }
            // Probe until python hears the binary (both have to register each other first).
            let deadline = ContinuousClock.now + .seconds(20)
            var heard = false
            while !heard && ContinuousClock.now < deadline {
                chat.send("from swift binary")
                if let line = try? await python.next("message", within: 0.5), line["text"] as? String == "from swift binary" {
                    heard = true
                }
            }
            XCTAssertTrue(heard, "python never received the binary's line (\(router))")
            // And back: python's line appears as a JSON message event from python's peer id.
            var printed = false
            while !printed && ContinuousClock.now < deadline {
                python.send("from python")
                try await Task.sleep(for: .milliseconds(300))
                printed = chat.outputLines.contains {
                    $0.contains("\"text\":\"from python\"") && $0.contains(pythonID)
                }
            }
            XCTAssertTrue(printed, "the binary never printed python's line (\(router))")
            chat.closeInput()
            let status = try? await chat.waitForExit(within: 10)
            XCTAssertEqual(status, 0, "the chat did not exit cleanly on end of input")
        }
    }
}
