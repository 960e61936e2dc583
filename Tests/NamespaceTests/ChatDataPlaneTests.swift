import ChildProcess
import FileShare
import Foundation
import Host
import Multiformats
import NIOPosix
import PubSub
import TestSupport
import XCTest

/// Files offered and fetched between chat processes on loopback (`/send`, `/get`, `--accept-files`).
final class ChatFilesCLITests: XCTestCase {
    var directories: [String] = []

    override func tearDown() {
        for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
    }

    func makeDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "p2pchat-chatfiles-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        directories.append(path)
        return path
    }

    func start(_ arguments: [String]) async throws -> ChatProcess { try await ChatProcess.loopback(["--ephemeral"] + arguments) }

    func address(of chat: ChatProcess) throws -> String { try chat.dialAddress() }

    func peer(of chat: ChatProcess) throws -> String {
        try XCTUnwrap(chat.events.first { $0["event"] == "local_peer" }?["peer"])
    }

    /// Waits for a JSON event matching `predicate`; returns it.
    @discardableResult
    func event(_ chat: ChatProcess, _ what: String, within seconds: Double = 30, _ predicate: ([String: String]) -> Bool)
        async throws -> [String: String]
    {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let found = chat.events.first(where: predicate) { return found }
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTFail("timed out after \(seconds) s waiting for \(what); output:\n\(chat.output.joined(separator: "\n"))")
        throw CancellationError()
    }

    func testSendGetAutoAcceptVerifyAndNeverOverwrite() async throws {
        let source = try makeDirectory()
        let manual = try makeDirectory()
        let automatic = try makeDirectory()
        let small = (0..<1_500_000).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ $0 >> 9) }
        let smallPath = source + "/notes.txt"
        try Data(small).write(to: URL(fileURLWithPath: smallPath))
        let bigPath = source + "/big.bin"
        try Data(count: 3 * 1024 * 1024).write(to: URL(fileURLWithPath: bigPath))
        let changingPath = source + "/changing.bin"
        try Data(repeating: 1, count: 100_000).write(to: URL(fileURLWithPath: changingPath))

        let a = try await start([])
        let b = try await start(["--connect", try address(of: a), "--download-dir", manual])
        let c = try await start([
            "--connect", try address(of: a), "--download-dir", automatic, "--accept-files", "--max-accept", "2M",
        ])
        let aPeer = try peer(of: a)
        for chat in [b, c] {
            try await event(chat, "A joined") { $0["event"] == "joined" && $0["peer"] == aPeer }
        }
        for other in [b, c] {
            let id = try peer(of: other)
            try await event(a, "\(id) joined") { $0["event"] == "joined" && $0["peer"] == id }
        }
        a.send("/send \(smallPath)")
        try await event(a, "file_offered") { $0["event"] == "file_offered" && $0["name"] == "notes.txt" }
        // Announced both ways (the chat line and `lobby-file`): offer 1 gets its name and size
        // whichever arrives first.
        let offer = try await event(b, "offer 1") { $0["event"] == "file_offer" && $0["n"] == "1" && $0["size"] != nil }
        XCTAssertEqual(offer["name"], "notes.txt")
        XCTAssertEqual(offer["size"], "1500000")
        XCTAssertEqual(offer["from"], aPeer)
        // C takes it by itself (within --max-accept); B asks, twice.
        let auto = try await event(c, "auto file_done") { $0["event"] == "file_done" && $0["n"] == "1" }
        XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(auto["path"])))), small)
        b.send("/get 1")
        let first = try await event(b, "file_done") { $0["event"] == "file_done" && $0["n"] == "1" }
        XCTAssertEqual(first["path"], manual + "/notes.txt")
        XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: manual + "/notes.txt"))), small)
        XCTAssertTrue(b.events.contains { $0["event"] == "file_progress" && $0["bytes"] == "1500000" })
        b.send("/get 1")
        try await event(b, "second file_done") { $0["event"] == "file_done" && $0["path"] == manual + "/notes (1).txt" }
        XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: manual + "/notes.txt"))), small, "overwritten")

        // Over --max-accept: C only lists it; B fetches it meanwhile.
        a.send("/send \(bigPath)")
        try await event(c, "offer 2 at C") { $0["event"] == "file_offer" && $0["n"] == "2" }
        try await event(b, "offer 2 at B") { $0["event"] == "file_offer" && $0["n"] == "2" }
        b.send("/get 2")
        try await event(b, "big file_done") { $0["event"] == "file_done" && $0["n"] == "2" }
        XCTAssertFalse(c.events.contains { ($0["event"] == "file_progress" || $0["event"] == "file_done") && $0["n"] == "2" })

        // A file changed after it was offered: refused by its hash, nothing left behind.
        a.send("/send \(changingPath)")
        try await event(b, "offer 3") { $0["event"] == "file_offer" && $0["n"] == "3" }
        try Data(repeating: 2, count: 100_000).write(to: URL(fileURLWithPath: changingPath))
        b.send("/get 3")
        let failed = try await event(b, "file_failed") { $0["event"] == "file_failed" && $0["n"] == "3" }
        XCTAssertTrue(failed["error"]?.contains("do not match") ?? false, "\(failed)")
        XCTAssertFalse(FileManager.default.fileExists(atPath: manual + "/changing.bin"))
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: manual).filter { $0.hasSuffix(".part") }, [])
        // Bad commands are errors, not crashes.
        b.send("/get 99")
        try await event(b, "error for /get 99") { $0["event"] == "error" && ($0["message"]?.contains("no file offer 99") ?? false) }
        b.send("/send /nonexistent/file")
        try await event(b, "error for /send") { $0["event"] == "error" && ($0["message"]?.contains("cannot offer") ?? false) }
        for chat in [a, b, c] { chat.closeInput() }
        for chat in [a, b, c] {
            let status = try await chat.waitForExit(within: 20)
            XCTAssertEqual(status, 0)
        }
    }
}

extension ChatFilesCLITests {
    /// A peer in this process serving files and publishing on `topic`,
    /// connected to `chat` and seen subscribed there.
    func peerSharingFiles(with chat: ChatProcess, on topic: String) async throws
        -> (host: Libp2pHost, files: FileShareService, pubsub: PubSubService)
    {
        let (host, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        let files = FileShareService(host: host)
        files.start()
        let pubsub = try PubSubService(host: host)
        pubsub.start()
        _ = await pubsub.subscribe(topic)
        _ = try await host.connect(try Multiaddr(try chat.dialAddress()))
        let chatPeer = try peer(of: chat)
        let peerID = try XCTUnwrap(host.connectedPeers.first { "\($0)" == chatPeer })
        let subscribed = try await withDeadline(20) { await pubsub.waitUntilSubscribed(peerID, to: topic) }
        XCTAssertTrue(subscribed)
        return (host, files, pubsub)
    }

    /// A node of libp2p's universal-connectivity kind (here in-process: its file
    /// id published on `<topic>-file`, the file served on
    /// `/universal-connectivity-file/1`): the chat lists the offer and fetches it.
    func testUniversalConnectivityOfferIsListedAndFetched() async throws {
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = (0..<300_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        try Data(content).write(to: URL(fileURLWithPath: source + "/photo.jpg"))
        let chat = try await start(["--download-dir", downloads])
        let (host, files, pubsub) = try await peerSharingFiles(with: chat, on: "lobby-file")
        let offer = try await files.offer(path: source + "/photo.jpg")
        try await pubsub.publish("lobby-file", data: Array(offer.cid.text().utf8))
        let seen = try await event(chat, "universal offer") { $0["event"] == "file_offer" && $0["file_id"] == offer.cid.text() }
        XCTAssertEqual(seen["from"], "\(host.localPeer)")
        chat.send("/get \(try XCTUnwrap(seen["n"]))")
        let done = try await event(chat, "file_done") { $0["event"] == "file_done" }
        XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: try XCTUnwrap(done["path"])))), content)
        chat.closeInput()
        let status = try await chat.waitForExit(within: 20)
        XCTAssertEqual(status, 0)
        await pubsub.stop()
        await host.close()
    }
}

extension ChatFilesCLITests {
    /// Issue 25, row 11: a peer announces 40 files of 1 KiB to a chat with
    /// `--accept-files`: the chat fetches its share (25 files from one peer),
    /// two at a time, and says why it leaves the other 15 to `/get`; no
    /// partial file is left. Before, every offer within --max-accept was
    /// fetched at once (400 offers of 1 MiB filled a 256 MiB disk in 2 s).
    func testAutoAcceptTakesOnlyAPeersShare() async throws {
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let chat = try await start(["--download-dir", downloads, "--accept-files"])
        let (host, files, pubsub) = try await peerSharingFiles(with: chat, on: "lobby")
        for index in 0..<40 {
            let path = source + "/file-\(index).bin"
            try Data((0..<1024).map { UInt8(truncatingIfNeeded: $0 &* (index + 1)) }).write(to: URL(fileURLWithPath: path))
            let offer = try await files.offer(path: path)
            _ = try await pubsub.publish("lobby", data: Array(offer.announcement.utf8))
        }
        let deadline = Date().addingTimeInterval(60)
        var done = 0
        var refused = 0
        while Date() < deadline {
            done = chat.events.filter { $0["event"] == "file_done" }.count
            refused = chat.events.filter { $0["event"] == "file_not_accepted" }.count
            if done + refused >= 40 { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTAssertEqual(done, 25, "\(chat.output.suffix(20).joined(separator: "\n"))")
        XCTAssertEqual(refused, 15)
        let reason = try XCTUnwrap(chat.events.first { $0["event"] == "file_not_accepted" }?["reason"])
        XCTAssertTrue(reason.contains("25 files"), reason)
        let saved = try FileManager.default.contentsOfDirectory(atPath: downloads)
        XCTAssertEqual(saved.filter { $0.hasSuffix(".bin") }.count, 25)
        XCTAssertEqual(saved.filter { $0.hasSuffix(".part") }, [])
        // What was not taken can still be asked for.
        let skipped = try XCTUnwrap(chat.events.first { $0["event"] == "file_not_accepted" }?["n"])
        chat.send("/get \(skipped)")
        try await event(chat, "file_done of /get") { $0["event"] == "file_done" && $0["n"] == skipped }
        chat.closeInput()
        let status = try await chat.waitForExit(within: 20)
        XCTAssertEqual(status, 0)
        await pubsub.stop()
        await host.close()
    }
}

/// History after a partition, in network namespaces: one node cut off (its
/// link down, its connections destroyed) while the two others exchange 100
/// lines; healed, it prints all 100, once each, in order.
final class ChatHistoryNamespaceTests: XCTestCase {
    var network: TestNetwork!

    override func setUpWithError() throws {
        network = try TestNetwork()
    }

    override func tearDown() {
        network?.tearDown()
    }

    func testANodeCutOffGetsTheLinesItMissedOnceInOrder() async throws {
        var chats: [ChatProcess] = []
        var namespaces: [String] = []
        for index in 1...3 {
            let namespace = try network.addHost(index)
            namespaces.append(namespace)
            let chat = try ChatProcess(
                namespace: namespace,
                arguments: ["lobby", "--ephemeral", "--listen", "/ip4/0.0.0.0/tcp/0", "--mdns-interval", "1", "--mdns-ttl", "3"],
                network: network)
            try await chat.waitFor("startup", within: 20) { $0.hasPrefix("Listening on /ip4/192.0.2.") }
            chats.append(chat)
        }
        let (a, b, c) = (chats[0], chats[1], chats[2])
        for chat in chats {
            for other in chats where other !== chat {
                let id = try XCTUnwrap(other.peerID)
                try await chat.waitFor("\(id) joined", within: 20) { $0.hasSuffix("\(id) joined lobby") }
            }
        }
        // Meshes formed: a probe from each reaches the others.
        for (name, chat) in [("A", a), ("B", b), ("C", c)] { chat.send("probe from \(name)") }
        for (name, chat) in [("A", a), ("B", b), ("C", c)] {
            for other in ["A", "B", "C"] where other != name {
                try await chat.waitFor("probe of \(other)", within: 20) { $0.hasSuffix(": probe from \(other)") }
            }
        }
        // Cut C off: its link down and its sockets destroyed (its peers' ends stay half open).
        let cutAt = c.output.count
        try TestNetwork.ip(["-n", namespaces[2], "link", "set", "eth0", "down"])
        _ = try ChildProcess.run(TestNetwork.ipPath, ["netns", "exec", namespaces[2], "ss", "-K", "state", "established"])
        for other in [a, b] {
            let id = try XCTUnwrap(other.peerID)
            try await c.waitFor("C disconnected from \(id)", within: 20) { $0.hasPrefix("Disconnected: \(id)") }
        }
        // A and B exchange 100 lines meanwhile.
        for number in 1...50 { a.send("line \(number)") }
        try await b.waitFor("line 50 at B", within: 30) { $0.hasSuffix(": line 50") }
        for number in 51...100 { b.send("line \(number)") }
        try await a.waitFor("line 100 at A", within: 30) { $0.hasSuffix(": line 100") }
        XCTAssertFalse(c.output[cutAt...].contains { $0.hasSuffix(": line 1") }, "C heard the lines while cut off")
        // Healed: C reconnects and is given what it missed.
        try TestNetwork.ip(["-n", namespaces[2], "link", "set", "eth0", "up"])
        try await c.waitFor("line 100 at C", within: 90) { $0.hasSuffix(": line 100") }
        // A live line after the history marks the end of what is in flight.
        a.send("after the partition")
        try await c.waitFor("the live line", within: 30) { $0.hasSuffix(": after the partition") }
        let lines = c.output[cutAt...]
        var positions: [Int] = []
        for number in 1...100 {
            let matches = lines.indices.filter { lines[$0].hasSuffix(": line \(number)") }
            XCTAssertEqual(matches.count, 1, "C printed line \(number) \(matches.count) times")
            if let first = matches.first { positions.append(first) }
        }
        XCTAssertEqual(positions, positions.sorted(), "C printed the lines out of order")
        XCTAssertTrue(lines.contains { $0.hasPrefix("[history ") }, "no line came from the history with its send time")
        for chat in chats { chat.closeInput() }
        for chat in chats {
            let status = try await chat.waitForExit(within: 20)
            XCTAssertEqual(status, 0)
        }
    }
}

/// `/status` on a chat process: a peer that opens more connections than the
/// per-peer limit sees the extra ones refused, and the chat says so: in
/// `/status`, and in `limits` events (with --json), coalesced to at most one
/// per second for the reason, their counts adding up to the refusals.
final class ChatStatusCLITests: XCTestCase {
    func testStatusListsConnectionsAndRefusals() async throws {
        let chat = try await ChatProcess.loopback(["--ephemeral"])
        let address = try Multiaddr(try chat.dialAddress())
        let (host, _) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        // Four connections are allowed per peer; the other sixteen are refused.
        let started = ContinuousClock.now
        for _ in 0..<20 { _ = try? await host.dial(address, role: .initiator) }
        let reason = "4 connections per peer"
        chat.send("/status")
        let deadline = Date().addingTimeInterval(20)
        var status: [String: String]?
        var limitEvents: [[String: String]] = []
        var refusals = 0
        while Date() < deadline {
            status = chat.events.last { $0["event"] == "status" }
            limitEvents = chat.events.filter { $0["event"] == "limits" && $0["reason"] == reason }
            refusals = limitEvents.reduce(0) { $0 + (Int($1["count"] ?? "") ?? 0) }
            if status?["limits"]?.contains("connection:\(reason) 16") ?? false, refusals >= 16 { break }
            chat.send("/status")
            try await Task.sleep(for: .milliseconds(200))
        }
        let elapsed = ContinuousClock.now - started
        let found = try XCTUnwrap(status, chat.output.joined(separator: "\n"))
        XCTAssertTrue(found["limits"]?.contains("connection:\(reason) 16") ?? false, "\(found)")
        XCTAssertEqual(refusals, 16, "\(limitEvents)")
        XCTAssertTrue(limitEvents.allSatisfy { $0["peer"] == "\(host.localPeer)" }, "\(limitEvents)")
        XCTAssertTrue(limitEvents.allSatisfy { $0["addr"]?.hasPrefix("/ip4/127.0.0.1/tcp/") ?? false }, "\(limitEvents)")
        // Coalesced: one event at once, then at most one a second.
        let seconds = Int(elapsed.components.seconds) + 1
        XCTAssertLessThanOrEqual(limitEvents.count, seconds + 1, "\(limitEvents.count) events in \(elapsed)")
        XCTAssertLessThan(limitEvents.count, 16)
        XCTAssertTrue(found["connections"]?.contains("\(host.localPeer) /ip4/127.0.0.1/") ?? false, "\(found)")
        XCTAssertTrue(found["connections"]?.contains("direct") ?? false, "\(found)")
        XCTAssertNotNil(found["reachability"])
        chat.closeInput()
        let exit = try await chat.waitForExit(within: 20)
        XCTAssertEqual(exit, 0)
        await host.close()
    }
}
