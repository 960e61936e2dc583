import Host
import Identify
import Identity
import Multiformats
import NIOPosix
import Noise
import Ping
import XCTest

/// secp256k1 identities with py-libp2p 0.8.1 (coincurve, i.e. libsecp256k1):
/// its signatures verify with our pure-Swift secp256k1 and ours with its.
final class Secp256k1InteropTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var peers: [PythonPeer] = []

    override func tearDown() async throws {
        for peer in peers { peer.stop() }
    }

    func testSwiftDialsSecp256k1PythonOverNoise() async throws {
        let python = try PythonPeer(["--key", "secp256k1", "listen", "--port", "0", "--timeout", "120"])
        peers.append(python)
        let listening = try await python.next("listening")
        let address = try Multiaddr(XCTUnwrap(listening["addr"] as? String))
        let pythonPeer = try XCTUnwrap(address.peerID)
        XCTAssertTrue(pythonPeer.description.hasPrefix("16Uiu2"), "not a secp256k1 peer id: \(pythonPeer)")

        // Our side signs with secp256k1 too, so python verifies our signatures.
        let host = try Libp2pHost(key: .generateSecp256k1(), group: group, security: [NoiseSecurity()])
        IdentifyService(host: host, agentVersion: "p2pchat-test/0").start()
        PingService(host: host).start()
        // The Noise handshake checks python's secp256k1 signature over its static key.
        let connection = try await host.connect(address)
        XCTAssertEqual(connection.remotePeer, pythonPeer)
        let rtts = try await PingService.ping(connection, count: 3)
        XCTAssertEqual(rtts.count, 3)

        let info = try await IdentifyService(host: host, agentVersion: "x").identify(connection)
        XCTAssertEqual(info.publicKey?.type, .secp256k1)
        // Its signed peer record is an envelope signed with the secp256k1 key.
        let record = try XCTUnwrap(info.peerRecord, "no valid signed peer record from python")
        XCTAssertEqual(record.peerID, pythonPeer)
        await host.close()
    }
}
