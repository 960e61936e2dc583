import Foundation
import Host
import Identity
import KadDHT
import Multiformats
import NIOPosix
import TestSupport
import XCTest

/// `/ipfs/kad/1.0.0` against py-libp2p 0.8.1's `libp2p.kad_dht`
/// (Tests/Interop/py/dht_peer.py), both ways. py's value store validates by
/// namespace (`pk` and `ipns` by default); dht_peer.py registers our `p2pchat`
/// namespace with the same rule as ours, so the values here live under `/p2pchat/`.
final class DHTInteropTests: XCTestCase {
    private static func startPython(_ mode: String) async throws -> (PythonPeer, PeerID, Multiaddr) {
        let python = try PythonPeer(script: "dht_peer.py", [mode, "--timeout", "120"])
        let listening = try await python.next("listening")
        let peer = try PeerID(listening["peer"] as! String)
        let address = try Multiaddr(listening["addr"] as! String)
        return (python, peer, address)
    }

    private static func command(_ python: PythonPeer, _ fields: [String: String]) {
        let data = try! JSONSerialization.data(withJSONObject: fields, options: [.sortedKeys])
        python.send(String(decoding: data, as: UTF8.self))
    }

    private static func makeNode(_ mode: KadDHTConfiguration.Mode) async throws -> (Libp2pHost, KadDHT, Multiaddr) {
        let (host, address) = try await makeTestHost(group: MultiThreadedEventLoopGroup.singleton)
        var configuration = KadDHTConfiguration(mode: mode)
        configuration.requestTimeout = .seconds(10)
        let dht = KadDHT(host: host, configuration: configuration)
        dht.start()
        return (host, dht, address)
    }

    /// A provider key as go and py use them: a sha2-256 multihash.
    private static func contentKey(_ text: String) -> [UInt8] {
        ContentKey.sha256(Array(text.utf8))
    }

    /// Our client asks py's server: FIND_NODE, GET_PROVIDERS, GET_VALUE, PUT_VALUE.
    func testOurClientQueriesPythonServer() async throws {
        let (python, pythonPeer, pythonAddress) = try await Self.startPython("server")
        defer { python.stop() }
        try await withDeadline(90) {
            // Another Swift server that py learns of (it asks py, so py's table takes it).
            let (otherHost, other, _) = try await Self.makeNode(.server)
            try await other.bootstrap(peers: [pythonAddress])
            let key = Self.contentKey("dht interop one")
            Self.command(python, ["op": "provide", "key": hex(key)])
            _ = try await python.next("provided")
            Self.command(python, ["op": "put", "key": "/p2pchat/from-python", "value": "hello from py"])
            _ = try await python.next("put")

            let (clientHost, client, _) = try await Self.makeNode(.client)
            try await client.bootstrap(peers: [pythonAddress])
            XCTAssertTrue(client.routingTablePeers.contains(pythonPeer))
            let found = await client.findPeer(otherHost.localPeer)
            XCTAssertEqual(found?.isEmpty, false, "py's FIND_NODE answer names the other Swift server")
            let providers = await client.findProviders(key)
            XCTAssertTrue(providers.contains { $0.id == pythonPeer }, "py's GET_PROVIDERS lists py: \(providers)")
            let value = await client.getValue(key: Array("/p2pchat/from-python".utf8))
            XCTAssertEqual(value.map { String(decoding: $0, as: UTF8.self) }, "hello from py")
            let stored = try await client.putValue(key: Array("/p2pchat/from-swift".utf8), value: Array("hello from swift".utf8))
            XCTAssertGreaterThan(stored, 0)
            Self.command(python, ["op": "local", "key": "/p2pchat/from-swift"])
            let local = try await python.next("local")
            XCTAssertEqual(local["value"] as? String, "hello from swift", "py's server stored our PUT_VALUE")

            for (host, dht) in [(otherHost, other), (clientHost, client)] {
                await dht.close()
                await host.close()
            }
        }
    }

    /// py's client asks our server: FIND_NODE, GET_PROVIDERS, GET_VALUE, PUT_VALUE.
    func testPythonClientQueriesOurServer() async throws {
        let (python, _, _) = try await Self.startPython("client")
        defer { python.stop() }
        try await withDeadline(90) {
            let (serverHost, server, serverAddress) = try await Self.makeNode(.server)
            let (otherHost, other, _) = try await Self.makeNode(.server)
            try await other.bootstrap(peers: [serverAddress])
            // The server takes the other into its table once identify shows it serves kad,
            // which can come after the other's bootstrap returns.
            try await waitUntil("our server knows the other server") {
                server.routingTablePeers.contains(otherHost.localPeer)
            }
            let key = Self.contentKey("dht interop two")
            await server.provide(key)
            try await server.putValue(key: Array("/p2pchat/from-swift".utf8), value: Array("served by swift".utf8))

            Self.command(python, ["op": "connect", "addr": "\(serverAddress)"])
            _ = try await python.next("connected")
            Self.command(python, ["op": "closest", "key": hex(otherHost.localPeer.bytes)])
            let closest = try await python.next("closest")
            XCTAssertTrue(
                (closest["peers"] as? [String] ?? []).contains(otherHost.localPeer.description),
                "our FIND_NODE answer names the other server: \(closest)")
            Self.command(python, ["op": "providers", "key": hex(key)])
            let providers = try await python.next("providers")
            // py lists a provider once per peer that answered with it (both servers hold our record).
            XCTAssertEqual(Set(providers["peers"] as? [String] ?? []), [serverHost.localPeer.description])
            Self.command(python, ["op": "get", "key": "/p2pchat/from-swift"])
            let got = try await python.next("got")
            XCTAssertEqual(got["value"] as? String, "served by swift")
            Self.command(python, ["op": "put", "key": "/p2pchat/from-python", "value": "stored by py"])
            _ = try await python.next("put")
            XCTAssertEqual(
                server.storedValue(key: Array("/p2pchat/from-python".utf8)).map { String(decoding: $0, as: UTF8.self) },
                "stored by py", "our server took py's PUT_VALUE")

            for (host, dht) in [(otherHost, other), (serverHost, server)] {
                await dht.close()
                await host.close()
            }
        }
    }
}
