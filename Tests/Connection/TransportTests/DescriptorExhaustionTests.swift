import Foundation
import Host
import Multiformats
import NIOCore
import NIOPosix
import Ping
import TestSupport
import Transport
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// Found 3 of issue 14: out of file descriptors, accept() failed with EMFILE
/// in a busy loop; sockets that never finish the handshake were held without
/// bound. Accepting now pauses and resumes, and handshakes in flight are bounded.
final class DescriptorExhaustionTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func cpuSeconds() -> Double {
        var usage = rusage()
        getrusage(Int32(RUSAGE_SELF.rawValue), &usage)
        return Double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
            + Double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6
    }

    func openDescriptorCount() -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0
    }

    func testAcceptPausesWhenOutOfDescriptors() async throws {
        var configuration = TransportConfiguration()
        configuration.upgradeTimeout = .seconds(30)
        let (server, address) = try await makeTestHost(group: group, configuration: configuration)
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not TCP: \(address)") }
        // The clients' sockets exist before the limit drops to what is open: the
        // connections then wait in the backlog while accept fails with EMFILE.
        var clients: [Int32] = (0..<20).map { _ in socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0) }.filter { $0 >= 0 }
        var limits = rlimit()
        getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
        let saved = limits
        limits.rlim_cur = rlim_t(openDescriptorCount())
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limits)
        clients = clients.filter { connectSocket($0, port: Int(port)) }
        // Out of descriptors with connections waiting: measure the CPU the process burns.
        let before = cpuSeconds()
        try await Task.sleep(for: .seconds(2))
        let burnt = cpuSeconds() - before
        for fd in clients { close(fd) }
        var restored = saved
        setrlimit(Int32(RLIMIT_NOFILE.rawValue), &restored)
        print("out of descriptors for 2 s with \(clients.count) clients: \(burnt) s of CPU")
        XCTAssertGreaterThan(clients.count, 5, "the clients did not connect")
        XCTAssertLessThan(burnt, 0.5, "accept spun while out of descriptors")
        // Accepting resumed: an honest peer is served.
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
        await server.close()
    }

    /// One address cannot take every handshake slot: idle sockets from it hold
    /// at most its share, and another address still gets in (70 idle sockets
    /// from one address used to leave others' pings 1 chance in 20).
    func testOneAddressHoldsAtMostItsShareOfHandshakes() async throws {
        var configuration = TransportConfiguration()
        configuration.maxInboundHandshakes = 6
        configuration.maxInboundHandshakesPerAddress = 2
        configuration.limitLoopbackHandshakes = true
        configuration.upgradeTimeout = .seconds(2)
        let (server, address) = try await makeTestHost(group: group, configuration: configuration)
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not TCP: \(address)") }
        let held = (0..<2).map { _ in rawConnect(port: Int(port), from: "127.0.0.1") }
        defer { for fd in held { close(fd) } }
        try await waitUntil("two handshakes in flight", seconds: 5) { server.upgrader.inboundHandshakes.inFlight >= 2 }
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 2)
        // More from the same address are refused at once...
        for _ in 0..<4 {
            let fd = rawConnect(port: Int(port), from: "127.0.0.1")
            XCTAssertTrue(closedByServer(fd, within: 1), "a handshake beyond the address's share was kept")
            close(fd)
        }
        XCTAssertEqual(server.upgrader.inboundHandshakes.refused, 4)
        // ...while another address still gets a slot.
        let other = rawConnect(port: Int(port), from: "127.0.0.2")
        defer { close(other) }
        try await waitUntil("the other address's handshake in flight", seconds: 5) {
            server.upgrader.inboundHandshakes.inFlight >= 3
        }
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 3)
        XCTAssertEqual(server.upgrader.inboundHandshakes.refused, 4)
        await server.close()
    }

    func testHandshakesInFlightAreBounded() async throws {
        var configuration = TransportConfiguration()
        configuration.maxInboundHandshakes = 4
        configuration.upgradeTimeout = .seconds(2)
        let (server, address) = try await makeTestHost(group: group, configuration: configuration)
        guard case .tcp(let port) = address.components[1] else { return XCTFail("not TCP: \(address)") }
        // Sockets that never speak: the first four hold the slots, the rest are closed at once.
        var held: [Int32] = []
        for _ in 0..<4 {
            held.append(rawConnect(port: Int(port)))
        }
        // Wait until the four are in the handshake, then the newer ones are refused.
        try await waitUntil("four handshakes in flight", seconds: 5) { server.upgrader.inboundHandshakes.inFlight >= 4 }
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 4)
        for _ in 0..<6 {
            let fd = rawConnect(port: Int(port))
            XCTAssertTrue(closedByServer(fd, within: 1), "a connection beyond the limit was kept")
            close(fd)
        }
        XCTAssertEqual(server.upgrader.inboundHandshakes.refused, 6)
        // The held ones end at the upgrade deadline; then an honest peer gets a slot.
        for fd in held {
            XCTAssertTrue(closedByServer(fd, within: 5), "a silent connection outlived the upgrade deadline")
            close(fd)
        }
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        XCTAssertEqual(server.upgrader.inboundHandshakes.inFlight, 0)
        await client.close()
        await server.close()
    }
}
