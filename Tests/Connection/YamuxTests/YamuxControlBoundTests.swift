import NIOCore
import XCTest
import Yamux

/// Found 2 of issue 14: replies a peer asks for while not reading them must
/// not queue without bound.
final class YamuxControlBoundTests: XCTestCase {
    /// `count` streams opened and reset at once (SYN then RST each), from stream `id` on.
    func openAndReset(_ count: Int, from id: inout UInt32) -> ByteBuffer {
        var burst = ByteBuffer()
        for _ in 0..<count {
            var syn = header(type: 1, flags: 1, stream: id, length: 0)
            var rst = header(type: 1, flags: 8, stream: id, length: 0)
            burst.writeBuffer(&syn)
            burst.writeBuffer(&rst)
            id += 2
        }
        return burst
    }

    /// A ping flood leaves one pong to send: only the latest ping is answered.
    func testPingFloodQueuesOnePong() throws {
        var session = YamuxSession(isClient: false)
        for round in 0..<100 {
            var burst = ByteBuffer()
            for i in 0..<1000 {
                var ping = header(type: 2, flags: 1, stream: 0, length: UInt32(round * 1000 + i))
                burst.writeBuffer(&ping)
            }
            _ = try session.receive(&burst)
        }
        XCTAssertEqual(session.pendingControlBytes, 12)
        let sent = frames(in: session.takeOutputPieces())
        XCTAssertEqual(sent.count, 1)
        XCTAssertEqual(sent.first?.type, 2)
        XCTAssertEqual(sent.first?.flags, 2)  // ACK
        XCTAssertEqual(sent.first?.length, 99_999)  // the latest ping's opaque
        XCTAssertEqual(session.pendingControlBytes, 0)
    }

    /// Opening and resetting streams without reading the ACKs fails the
    /// session once the unsent replies pass the bound, with a go-away queued.
    func testOpenResetFloodFailsTheSessionAtTheBound() throws {
        var configuration = YamuxSession.Configuration()
        configuration.maxPendingControlBytes = 12 * 1000
        var session = YamuxSession(isClient: false, configuration: configuration)
        var failure: YamuxError?
        var id: UInt32 = 1
        flood: for _ in 0..<1000 {
            var burst = openAndReset(100, from: &id)
            do {
                _ = try session.receive(&burst)
            } catch {
                failure = error
                break flood
            }
        }
        guard case .controlBacklog(let bytes, let limit)? = failure else {
            return XCTFail("no backlog failure after \(id / 2) streams opened and reset: \(String(describing: failure))")
        }
        XCTAssertEqual(limit, 12 * 1000)
        XCTAssertGreaterThan(bytes, limit)
        XCTAssertLessThanOrEqual(bytes, limit + 100 * 12)
        // The last frame queued is the go-away (protocol error).
        let sent = frames(in: session.takeOutputPieces())
        XCTAssertEqual(sent.last?.type, 3)
        XCTAssertEqual(sent.last?.length, 1)
    }

    /// A peer that reads its replies can open and reset streams at will.
    func testOpenResetWithRepliesTakenIsFine() throws {
        var configuration = YamuxSession.Configuration()
        configuration.maxPendingControlBytes = 12 * 1000
        var session = YamuxSession(isClient: false, configuration: configuration)
        var id: UInt32 = 1
        for _ in 0..<100 {
            var burst = openAndReset(100, from: &id)
            _ = try session.receive(&burst)
            _ = session.takeOutputPieces()
        }
        XCTAssertEqual(session.streamCount, 0)
    }

    /// Found 6 of issue 14: after the remote's go-away, its new streams are refused (RST).
    func testStreamsAfterTheRemoteGoAwayAreRefused() throws {
        var session = YamuxSession(isClient: false)
        var before = header(type: 1, flags: 1, stream: 1, length: 0)
        XCTAssertEqual(try session.receive(&before), [.inboundStream(1)])
        var goAway = header(type: 3, flags: 0, stream: 0, length: 0)
        XCTAssertEqual(try session.receive(&goAway), [.goAway(0)])
        _ = session.takeOutputPieces()
        var after = header(type: 1, flags: 1, stream: 3, length: 0)
        XCTAssertEqual(try session.receive(&after), [])
        let sent = frames(in: session.takeOutputPieces())
        XCTAssertEqual(sent.count, 1)
        XCTAssertEqual(sent.first?.stream, 3)
        XCTAssertEqual(sent.first?.flags, 8)  // RST
        XCTAssertEqual(session.streamCount, 1)
    }
}
