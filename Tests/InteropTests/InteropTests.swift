import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import TestSupport
import Transport
import XCTest

/// Wire compatibility with py-libp2p 0.8.1 (Noise + Yamux over TCP), both directions.
final class InteropTests: PythonPeerTestCase {

    /// A py-libp2p listener and its address.
    func pythonListener() async throws -> (PythonPeer, Multiaddr) {
        let peer = try startPython(["listen", "--port", "0", "--timeout", "240"])
        let listening = try await peer.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        return (peer, address)
    }

    func testSwiftDialsPythonPingAndIdentify() async throws {
        let (_, address) = try await pythonListener()
        let (host, _) = try await makeTestHost(group: group)
        let connection = try await host.connect(address)
        XCTAssertEqual(connection.remotePeer, address.peerID)
        let rtts = try await PingService.ping(connection, count: 3)
        XCTAssertEqual(rtts.count, 3)
        let info = try await IdentifyService(host: host, agentVersion: "x").identify(connection)
        XCTAssertEqual(info.protocolVersion, "ipfs/0.1.0")
        XCTAssertTrue(info.agentVersion?.contains("py-libp2p") ?? false, "\(String(describing: info.agentVersion))")
        XCTAssertTrue(info.protocols.contains(PingService.protocolID), "\(info.protocols)")
        XCTAssertFalse(info.listenAddresses.isEmpty)
        // py-libp2p's signed peer record verifies and names its listen address.
        let record = try XCTUnwrap(info.peerRecord, "no valid signed peer record from python")
        XCTAssertEqual(record.peerID, connection.remotePeer)
        XCTAssertTrue(record.addresses.contains { address.description.hasPrefix($0.description) }, "\(record.addresses)")
        XCTAssertNotNil(host.peerStore.info(connection.remotePeer)?.signedPeerRecord)
        await host.close()
    }

    func testSwiftEchoes64MiBThroughPython() async throws {
        let (_, address) = try await pythonListener()
        let (host, _) = try await makeTestHost(group: group)
        let connection = try await host.connect(address)
        let data = patternBytes(count: 64 * 1024 * 1024, seed: 64)
        let back = try await withDeadline(240) { try await echo(data, over: connection) }
        XCTAssertEqual(back.count, data.count)
        XCTAssertTrue(back == data, "echoed bytes differ")
        await host.close()
    }

    func testSwiftOpensHundredStreamsToPython() async throws {
        let (python, address) = try await pythonListener()
        defer { if testRun?.hasSucceeded == false { print("python stderr:\n\(python.stderrTail)") } }
        let (host, _) = try await makeTestHost(group: group)
        let connection = try await host.connect(address)
        let intact = try await withDeadline(120) {
            try await echoConcurrently(100, over: connection, bytes: 16 * 1024, seed: 1, chunk: 4096)
        }
        XCTAssertEqual(intact, 100)
        await host.close()
    }

    /// py-libp2p dials us and runs `action`; returns its result line.
    func pythonDialsSwift(_ action: [String], expect event: String, within seconds: Double = 120) async throws
        -> [String: any Sendable]
    {
        let (host, address) = try await makeTestHost(group: group)
        let result = try await pythonDials(address, action, expect: event, within: seconds)
        await host.close()
        return result
    }

    func testPythonDialsSwiftPing() async throws {
        let result = try await pythonDialsSwift(["ping", "--count", "3"], expect: "ping")
        XCTAssertNotNil(result["rtt_ms"] as? Double)
    }

    func testPythonDialsSwiftIdentify() async throws {
        let result = try await pythonDialsSwift(["identify"], expect: "identified")
        XCTAssertEqual(result["agent"] as? String, "p2pchat-test/0")
        XCTAssertEqual(result["protocol_version"] as? String, "ipfs/0.1.0")
        XCTAssertEqual(result["public_key_ok"] as? Double, 1)
        // Our signed peer record verifies with py-libp2p's envelope code.
        XCTAssertEqual(result["record_ok"] as? Double, 1)
        XCTAssertFalse((result["record_addrs"] as? [String] ?? []).isEmpty)
        let protocols = result["protocols"] as? [String] ?? []
        XCTAssertTrue(protocols.contains(PingService.protocolID), "\(protocols)")
    }

    func testPythonEchoes64MiBThroughSwift() async throws {
        let result = try await pythonDialsSwift(["echo", "--bytes", "\(64 * 1024 * 1024)"], expect: "echo", within: 240)
        XCTAssertEqual(result["ok"] as? Double, 1)
        XCTAssertEqual(result["bytes"] as? Double, Double(64 * 1024 * 1024))
    }

    func testPythonOpensHundredStreamsToSwift() async throws {
        let result = try await pythonDialsSwift(["streams", "--count", "100", "--bytes", "16384"], expect: "streams")
        XCTAssertEqual(result["ok"] as? Double, 1)
        XCTAssertEqual(result["count"] as? Double, 100)
    }
}
