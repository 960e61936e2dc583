import Host
import Identify
import KadDHT
import Multiformats
import NIOPosix
import TestSupport
import Transport
import XCTest

/// A client that becomes a server (as when AutoNAT finds it public) serves and
/// advertises the protocol; back to client, it stops.
final class DHTModeTests: XCTestCase {
    func testSwitchingBetweenClientAndServer() async throws {
        try await withDeadline(60) {
            let group = MultiThreadedEventLoopGroup.singleton
            let (nodeHost, nodeAddress) = try await makeTestHost(group: group)
            let node = KadDHT(host: nodeHost)
            node.start()
            XCTAssertEqual(node.mode, .client)
            XCTAssertFalse(nodeHost.supportedProtocols.contains(KadDHT.protocolID))

            let (askerHost, _) = try await makeTestHost(group: group)
            let asker = KadDHT(host: askerHost)
            asker.start()
            _ = try await askerHost.connect(nodeAddress)
            // Identify's first exchange is done (a later answer would overwrite the push).
            try await waitUntil("the asker identified the node") {
                !(askerHost.peerStore.info(nodeHost.localPeer)?.protocols.isEmpty ?? true)
            }
            // A client answers nobody.
            var request = DHTMessage(type: .findNode)
            request.key = Array(askerHost.localPeer.bytes)
            do {
                _ = try await asker.send(request, to: nodeHost.localPeer)
                XCTFail("a client-mode node answered a DHT request")
            } catch {}

            node.setMode(.server)
            XCTAssertEqual(node.mode, .server)
            XCTAssertTrue(nodeHost.supportedProtocols.contains(KadDHT.protocolID))
            let answer = try await asker.send(request, to: nodeHost.localPeer)
            XCTAssertNotNil(answer, "a server-mode node answers")
            // Identify (pushed on the change) tells the asker the node now serves the DHT.
            try await waitUntil("the asker learns the node serves the DHT") {
                askerHost.peerStore.info(nodeHost.localPeer)?.protocols.contains(KadDHT.protocolID) ?? false
            }

            node.setMode(.client)
            XCTAssertFalse(nodeHost.supportedProtocols.contains(KadDHT.protocolID))
            do {
                _ = try await asker.send(request, to: nodeHost.localPeer)
                XCTFail("a node back in client mode answered")
            } catch {}
            await asker.close()
            await node.close()
            await askerHost.close()
            await nodeHost.close()
        }
    }
}
