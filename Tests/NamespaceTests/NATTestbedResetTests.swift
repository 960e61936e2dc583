import ChildProcess
import Foundation
import XCTest

/// Behind routers that answer unsolicited SYNs with a reset.
final class NATTestbedResetTests: NATTestbedCase {
    override func setUpWithError() throws {
        testbed = try NATTestbed(firewall: .reset)
    }


    /// Two homes behind routers that answer unsolicited SYNs with a reset: a
    /// SYN that reaches the other router before that router's own SYN left is
    /// refused, and its reset closes the dialling socket, so the hole punch
    /// fails. The homes found each other through the relay (AutoRelay, DHT)
    /// and go on chatting over the relayed connection.
    func testHomesBehindResettingRoutersChatThroughTheRelay() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        try await sendUntilReceived("through the relay, router 1 to 2", from: homes[0], to: homes[1])
        try await sendUntilReceived("through the relay, router 2 to 1", from: homes[1], to: homes[0])
        for home in homes { home.closeInput() }
    }

    /// The same homes as a user runs them, on TCP and QUIC: the TCP punch is
    /// refused, the UDP one is not (the routers only drop unsolicited
    /// datagrams), so they hole punch over QUIC.
    func testHomesBehindResettingRoutersHolePunchOverQUIC() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, quic: true) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        XCTAssertTrue(upgraded["addr"]?.hasSuffix("/udp/4001/quic-v1") ?? false, "\(upgraded)")
        try await sendUntilReceived("direct over udp, router 1 to 2", from: homes[0], to: homes[1])
        try await sendUntilReceived("direct over udp, router 2 to 1", from: homes[1], to: homes[0])
        for home in homes { home.closeInput() }
    }

    /// A public chat reaches a home through its circuit address (the home
    /// reserved on the relay by itself); the home, which accepted the relayed
    /// connection, dials the public chat directly (the unilateral upgrade), so
    /// no hole punch is needed and the router's resets do not matter.
    func testHomeDialsThePublicChatThatReachedItThroughTheRelay() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let home = try startBootstrapHome(2, relay: relayAddress)
        let homeID = try await peerID(home)
        let circuit = try await event(home, "listening", within: 40) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(homeID)")
        let publicChat = try testbed.start(
            "relay",
            ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/tcp/4002", "--connect", try XCTUnwrap(circuit["addr"])])
        let publicID = try await peerID(publicChat)
        try await event(home, "connected", within: 30) { $0["peer"] == publicID && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        let upgraded = try await event(home, "connection_upgraded", within: 30) { $0["peer"] == publicID }
        XCTAssertEqual(upgraded["method"], "direct dial")
        XCTAssertEqual(upgraded["addr"], "/ip4/\(NATTestbed.relayIP)/tcp/4002")
        try await sendUntilReceived("from the public chat", from: publicChat, to: home)
        try await sendUntilReceived("from the home", from: home, to: publicChat)
        home.closeInput()
        publicChat.closeInput()
    }
}
