import QUIC
import XCTest

/// Round trips before data flows, in virtual time over a link that delays
/// every datagram by the same one-way time: a client's first stream bytes
/// travel with its handshake's last flight.
final class RoundTripTests: XCTestCase {
    func testTheFirstStreamBytesArriveOneAndAHalfRoundTripsAfterTheDial() throws {
        let oneWay: Duration = .milliseconds(25)
        var client = try QUICConnection(client: ConnectionTests.configuration())
        var server = try QUICConnection(server: ConnectionTests.configuration())
        let start = ContinuousClock.now
        var now = start
        var link: [(arrival: ContinuousClock.Instant, toServer: Bool, datagram: [UInt8])] = []
        var serverGotData: ContinuousClock.Instant?
        var clientGotReply: ContinuousClock.Instant?
        let line = Array("hello lobby".utf8)
        for _ in 0..<10_000 where clientGotReply == nil {
            // Everything both sides do at this instant, until neither has more to say.
            var busy = true
            while busy {
                busy = false
                for event in client.takeEvents() {
                    switch event {
                    case .connected:
                        let stream = try client.openStream()
                        try client.write(line, to: stream)
                    case .streamData:
                        clientGotReply = clientGotReply ?? now
                    default: break
                    }
                }
                for case .streamData(let id, let data, _) in server.takeEvents() {
                    serverGotData = serverGotData ?? now
                    try server.write(data, to: id)
                }
                for datagram in client.send(now: now) { link.append((now + oneWay, true, datagram)); busy = true }
                for datagram in server.send(now: now) { link.append((now + oneWay, false, datagram)); busy = true }
            }
            let next = (link.map(\.arrival) + [client.nextDeadline, server.nextDeadline].compactMap { $0 }).min()
            guard let next else { break }
            now = max(now, next)
            let arrived = link.filter { $0.arrival <= now }
            link.removeAll { $0.arrival <= now }
            for (_, toServer, datagram) in arrived {
                if toServer { server.receive(datagram: datagram, now: now) } else { client.receive(datagram: datagram, now: now) }
            }
            if let deadline = client.nextDeadline, deadline <= now { client.handleTimeout(now: now) }
            if let deadline = server.nextDeadline, deadline <= now { server.handleTimeout(now: now) }
        }
        let roundTrip = oneWay * 2
        // Initial out, the server's Initial+Handshake back (1 RTT), then Finished and the stream's first bytes together.
        XCTAssertEqual(try XCTUnwrap(serverGotData) - start, roundTrip * 3 / 2, "first bytes at the server")
        XCTAssertEqual(try XCTUnwrap(clientGotReply) - start, roundTrip * 2, "the answer back at the client")
    }
}
