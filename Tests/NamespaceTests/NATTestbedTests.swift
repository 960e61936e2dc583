import ChildProcess
import Foundation
import XCTest

final class NATTestbedTests: NATTestbedCase {
    /// The homes find out they are private and the relay public; they meet
    /// through the relay, chat, then DCUtR gives them a direct connection
    /// between the routers' public addresses, and the chat goes on.
    func testHomesMeetThroughTheRelayThenHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        // home2 waits before hole punching, so that lines first cross the relay.
        let home2 = try startHome(2, relay: relayAddress, extra: ["--hole-punch-delay", "10"])
        let id2 = try await peerID(home2)
        try await event(home2, "reachability", within: 30) { $0["reachability"] == "private" }
        let circuit = try await event(home2, "listening", within: 20) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        XCTAssertEqual(circuit["addr"], "\(relayAddress)/p2p-circuit/p2p/\(id2)")

        // home1 knows the relay and home2's peer id: its circuit address.
        let home1 = try startHome(1, relay: relayAddress, extra: ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        let id1 = try await peerID(home1)
        try await event(home1, "reachability", within: 30) { $0["reachability"] == "private" }
        try await event(relay, "reachability", within: 30) { $0["reachability"] == "public" }

        let connected = try await event(home1, "connected", within: 20) { $0["peer"] == id2 }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "home1 first reaches home2 through the relay: \(connected)")
        // A line each way through the relay.
        try await sendUntilReceived("through the relay from home1", from: home1, to: home2)
        try await sendUntilReceived("through the relay from home2", from: home2, to: home1)
        XCTAssertFalse(home2.output.contains { $0.contains("connection_upgraded") }, "upgraded before the relayed lines")

        // home2 hole punches the relayed connection home1 opened: the direct
        // connection's remote is home1's router (public address, listening port).
        let upgraded = try await event(home2, "connection_upgraded", within: 30) { $0["peer"] == id1 }
        XCTAssertEqual(upgraded["addr"], "/ip4/203.0.113.1/tcp/4001")
        try await event(home1, "connection_upgraded", within: 10) { $0["addr"] == "/ip4/203.0.113.2/tcp/4001" }

        // Lines flow both ways, none lost, over the direct connection.
        try await exchangeLines("", rounds: 5, home1, home2)
        // /status: private, seen at its router's public address, its reservation
        // on the relay, and the direct connection to home1.
        home2.send("/status")
        let status = try await event(home2, "status", within: 20) { _ in true }
        XCTAssertEqual(status["reachability"], "private")
        XCTAssertTrue(status["observed"]?.contains("/ip4/203.0.113.2/") ?? false, "\(status)")
        let relayID = String(relayAddress.split(separator: "/").last ?? "")
        XCTAssertTrue(status["reservations"]?.contains(relayID) ?? false, "\(status)")
        XCTAssertTrue(status["connections"]?.contains("\(id1) /ip4/203.0.113.1/tcp/4001 direct") ?? false, "\(status)")
        XCTAssertTrue(status["advertised"]?.contains("/p2p-circuit") ?? false, "\(status)")
        home1.closeInput()
        home2.closeInput()
    }

    /// The relay keeps its limits: one reservation only (the second home is
    /// refused), and a circuit is cut at its byte limit.
    func testRelayEnforcesItsLimits() async throws {
        // Kept: a ChatProcess stops its process when released.
        let (relay, relayAddress) = try await startRelay(["--max-reservations", "1", "--circuit-bytes", "2048"])
        defer { withExtendedLifetime(relay) {} }
        let home2 = try startHome(2, relay: relayAddress, extra: ["--hole-punch-delay", "20"])
        let id2 = try await peerID(home2)
        try await event(home2, "listening", within: 30) { $0["addr"]?.contains("/p2p-circuit") ?? false }
        let home1 = try startHome(1, relay: relayAddress, extra: ["--connect", "\(relayAddress)/p2p-circuit/p2p/\(id2)"])
        try await event(home1, "error", within: 30) { $0["message"]?.contains("RESERVATION_REFUSED") ?? false }
        // The circuit to home2 carries at most 2 KiB each way: a 4 KB line cuts it.
        try await event(home1, "connected", within: 30) { $0["peer"] == id2 && ($0["addr"]?.contains("/p2p-circuit") ?? false) }
        home1.send(String(repeating: "x", count: 4000))
        try await event(home1, "disconnected", within: 15) { $0["peer"] == id2 }
        XCTAssertFalse(home2.events.contains { $0["event"] == "message" }, "the line crossed a circuit limited to 2 KiB")
    }

    /// Two homes that know only the relay, as `--bootstrap`, and nothing else:
    /// AutoNAT says private, AutoRelay reserves on the relay (found as a
    /// bootstrap peer that offers hop), the relay's DHT tells each where the
    /// other is (its circuit address), they chat relayed, then hole punch.
    func testHomesThatKnowOnlyTheRelayMeetChatAndHolePunch() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress) }
        let ids = try await [peerID(homes[0]), peerID(homes[1])]
        for home in homes {
            try await event(home, "reachability", within: 30) { $0["reachability"] == "private" }
            try await event(home, "listening", within: 30) { $0["addr"]?.contains("\(relayAddress)/p2p-circuit") ?? false }
        }
        // Each finds the other through the DHT; the first connection is relayed.
        let connected = try await event(homes[0], "connected", within: 60) { $0["peer"] == ids[1] }
        XCTAssertTrue(connected["addr"]?.contains("/p2p-circuit") ?? false, "\(connected)")
        try await sendUntilReceived("found through the relay's DHT", from: homes[0], to: homes[1])
        // Whichever accepted the relayed connection hole punches it.
        let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
        XCTAssertEqual(upgraded["method"], "hole punch", "\(upgraded)")
        XCTAssertTrue(upgraded["addr"]?.hasPrefix("/ip4/203.0.113.") ?? false, "\(upgraded)")
        try await exchangeLines("direct", rounds: 3, homes[0], homes[1])
        for home in homes { home.closeInput() }
    }

    /// Homes that left behind provider records on the relay's DHT (their
    /// circuit addresses now lead nowhere): the next pair still meets, relayed
    /// then direct, without waiting on the dead ones.
    func testHomesMeetDespiteRecordsLeftByHomesThatAreGone() async throws {
        let (relay, relayAddress) = try await startRelay()
        defer { withExtendedLifetime(relay) {} }
        for (pair, port) in [4201, 4202].enumerated() {
            let homes = try (1...2).map { try startBootstrapHome($0, relay: relayAddress, port: port) }
            let upgraded = try await firstEvent(homes, "connection_upgraded", within: 40)
            XCTAssertEqual(upgraded["method"], "hole punch", "pair \(pair + 1): \(upgraded)")
            for home in homes {
                home.closeInput()
                _ = try await home.process.waitForExit(within: 10)
            }
        }
    }

}
