import XCTest

@testable import WebChat

final class WebChatAccessTests: XCTestCase {
    let token = "0123456789abcdef"

    func testTheTokenIsRequiredAndMustMatch() {
        let access = WebChatAccess.forServer(host: "127.0.0.1", port: 8080, token: token)
        XCTAssertEqual(access.check(target: "/", host: "127.0.0.1:8080", origin: nil), .missingToken)
        XCTAssertEqual(access.check(target: "/?token=", host: "127.0.0.1:8080", origin: nil), .wrongToken)
        XCTAssertEqual(access.check(target: "/?token=0123456789abcdeF", host: "127.0.0.1:8080", origin: nil), .wrongToken)
        XCTAssertEqual(access.check(target: "/?token=0123456789abcde", host: "127.0.0.1:8080", origin: nil), .wrongToken)
        XCTAssertEqual(access.check(target: "/?x=1&token=\(token)", host: "127.0.0.1:8080", origin: nil), nil)
        XCTAssertEqual(access.check(target: "/ws?token=\(token)&x=1", host: "localhost:8080", origin: "http://localhost:8080"), nil)
    }

    func testOtherOriginsAreRefused() {
        let access = WebChatAccess.forServer(host: "127.0.0.1", port: 8080, token: token)
        let target = "/ws?token=\(token)"
        XCTAssertEqual(
            access.check(target: target, host: "127.0.0.1:8080", origin: "http://evil.example"), .foreignOrigin("http://evil.example"))
        XCTAssertEqual(access.check(target: target, host: "127.0.0.1:8080", origin: "null"), .foreignOrigin("null"))
        // Same host, another port: another origin.
        XCTAssertEqual(
            access.check(target: target, host: "127.0.0.1:8080", origin: "http://127.0.0.1:9999"), .foreignOrigin("http://127.0.0.1:9999"))
        XCTAssertEqual(
            access.check(target: target, host: "127.0.0.1:8080", origin: "https://127.0.0.1:8080"), .foreignOrigin("https://127.0.0.1:8080"))
        XCTAssertEqual(access.check(target: target, host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080"), nil)
    }

    /// A site whose name resolves to 127.0.0.1 (DNS rebinding) has a Host and an Origin that agree, but not ours.
    func testUnknownHostNamesAreRefusedOnLoopback() {
        let access = WebChatAccess.forServer(host: "127.0.0.1", port: 8080, token: token)
        XCTAssertEqual(
            access.check(target: "/?token=\(token)", host: "evil.example:8080", origin: "http://evil.example:8080"),
            .unknownHost("evil.example:8080"))
        XCTAssertEqual(access.check(target: "/?token=\(token)", host: nil, origin: nil), .unknownHost(""))
        XCTAssertEqual(access.check(target: "/?token=\(token)", host: "[::1]:8080", origin: "http://[::1]:8080"), nil)
    }

    func testAWildcardAddressTakesAnyHostButStillTheTokenAndOrigin() {
        let access = WebChatAccess.forServer(host: "0.0.0.0", port: 8080, token: token)
        XCTAssertEqual(access.check(target: "/?token=\(token)", host: "192.168.1.5:8080", origin: "http://192.168.1.5:8080"), nil)
        XCTAssertEqual(access.check(target: "/?token=nope", host: "192.168.1.5:8080", origin: nil), .wrongToken)
        XCTAssertEqual(
            access.check(target: "/?token=\(token)", host: "192.168.1.5:8080", origin: "http://evil.example"),
            .foreignOrigin("http://evil.example"))
    }

    func testTokensAreFreshAndLong() {
        let tokens = Set((0..<100).map { _ in WebChatAccess.randomToken() })
        XCTAssertEqual(tokens.count, 100)
        XCTAssertTrue(tokens.allSatisfy { $0.count == 48 && $0.allSatisfy(\.isHexDigit) })
    }

    func testQueryValues() {
        XCTAssertEqual(WebChatAccess.queryValue("name", in: "/upload?token=a&name=my%20file.txt"), "my file.txt")
        XCTAssertEqual(WebChatAccess.queryValue("name", in: "/upload?name"), nil)
        XCTAssertEqual(WebChatAccess.queryValue("name", in: "/upload"), nil)
        XCTAssertEqual(WebChatAccess.path(of: "/ws?token=a"), "/ws")
    }
}

final class WebChatInputTests: XCTestCase {
    func testLinesAreTaken() throws {
        XCTAssertEqual(try WebChatInput.decode(Array(#"{"line":"hello"}"#.utf8)), ["hello"])
        XCTAssertEqual(try WebChatInput.decode(Array(#"{"line":"one\ntwo\r\n\nthree"}"#.utf8)), ["one", "two", "three"])
        XCTAssertEqual(try WebChatInput.decode(Array(#"{"line":"/topic x","extra":[1,2]}"#.utf8)), ["/topic x"])
        XCTAssertEqual(try WebChatInput.decode(Array(#"{"line":""}"#.utf8)), [])
    }

    func testBadMessagesSayWhy() {
        func failure(_ bytes: [UInt8]) -> WebChatInput.Failure? {
            do {
                _ = try WebChatInput.decode(bytes)
                return nil
            } catch { return error }
        }
        XCTAssertEqual(failure(Array("hello".utf8)), .notJSON)
        XCTAssertEqual(failure(Array("[1,2]".utf8)), .notJSON)
        XCTAssertEqual(failure(Array(#"{"line":"#.utf8)), .notJSON)  // truncated
        XCTAssertEqual(failure([]), .notJSON)
        XCTAssertEqual(failure(Array(#"{"text":"hi"}"#.utf8)), .noLine)
        XCTAssertEqual(failure(Array(#"{"line":42}"#.utf8)), .noLine)
        XCTAssertEqual(failure([0x7B, 0xFF, 0xFE, 0x7D]), .notUTF8)
        let oversized = Array(#"{"line":""#.utf8) + [UInt8](repeating: 0x61, count: WebChatInput.maxMessageBytes) + Array(#""}"#.utf8)
        XCTAssertEqual(failure(oversized), .tooLarge(bytes: oversized.count))
        let manyLines = Array(#"{"line":""#.utf8) + Array(String(repeating: "x\\n", count: 101).utf8) + Array(#""}"#.utf8)
        XCTAssertEqual(failure(manyLines), .tooManyLines(101))
    }

    /// Random bytes and random cuts of a good message: an answer or a Failure, never a crash.
    func testRandomInputNeverCrashes() {
        var random = SystemRandomNumberGenerator()
        let good = Array(#"{"line":"hello \u00e9 world","n":[1,{"a":null}]}"#.utf8)
        var taken = 0
        for round in 0..<3000 {
            let bytes: [UInt8] =
                switch round % 3 {
                case 0: (0..<Int.random(in: 0..<200, using: &random)).map { _ in UInt8.random(in: 0...255, using: &random) }
                case 1: Array(good.prefix(Int.random(in: 0...good.count, using: &random)))
                default: good.map { Int.random(in: 0..<20, using: &random) == 0 ? UInt8.random(in: 0...255, using: &random) : $0 }
                }
            if (try? WebChatInput.decode(bytes)) != nil { taken += 1 }
        }
        // The whole good message, at least, is taken (round 1 cuts it at full length now and then).
        XCTAssertGreaterThan(taken, 0)
    }
}
