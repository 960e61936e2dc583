import Host
import Multiformats
import NIOPosix
import RequestResponse
import TestSupport
import Transport
import XCTest

/// Request-response with py-libp2p 0.8.1's `request_response` (rr_peer.py,
/// BytesCodec on /p2pchat/rr/1.0.0), both directions.
final class RequestResponseInteropTests: PythonPeerTestCase {
    let protocolID = "/p2pchat/rr/1.0.0"
    override var pythonScript: String { "rr_peer.py" }

    func testSwiftRequestsFromPython() async throws {
        let python = try startPython(["--request-timeout", "30", "--max-request", "100000", "serve"])
        let listening = try await python.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let (host, _) = try await makeTestHost(group: group)
        let peer = try XCTUnwrap(address.peerID)
        _ = try await host.connect(address)
        var configuration = RequestResponseConfiguration()
        configuration.timeout = .seconds(2)
        configuration.maxRequestSize = 1 << 20
        let client = RequestResponse(host: host, protocols: [protocolID], codec: BytesCodec(), configuration: configuration)
        let stderr: @Sendable () -> String = { python.stderrTail }
        try await withDeadline(60) {
            let reply: [UInt8]
            do {
                reply = try await client.send(Array("hello".utf8), to: peer)
            } catch {
                return XCTFail("\(error); py: \(stderr())")
            }
            XCTAssertEqual(reply, Array("py:hello".utf8), python.stderrTail)
            // (Not an empty request: we half-close after a request, as rust-libp2p does
            // and its read-to-end codecs need, and py 0.8.1 reads a 0-byte message with
            // read(0), which raises at the end of the stream: py resets.)
            let large = patternBytes(count: 99_000, seed: 4)
            let largeReply = try await client.send(large, to: peer)
            XCTAssertEqual(largeReply, Array("py:".utf8) + large)
            // Over py's request limit: it resets the stream.
            do {
                _ = try await client.send([UInt8](repeating: 1, count: 100_001), to: peer)
                XCTFail("py served a request over its limit")
            } catch let error as RequestResponseError {
                guard case .reset = error else { return XCTFail("\(error)") }
            }
            // py stalls on "slow": our timeout ends the request.
            do {
                _ = try await client.send(Array("slow".utf8), to: peer)
                XCTFail("a stalled request returned")
            } catch let error as RequestResponseError {
                guard case .timeout = error else { return XCTFail("\(error)") }
            }
            // A protocol py does not serve.
            let other = RequestResponse(host: host, protocols: ["/p2pchat/rr/9.0.0"], codec: BytesCodec())
            do {
                _ = try await other.send([1], to: peer)
                XCTFail("py accepted a protocol it does not serve")
            } catch let error as RequestResponseError {
                guard case .unsupportedProtocols = error else { return XCTFail("\(error)") }
            }
            let again = try await client.send(Array("again".utf8), to: peer)
            XCTAssertEqual(again, Array("py:again".utf8))
        }
        await host.close()
    }

    func testPythonRequestsFromSwift() async throws {
        let (host, address) = try await makeTestHost(group: group)
        var configuration = RequestResponseConfiguration()
        configuration.maxRequestSize = 1000
        RequestResponse(host: host, protocols: [protocolID], codec: BytesCodec(), configuration: configuration).serve {
            request, context in
            if request == Array("fail".utf8) { throw CancellationError() }
            return Array("swift:".utf8) + request + Array(context.peer.description.suffix(4).utf8)
        }
        let requests = ["6869", "", "6661696c", String(repeating: "ab", count: 1001), "6279"]  // hi, empty, fail, too large, by
        let python = try startPython(["request", "\(address)"] + requests)
        let started = try await python.next("started")
        let pyPeer = String(try XCTUnwrap(started["peer"] as? String).suffix(4))
        var replies: [[String: any Sendable]] = []
        for _ in requests { replies.append(try await python.next("reply", within: 60)) }
        let status = try await python.waitForExit(within: 30)
        XCTAssertEqual(status, 0, python.stderrTail)
        XCTAssertEqual(replies[0]["hex"] as? String, hex(Array("swift:hi".utf8) + Array(pyPeer.utf8)))
        XCTAssertEqual(replies[1]["hex"] as? String, hex(Array("swift:".utf8) + Array(pyPeer.utf8)))
        // Our handler threw, and the request was over our limit: both reset, which py reports as an error.
        XCTAssertNotNil(replies[2]["error"], "\(replies[2])")
        XCTAssertNotNil(replies[3]["error"], "\(replies[3])")
        XCTAssertEqual(replies[4]["hex"] as? String, hex(Array("swift:by".utf8) + Array(pyPeer.utf8)))
        await host.close()
    }
}
