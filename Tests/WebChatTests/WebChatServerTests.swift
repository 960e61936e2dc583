import Foundation
import Synchronization
import TestSupport
import XCTest

@testable import WebChat

/// What the server handed to the chat.
final class ChatRecorder: Sendable {
    private let state = Mutex<(lines: [String], uploads: [String])>(([], []))
    var lines: [String] { state.withLock { $0.lines } }
    var uploads: [String] { state.withLock { $0.uploads } }
    func line(_ line: String) { state.withLock { $0.lines.append(line) } }
    func uploaded(_ path: String) { state.withLock { $0.uploads.append(path) } }
}

/// The server on loopback, spoken to byte by byte as a browser (or a hostile page) would.
final class WebChatServerTests: XCTestCase {
    var server: WebChatServer!
    let recorder = ChatRecorder()
    var uploads = ""
    var host: String { "127.0.0.1:\(server.port)" }
    var origin: String { "http://\(host)" }
    var token: String { server.configuration.token }

    override func setUp() async throws {
        uploads = NSTemporaryDirectory() + "webchat-test-\(UUID().uuidString)"
        var configuration = WebChatConfiguration(uploadDirectory: uploads)
        configuration.port = 0
        configuration.maxUploadBytes = 100_000
        let recorder = self.recorder
        server = try await WebChatServer.start(
            configuration,
            handlers: WebChatHandlers(
                line: { recorder.line($0) }, uploaded: { recorder.uploaded($0) },
                greeting: { [#"{"event":"hello","peer":"me","topic":"lobby"}"#] }))
    }

    override func tearDown() async throws {
        await server.close()
        try? FileManager.default.removeItem(atPath: uploads)
    }

    func get(_ target: String, host: String? = nil, origin: String? = nil) async throws -> (status: Int, body: String) {
        let port = server.port
        let host = host ?? self.host
        return try await onThread {
            let client = try RawClient(port: port)
            try client.request("GET", target, host: host, headers: origin.map { ["Origin: \($0)"] } ?? [])
            return try client.readResponse()
        }
    }

    /// A page's WebSocket, upgraded with the token and our origin, its greeting read.
    func openPage() async throws -> RawClient {
        let (port, host, origin, token) = (server.port, host, origin, token)
        return try await onThread {
            let client = try RawClient(port: port)
            let status = try client.upgrade("/ws?token=\(token)", host: host, origin: origin)
            guard status == 101 else { throw RawClientError(description: "upgrade answered \(status)") }
            _ = try client.readEvent("hello")
            return client
        }
    }

    func testThePageNeedsTheToken() async throws {
        let missing = try await get("/")
        XCTAssertEqual(missing.status, 403)
        XCTAssertTrue(missing.body.contains("no token"), missing.body)
        let wrong = try await get("/?token=\(String(token.reversed()))")
        XCTAssertEqual(wrong.status, 403)
        XCTAssertTrue(wrong.body.contains("wrong token"), wrong.body)
        let page = try await get("/?token=\(token)")
        XCTAssertEqual(page.status, 200)
        XCTAssertTrue(page.body.hasPrefix("<!doctype html>"))
        // The style and the script are inlined: nothing else to fetch, nothing from elsewhere.
        XCTAssertTrue(page.body.contains("new WebSocket("))
        XCTAssertTrue(page.body.contains("--accent"))
        XCTAssertFalse(page.body.contains("/*SCRIPT*/"))
        XCTAssertFalse(page.body.contains("<script src"))
    }

    func testOtherOriginsAndHostNamesAreRefused() async throws {
        let foreign = try await get("/?token=\(token)", origin: "http://evil.example")
        XCTAssertEqual(foreign.status, 403)
        XCTAssertTrue(foreign.body.contains("http://evil.example"), foreign.body)
        let rebound = try await get("/?token=\(token)", host: "evil.example:\(server.port)", origin: "http://evil.example:\(server.port)")
        XCTAssertEqual(rebound.status, 403)
        let own = try await get("/?token=\(token)", origin: origin)
        XCTAssertEqual(own.status, 200)
        // An upload from another site's page, with the token even: refused, nothing stored.
        let (port, host, token) = (server.port, host, token)
        let upload = try await onThread {
            let client = try RawClient(port: port)
            try client.request("POST", "/upload?token=\(token)&name=x.txt", host: host, headers: ["Origin: http://evil.example"], body: Array("x".utf8))
            return try client.readResponse()
        }
        XCTAssertEqual(upload.status, 403)
        XCTAssertEqual(recorder.uploads, [])
    }

    func testTheWebSocketNeedsTheTokenAndOurOrigin() async throws {
        let (port, host, origin, token) = (server.port, host, origin, token)
        let statuses = try await onThread {
            try [
                RawClient(port: port).upgrade("/ws", host: host, origin: origin),
                RawClient(port: port).upgrade("/ws?token=nope", host: host, origin: origin),
                RawClient(port: port).upgrade("/ws?token=\(token)", host: host, origin: "http://evil.example"),
                RawClient(port: port).upgrade("/ws?token=\(token)", host: host, origin: "null"),
                RawClient(port: port).upgrade("/ws?token=\(token)", host: host, origin: origin),
            ]
        }
        XCTAssertEqual(statuses, [403, 403, 403, 403, 101])
        // The accepted page closed when its client went; the server notices on its event loop.
        let server = try XCTUnwrap(self.server)
        try await waitUntil("no socket kept, refused or closed") { server.pages == 0 }
    }

    func testLinesGoToTheChatAndEventsToEveryPage() async throws {
        let first = try await openPage()
        try await onThread { try first.sendText(#"{"line":"hello there\n/who"}"#) }
        try await waitUntil("the chat has both lines") { recorder.lines == ["hello there", "/who"] }
        server.broadcast(#"{"event":"message","text":"one"}"#)
        let seen = try await onThread { try first.readEvent("message") }
        XCTAssertEqual(json(seen)["text"] as? String, "one")
        // A page that connects later gets what was said so far.
        let second = try await openPage()
        let replayed = try await onThread { try second.readEvent("message") }
        XCTAssertEqual(json(replayed)["text"] as? String, "one")
        server.showNetwork(
            NetworkView(
                peer: "me", reachability: "local", listen: [], observed: [], advertised: [], reservations: [], topic: "lobby",
                topicPeers: ["p"], mesh: ["p"], connections: [], dht: "off"))
        for page in [first, second] {
            let network = try await onThread { try page.readEvent("network") }
            XCTAssertEqual((json(network)["network"] as? [String: Any])?["mesh"] as? [String], ["p"])
        }
    }

    func testBadInputFromThePageGetsAnErrorAndTheSocketStays() async throws {
        let page = try await openPage()
        let cases: [(opcode: UInt8, payload: [UInt8], says: String)] = [
            (1, Array("not json".utf8), "not a JSON object"),
            (1, Array(#"{"text":"hi"}"#.utf8), #"no "line""#),
            (1, [0x7B, 0xC3, 0x28, 0x7D], "not UTF-8"),
            (2, [1, 2, 3], "binary"),
        ]
        for (opcode, payload, says) in cases {
            let error = try await onThread {
                try page.sendFrame(opcode: opcode, payload)
                return try page.readEvent("error")
            }
            let message = json(error)["message"] as? String ?? ""
            XCTAssertTrue(message.contains(says), "\(message) does not say \(says)")
        }
        // Still open, still heard.
        try await onThread { try page.sendText(#"{"line":"after all that"}"#) }
        try await waitUntil("the chat has the line") { recorder.lines == ["after all that"] }
    }

    func testOversizedInputClosesTheSocketWithTheReason() async throws {
        let oneFrame = try await openPage()
        let close = try await onThread {
            try oneFrame.sendFrame(opcode: 1, [UInt8](repeating: 0x61, count: 70_000))
            return try oneFrame.readClose()
        }
        XCTAssertEqual(close.code, 1009)
        XCTAssertTrue(close.reason.contains("65536"), close.reason)
        // Within the frame limit each, over it together.
        let fragments = try await openPage()
        let fragmentedClose = try await onThread {
            try fragments.sendFrame(opcode: 1, [UInt8](repeating: 0x61, count: 40_000), fin: false)
            try fragments.sendFrame(opcode: 0, [UInt8](repeating: 0x61, count: 40_000), fin: true)
            return try fragments.readClose()
        }
        XCTAssertEqual(fragmentedClose.code, 1009)
        XCTAssertTrue(fragmentedClose.reason.contains("80000"), fragmentedClose.reason)
        // A frame header announcing 2^63 bytes.
        let huge = try await openPage()
        let hugeClose = try await onThread {
            try huge.write([0x81, 0xFF, 0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3, 4])
            return try huge.readClose()
        }
        XCTAssertEqual(hugeClose.code, 1009)
        // Frames no browser sends: unmasked, a reserved opcode, reserved bits.
        for (frame, says) in [
            ([0x81, 0x02, 0x68, 0x69], "unmasked"), ([0x83, 0x80, 1, 2, 3, 4], "opcode"), ([0xC1, 0x80, 1, 2, 3, 4], "reserved bits"),
        ] as [([UInt8], String)] {
            let page = try await openPage()
            let close = try await onThread {
                try page.write(frame)
                return try page.readClose()
            }
            XCTAssertEqual(close.code, 1002)
            XCTAssertTrue(close.reason.contains(says), close.reason)
        }
        XCTAssertEqual(recorder.lines, [])
        // The server is fine.
        let page = try await get("/?token=\(token)")
        XCTAssertEqual(page.status, 200)
        _ = try await openPage()
    }

    func testUploadsAreStoredAndHandedToTheChat() async throws {
        let (port, host, origin, token) = (server.port, host, origin, token)
        func upload(_ name: String, _ body: [UInt8]) async throws -> Int {
            try await onThread {
                let client = try RawClient(port: port)
                let encoded = name.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? name
                try client.request("POST", "/upload?token=\(token)&name=\(encoded)", host: host, headers: ["Origin: \(origin)"], body: body)
                return try client.readResponse().status
            }
        }
        let content = (0..<50_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        let stored = try await upload("notes.txt", content)
        XCTAssertEqual(stored, 200)
        try await waitUntil("the chat got the upload") { recorder.uploads.count == 1 }
        let path = try XCTUnwrap(recorder.uploads.first)
        XCTAssertTrue(path.hasPrefix(uploads + "/") && path.hasSuffix("/notes.txt"), path)
        XCTAssertEqual(FileManager.default.contents(atPath: path), Data(content))
        // Directories in the name are dropped: the file stays in the upload folder.
        let escaped = try await upload("../../escape.txt", [1])
        XCTAssertEqual(escaped, 200)
        try await waitUntil("the chat got the second upload") { recorder.uploads.count == 2 }
        XCTAssertTrue(recorder.uploads[1].hasPrefix(uploads + "/") && recorder.uploads[1].hasSuffix("/escape.txt"))
        let hidden = try await upload(".bashrc", [1])
        XCTAssertEqual(hidden, 400)
        let tooLarge = try await upload("big.bin", [UInt8](repeating: 0, count: 100_001))
        XCTAssertEqual(tooLarge, 413)
        XCTAssertEqual(recorder.uploads.count, 2)
    }
}
