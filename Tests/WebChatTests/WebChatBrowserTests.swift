import ChildProcess
import Foundation
import TestSupport
import XCTest

/// Two chats on loopback, each serving its page (`--web`), driven in headless
/// Chromium by Selenium (browser/webchat_browser.py): a line typed into one
/// page shows in the other, a file dropped on one page and one picked in the
/// other arrive in the other chat's download directory, and the network view
/// draws the connection. Needs Debian's chromium and chromedriver and a Python
/// with browser/requirements.txt (./scripts/test installs them; the venv is
/// P2PCHAT_BROWSER_PYTHON, else .venv-browser). P2PCHAT_WEBCHAT_SCREENSHOTS=DIR
/// saves the two views there (docs/ holds the README's).
final class WebChatBrowserTests: XCTestCase {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    static var binary: String {
        ProcessInfo.processInfo.environment["P2PCHAT_BINARY"]
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("p2pchat").path
    }

    /// A skip, or a failure as well when P2PCHAT_REQUIRE_INTEROP is set (./scripts/test and CI: a broken setup).
    func missing(_ what: String, hint: String) -> XCTSkip {
        if ProcessInfo.processInfo.environment["P2PCHAT_REQUIRE_INTEROP"] != nil {
            XCTFail("\(what) is missing but interop is required (P2PCHAT_REQUIRE_INTEROP): \(hint)")
            return XCTSkip("FAILED: \(what) is missing")
        }
        return XCTSkip("SKIPPED: \(what) is missing: \(hint)")
    }

    func executable(_ name: String) -> String? {
        ["/usr/bin", "/usr/local/bin", "/bin"].map { "\($0)/\(name)" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }

    /// A chat with its page on a free port; its peer id, TCP address and page URL once it printed them.
    func startChat(downloads: String, connect: String? = nil) async throws -> (ChildProcess, peer: String, address: String, url: String) {
        var arguments = [
            "--no-mdns", "--json", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--download-dir", downloads, "--web", "127.0.0.1:0",
        ]
        if let connect { arguments += ["--connect", connect] }
        let chat = try ChildProcess(Self.binary, arguments, stdinPipe: true)
        let deadline = ContinuousClock.now + .seconds(20)
        while ContinuousClock.now < deadline {
            let events = chat.outputLines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
            func field(_ event: String, _ key: String) -> String? {
                events.first { $0["event"] as? String == event }?[key] as? String
            }
            if let peer = field("local_peer", "peer"), let address = field("listening", "addr"), let url = field("web", "url") {
                return (chat, peer, address, url)
            }
            guard chat.isRunning else { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        chat.stop()
        XCTFail("the chat did not print its address and page URL: \(chat.outputLines) \(chat.stderrText)")
        throw XCTSkip("FAILED: no chat")
    }

    func testTwoPagesChatSendFilesAndShowTheConnection() async throws {
        guard let chromium = executable("chromium") else { throw missing("chromium", hint: "apt-get install chromium") }
        guard let chromedriver = executable("chromedriver") else {
            throw missing("chromedriver", hint: "apt-get install chromium-driver")
        }
        let python =
            ProcessInfo.processInfo.environment["P2PCHAT_BROWSER_PYTHON"]
            ?? Self.repository.appendingPathComponent(".venv-browser/bin/python").path
        var hasSelenium = false
        if FileManager.default.isExecutableFile(atPath: python) {
            let probe = try ChildProcess(python, ["-c", "import selenium"], stdout: .discard, stderr: .discard)
            hasSelenium = try await probe.waitForExit(within: 30) == 0
        }
        guard hasSelenium else {
            throw missing("Python with Selenium (\(python))", hint: "python3 -m venv .venv-browser && .venv-browser/bin/pip install -r Tests/WebChatTests/browser/requirements.txt")
        }

        let work = NSTemporaryDirectory() + "webchat-browser-\(UUID().uuidString)"
        defer { try? FileManager.default.removeItem(atPath: work) }
        let (downloadsA, downloadsB) = (work + "/downloads-a", work + "/downloads-b")
        for folder in [downloadsA, downloadsB] { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true) }
        // Large enough to take several chunks (and progress reports); the dropped one is text (it goes through JS as a string).
        let dropped = work + "/dropped-notes.txt"
        let droppedContent = Data((0..<6000).map { "line \($0) of the dropped file, \($0 &* 2_654_435_761 % 1_000_003)\n" }.joined().utf8)
        try droppedContent.write(to: URL(fileURLWithPath: dropped))
        let picked = work + "/picked.bin"
        var generator = SystemRandomNumberGenerator()
        let pickedContent = Data((0..<300_000).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try pickedContent.write(to: URL(fileURLWithPath: picked))

        let a = try await startChat(downloads: downloadsA)
        defer { a.0.stop() }
        let b = try await startChat(downloads: downloadsB, connect: "\(a.address)/p2p/\(a.peer)")
        defer { b.0.stop() }

        var arguments = [
            Self.repository.appendingPathComponent("Tests/WebChatTests/browser/webchat_browser.py").path,
            "--url-a", a.url, "--url-b", b.url, "--drop-file", dropped, "--pick-file", picked,
            "--chromium", chromium, "--chromedriver", chromedriver,
        ]
        if let screenshots = ProcessInfo.processInfo.environment["P2PCHAT_WEBCHAT_SCREENSHOTS"] { arguments += ["--screenshots", screenshots] }
        let driver = try ChildProcess(python, arguments)
        let status: Int32
        do {
            status = try await driver.waitForExit(within: 150)
        } catch {
            driver.stop()
            throw error
        }
        let output = driver.outputLines.joined(separator: "\n")
        XCTAssertEqual(status, 0, "the browser test failed:\n\(output)\n\(driver.stderrText)")
        XCTAssertTrue(driver.outputLines.contains("PASS"), output)
        // What the pages said arrived is really there, whole.
        XCTAssertEqual(FileManager.default.contents(atPath: downloadsB + "/dropped-notes.txt"), droppedContent, "the dropped file in B's downloads")
        XCTAssertEqual(FileManager.default.contents(atPath: downloadsA + "/picked.bin"), pickedContent, "the picked file in A's downloads")
    }
}

/// `--web`'s address as the chat takes it (no browser needed).
final class WebChatCLITests: XCTestCase {
    func testAPortAloneServesOnLoopbackAndABadAddressIsRefused() async throws {
        let chat = try ChildProcess(
            WebChatBrowserTests.binary, ["--no-mdns", "--json", "--ephemeral", "--listen", "/ip4/127.0.0.1/tcp/0", "--web", "0"], stdinPipe: true)
        defer { chat.stop() }
        var url: String?
        let deadline = ContinuousClock.now + .seconds(20)
        while url == nil, chat.isRunning, ContinuousClock.now < deadline {
            url = chat.outputLines.compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any] }
                .first { $0["event"] as? String == "web" }?["url"] as? String
            try await Task.sleep(for: .milliseconds(20))
        }
        let shown = try XCTUnwrap(url, "no web event: \(chat.outputLines) \(chat.stderrText)")
        XCTAssertTrue(shown.hasPrefix("http://127.0.0.1:") && shown.contains("/?token="), shown)
        // Stdin's end does not end a chat that serves its page; SIGTERM does, cleanly.
        chat.closeInput()
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertTrue(chat.isRunning, "the chat ended with stdin")
        chat.terminate()
        let status = try await chat.waitForExit(within: 20)
        XCTAssertEqual(status, 0)

        for bad in ["lobby:x", "[::1", "70000", "a b:80"] {
            let refused = try ChildProcess(WebChatBrowserTests.binary, ["--no-mdns", "--ephemeral", "--web", bad], stdinPipe: true, stdout: .discard)
            let code = try await refused.waitForExit(within: 20)
            XCTAssertEqual(code, 1, bad)
            // The exit can come before the reader thread has the last of stderr.
            try await waitUntil("\(bad): stderr says why (\(refused.stderrText))", seconds: 5) {
                refused.stderrText.contains("--web: not an address")
            }
        }
    }
}
