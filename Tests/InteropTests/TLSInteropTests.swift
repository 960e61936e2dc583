import Host
import Identify
import Multiformats
import NIOPosix
import Ping
import TLS
import TestSupport
import Transport
import XCTest

/// /tls/1.0.0 with py-libp2p 0.8.1 (peer.py --security tls), both directions.
/// py offers only "libp2p" in ALPN, so the muxer is always negotiated with
/// multistream-select after the handshake.
final class TLSInteropTests: PythonPeerTestCase {
    override var pythonArguments: [String] { ["--security", "tls"] }

    func testSwiftDialsPythonOverTLS() async throws {
        let python = try startPython(["listen", "--port", "0", "--timeout", "120"])
        let listening = try await python.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let (host, _) = try await makeTestHost(group: group, security: [TLSSecurity()])
        let connection = try await host.connect(address)
        XCTAssertEqual(connection.remotePeer, address.peerID, python.stderrTail)
        let rtts = try await PingService.ping(connection, count: 3)
        XCTAssertEqual(rtts.count, 3)
        let info = try await IdentifyService(host: host, agentVersion: "x").identify(connection)
        XCTAssertTrue(info.agentVersion?.contains("py-libp2p") ?? false)
        let data = patternBytes(count: 8 * 1024 * 1024, seed: 8)
        let back = try await withDeadline(120) { try await echo(data, over: connection) }
        XCTAssertTrue(back == data, "echoed bytes differ")
        await host.close()
    }

    func testPythonDialsSwiftOverTLS() async throws {
        let (host, address) = try await makeTestHost(group: group, security: [TLSSecurity()])
        for (action, event) in [(["ping", "--count", "3"], "ping"), (["identify"], "identified"),
                                (["echo", "--bytes", "\(8 * 1024 * 1024)"], "echo")] {
            let result = try await pythonDials(address, action, expect: event, within: 120)
            if event == "echo" { XCTAssertEqual(result["ok"] as? Double, 1) }
            if event == "identified" { XCTAssertEqual(result["agent"] as? String, "p2pchat-test/0") }
        }
        await host.close()
    }
}
