import ChildProcess
import Foundation
import XCTest

/// DCUtR over UDP: the homes listen on QUIC, the relay on TCP and QUIC.
final class NATTestbedQUICTests: NATTestbedCase {
    /// Homes that listen on QUIC only meet through the relay; home2, which
    /// accepted the relayed connection, sends its punch datagrams while home1
    /// dials as the QUIC client, through both routers that drop unsolicited
    /// packets: a direct QUIC connection between the routers' public
    /// addresses, at the listening ports, and the chat goes on over it.
    func testHomesOnQUICHolePunchOverUDP() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let quic = ["lobby", "--json", "--ephemeral", "--no-mdns", "--listen", "/ip4/0.0.0.0/udp/4001/quic-v1", "--relay", relayAddress]
        let home2 = try testbed.start("home2", quic)
        let id2 = try await peerID(home2)
        // AutoNAT over QUIC: the relay dials back from a socket of its own, which the router drops.
        try await event(home2, "reachability", within: 30) { $0["reachability"] == "private" }
        let circuit = try await event(home2, "listening", within: 30) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(id2)")
        let home1 = try testbed.start("home1", quic + ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        let id1 = try await peerID(home1)
        let connected = try await event(home1, "connected", within: 30) { $0["peer"] == id2 }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "\(connected)")
        let upgraded = try await event(home2, "connection_upgraded", within: 40) { $0["peer"] == id1 }
        XCTAssertEqual(upgraded["method"], "hole punch")
        XCTAssertEqual(upgraded["addr"], "/ip4/203.0.113.1/udp/4001/quic-v1")
        XCTAssertEqual(upgraded["attempt"], "1")
        try await event(home1, "connection_upgraded", within: 10) { $0["addr"] == "/ip4/203.0.113.2/udp/4001/quic-v1" }
        try await exchangeLines("over udp", rounds: 3, home1, home2)
        home2.send("/status")
        let status = try await event(home2, "status", within: 20)
        XCTAssertTrue(status["connections"]?.contains("\(id1) /ip4/203.0.113.1/udp/4001/quic-v1 direct") ?? false, "\(status)")
        home1.closeInput()
        home2.closeInput()
    }

    // With older go-libp2p's roles over QUIC, one end must dial as the QUIC
    // client while the other sends punch datagrams.

    /// go before v0.41 as B dials as the QUIC client: our A dials too (two
    /// clients; each endpoint also accepts the other's Initial), at once.
    func testOurQUICAnswerMeetsGoBefore041AtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.41", listen: "/udp/4001/quic-v1")
        XCTAssertEqual(outcome["attempt"], "1")
    }

    /// go before v0.41 as A only sends punch datagrams: so does our B at
    /// first, and on its last attempt it dials as the client.
    func testOurQUICHolePunchMeetsAnOldGoAnswerAtTheLastAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "go-before-0.41", home2Roles: "adaptive", listen: "/udp/4001/quic-v1")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// Homes as a user runs them (TCP and QUIC, the default listen list, at
    /// fixed ports so the routers map them predictably) that know only the
    /// relay: they find each other, chat relayed, and whichever accepted the
    /// relayed connection hole punches it, over TCP or UDP, whichever joins first.
    func testDefaultHomesHolePunchOverTCPOrQUIC() async throws {
        let (relay, relayAddress) = try await startQUICRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, quic: true) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        try await sendUntilReceived("found through the relay", from: homes[0], to: homes[1])
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        let address = try XCTUnwrap(upgraded["addr"])
        XCTAssertTrue(
            ["/ip4/203.0.113.1/", "/ip4/203.0.113.2/"].contains { address.hasPrefix($0) }
                && (address.hasSuffix("/tcp/4001") || address.hasSuffix("/udp/4001/quic-v1")), address)
        try await exchangeLines("direct", rounds: 3, homes[0], homes[1])
        for home in homes { home.closeInput() }
    }
}
