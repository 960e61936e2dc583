import Identity
import Multiformats
import XCTest

@testable import WebSocket

/// What a `/ws` address dials: the endpoint, the Host header and the expected peer.
final class AddressTests: XCTestCase {
    private func target(_ text: String) throws -> WebSocketDialTarget {
        let address = try Multiaddr(text)
        return try WebSocketAddress(address).dialTarget(original: address)
    }

    func testHostHeaders() throws {
        XCTAssertEqual(try target("/ip4/127.0.0.1/tcp/4001/ws").hostHeader, "127.0.0.1:4001")
        XCTAssertEqual(try target("/ip6/::1/tcp/4001/ws").hostHeader, "[::1]:4001")
        XCTAssertEqual(try target("/dns4/example.com/tcp/8080/ws").hostHeader, "example.com:8080")
        // The scheme's default port is left out, as browsers do.
        XCTAssertEqual(try target("/dns/example.com/tcp/80/ws").hostHeader, "example.com")
    }

    func testEndpointsAndPeer() throws {
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let named = try target("/dns6/example.com/tcp/443/ws/p2p/\(peer)")
        guard case .host(let name, let port) = named.endpoint else { return XCTFail("\(named.endpoint)") }
        XCTAssertEqual(name, "example.com")
        XCTAssertEqual(port, 443)
        XCTAssertEqual(named.expectedPeer, peer)
        let literal = try target("/ip6/::1/tcp/5/ws")
        guard case .socket(let socket) = literal.endpoint else { return XCTFail("\(literal.endpoint)") }
        XCTAssertEqual(socket.port, 5)
        XCTAssertNil(literal.expectedPeer)
    }

    func testListenAddressNeedsAnIP() throws {
        let any = try Multiaddr("/ip4/0.0.0.0/tcp/0/ws")
        XCTAssertEqual(try WebSocketAddress(any).listenAddress(original: any).port, 0)
        let named = try Multiaddr("/dns4/localhost/tcp/0/ws")
        XCTAssertThrowsError(try WebSocketAddress(named).listenAddress(original: named)) {
            guard case WebSocketError.unsupportedAddress = $0 else { return XCTFail("\($0)") }
        }
    }
}
