import ChildProcess
import Foundation
import XCTest

/// DCUtR with py-libp2p 0.8.1 across real NAT, in both roles.
final class NATTestbedPythonTests: NATTestbedCase {

    /// py-libp2p dials our home through the relay ("A"); we accept and hole punch ("B").
    func testPythonDialsThroughTheRelayAndWeHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let home = try startBootstrapHome(2, relay: relayAddress)
        let circuit = try await event(home, "listening", within: 40) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        let python = try testbed.startPython(
            "home1", ["--timeout", "90", "--ip", "0.0.0.0", "--port", "4001", "dcutr-dial", try XCTUnwrap(circuit["addr"])])
        let connected = try await event(python, "connected", within: 30)
        let upgraded = try await event(home, "connection_upgraded", within: 40)
        let homeID = try await peerID(home)
        XCTAssertEqual(connected["peer"], homeID)
        XCTAssertEqual(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.1/tcp/"), true, "\(upgraded)")
        try await event(python, "direct", within: 30)
        python.closeInput()
        home.closeInput()
    }

    /// Our home dials py-libp2p's circuit address ("A"); py accepts and starts DCUtR ("B").
    func testWeDialPythonThroughTheRelayAndItHolePunches() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let python = try testbed.startPython(
            "home2", ["--timeout", "90", "--ip", "0.0.0.0", "--port", "4001", "dcutr-listen", relayAddress])
        let reserved = try await event(python, "reserved", within: 30)
        XCTAssertEqual(reserved["ok"], "1")
        let home = try testbed.start(
            "home1",
            ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/4001", "--connect", try XCTUnwrap(reserved["addr"])])
        let homeID = try await peerID(home)
        let direct = try await event(python, "direct", within: 60)
        XCTAssertEqual(direct["peer"], homeID)
        let upgraded = try await event(home, "connection_upgraded", within: 20)
        XCTAssertEqual(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.2/tcp/"), true, "\(upgraded)")
        python.closeInput()
        home.closeInput()
    }
}
