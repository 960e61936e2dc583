import NIOCore
import XCTest
@testable import Yamux

/// Two sessions across a simulated link, in virtual time: each direction delays
/// bytes by `oneWay`; client-to-server data goes at most `linkRate` bytes a
/// second (the rest waits in the client's stream, as behind a full socket); the
/// server's reader consumes at most `readRate` bytes a second.
struct TimedLink {
    var client: YamuxSession
    var server: YamuxSession
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    let oneWay: TimeAmount
    let step: TimeAmount
    var linkRate: Double? = nil
    var readRate: Double? = nil
    /// Pongs are lost both ways (as with a peer that never answers).
    var dropPongs = false
    /// Whether the sessions get the clock at all (without it: the old, clockless growth).
    var timed = true
    var toServer: [(at: NIODeadline, bytes: ByteBuffer)] = []
    var toClient: [(at: NIODeadline, bytes: ByteBuffer)] = []
    var serverEvents: [YamuxEvent] = []
    var clientEvents: [YamuxEvent] = []
    var delivered: [UInt32: Int] = [:]
    var consumed: [UInt32: Int] = [:]
    var pingsSent = 0
    /// Largest window target the server gave each stream.
    var largestTarget: [UInt32: UInt32] = [:]

    init(oneWay: TimeAmount, step: TimeAmount, configuration: YamuxSession.Configuration = .init()) {
        self.oneWay = oneWay
        self.step = step
        client = YamuxSession(isClient: true, configuration: configuration)
        server = YamuxSession(isClient: false, configuration: configuration)
    }

    mutating func advance() throws {
        while let first = toServer.first, first.at <= now {
            toServer.removeFirst()
            var bytes = first.bytes
            let events = try server.receive(&bytes, now: timed ? now : nil)
            for case .data(let id, let data) in events { delivered[id, default: 0] += data.readableBytes }
            serverEvents += events
        }
        while let first = toClient.first, first.at <= now {
            toClient.removeFirst()
            var bytes = first.bytes
            clientEvents += try client.receive(&bytes, now: timed ? now : nil)
        }
        // The reader takes what its rate allows this step.
        var share = readRate.map { Int($0 * Double(step.nanoseconds) / 1e9) } ?? .max
        for id in delivered.keys.sorted() {
            let take = min(delivered[id]! - consumed[id, default: 0], share)
            guard take > 0 else { continue }
            server.consumed(streamID: id, bytes: take, now: timed ? now : nil)
            consumed[id, default: 0] += take
            share -= take
            if let target = server.windowTarget(streamID: id) { largestTarget[id] = max(largestTarget[id] ?? 0, target) }
        }
        if timed {
            if client.nextTickDeadline.map({ now >= $0 }) ?? true { _ = client.tick(now: now) }
            if server.nextTickDeadline.map({ now >= $0 }) ?? true { _ = server.tick(now: now) }
        }
        let budget = linkRate.map { Int($0 * Double(step.nanoseconds) / 1e9) } ?? .max
        var out = ByteBuffer()
        for var piece in client.takeOutput(dataBudget: budget).pieces { out.writeBuffer(&piece) }
        pingsSent += pingRequests(in: out)
        if dropPongs { out = withoutPongs(out) }
        if out.readableBytes > 0 { toServer.append((now + oneWay, out)) }
        var back = server.takeOutput()
        pingsSent += pingRequests(in: back)
        if dropPongs { back = withoutPongs(back) }
        if back.readableBytes > 0 { toClient.append((now + oneWay, back)) }
        now = now + step
    }

    /// Runs until `bytes` of the stream were consumed; returns the time it took.
    mutating func transfer(_ bytes: Int, on id: UInt32, limit: TimeAmount = .seconds(60)) throws -> TimeAmount {
        let start = now
        while consumed[id, default: 0] < bytes {
            guard now - start < limit else {
                XCTFail("transfer did not finish")
                return limit
            }
            try advance()
        }
        return now - start
    }
}

/// Whole frames in `buffer` (output is always whole frames).
private func eachFrame(_ buffer: ByteBuffer, _ body: (UInt8, UInt16, ByteBuffer) -> Void) {
    var rest = buffer
    while rest.readableBytes >= 12 {
        let type = rest.getInteger(at: rest.readerIndex + 1, as: UInt8.self)!
        let flags = rest.getInteger(at: rest.readerIndex + 2, as: UInt16.self)!
        let length = rest.getInteger(at: rest.readerIndex + 8, as: UInt32.self)!
        let size = 12 + (type == 0 ? Int(length) : 0)
        body(type, flags, rest.readSlice(length: size)!)
    }
}

private func pingRequests(in buffer: ByteBuffer) -> Int {
    var count = 0
    eachFrame(buffer) { type, flags, _ in if type == 2 && flags & 1 != 0 { count += 1 } }
    return count
}

private func withoutPongs(_ buffer: ByteBuffer) -> ByteBuffer {
    var kept = ByteBuffer()
    eachFrame(buffer) { type, flags, frame in
        var frame = frame
        if !(type == 2 && flags & 2 != 0) { kept.writeBuffer(&frame) }
    }
    return kept
}

private func megabytesPerSecond(_ bytes: Int, _ time: TimeAmount) -> Double {
    Double(bytes) / (Double(time.nanoseconds) / 1e9) / 1e6
}

final class YamuxWindowTimingTests: XCTestCase {
    func testRoundTripMeasuredFromPingAndPong() throws {
        var client = YamuxSession(isClient: true)
        var server = YamuxSession(isClient: false)
        let start = NIODeadline.uptimeNanoseconds(5_000_000_000)
        XCTAssertNil(client.roundTripTime)
        XCTAssertNil(client.nextTickDeadline)

        /// Answers the client's pings after `rtt` each, while it sends more; returns how many.
        func answer(from time: NIODeadline, rtt: TimeAmount) throws -> Int {
            var pings = 0
            var now = time
            while true {
                var ping = client.takeOutput()
                let count = pingRequests(in: ping)
                guard count > 0 else { return pings }
                XCTAssertEqual(count, 1, "one ping at a time")
                pings += count
                XCTAssertEqual(try server.receive(&ping, now: now).count, 1, "the server sees a ping")
                var pong = server.takeOutput()
                now = now + rtt
                XCTAssertEqual(try client.receive(&pong, now: now), [], "our own pong is not an event")
            }
        }
        XCTAssertEqual(client.tick(now: start), start + .seconds(30))
        XCTAssertEqual(try answer(from: start, rtt: .milliseconds(30)), 3, "three back to back at the start")
        XCTAssertEqual(client.roundTripTime, .milliseconds(30))
        // Not due yet: nothing goes, the deadline stays.
        XCTAssertEqual(client.tick(now: start + .seconds(10)), start + .seconds(30))
        XCTAssertEqual(client.takeOutput().readableBytes, 0)
        // A slower sample (say, behind our own data) does not raise the estimate...
        XCTAssertEqual(client.tick(now: start + .seconds(30)), start + .seconds(60))
        XCTAssertEqual(try answer(from: start + .seconds(30), rtt: .milliseconds(50)), 1)
        XCTAssertEqual(client.roundTripTime, .milliseconds(30))
        // ...until the smaller ones are older than the filter's span.
        XCTAssertEqual(client.tick(now: start + .minutes(6)), start + .minutes(6) + .seconds(30))
        XCTAssertEqual(try answer(from: start + .minutes(6), rtt: .milliseconds(80)), 1)
        XCTAssertEqual(client.roundTripTime, .milliseconds(80))
        // The application's pings still get their pongs.
        let opaque = client.ping()
        var ping = client.takeOutput()
        _ = try server.receive(&ping)
        var pong = server.takeOutput()
        XCTAssertEqual(try client.receive(&pong, now: start + .minutes(7)), [.pong(opaque)])
        XCTAssertEqual(client.roundTripTime, .milliseconds(80))
    }

    func testPingsAreBounded() {
        // A driver that calls far too often, and a peer that never answers.
        var session = YamuxSession(isClient: true)
        let start = NIODeadline.uptimeNanoseconds(1)
        var pings = 0
        for millisecond in 0..<100_000 {
            _ = session.tick(now: start + .milliseconds(Int64(millisecond)))
            pings += pingRequests(in: session.takeOutput())
        }
        XCTAssertEqual(pings, 4, "one at the start, then one per 30 s")
        XCTAssertNil(session.roundTripTime)
    }

    func testFastReaderOnALongLinkGrowsItsWindow() throws {
        // 100 ms round trip, no other limit: the initial window allows 2.6 MB/s.
        var link = TimedLink(oneWay: .milliseconds(50), step: .milliseconds(1))
        let id = try link.client.openStream()
        let total = 64 * 1024 * 1024
        link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
        let time = try link.transfer(total, on: id)
        XCTAssertEqual(link.server.roundTripTime, .milliseconds(100))
        XCTAssertEqual(link.largestTarget[id], YamuxSession.Configuration().maxStreamWindow)
        XCTAssertGreaterThan(megabytesPerSecond(total, time), 20, "the window did not open up")
        XCTAssertLessThanOrEqual(link.pingsSent, 2 * 4, "three each way at the start, maybe one more each")
    }

    func testWindowGrowsToWhatTheLinkNeeds() throws {
        // 10 ms round trip at 100 MB/s: 1 MB in flight fills the link.
        var link = TimedLink(oneWay: .milliseconds(5), step: .microseconds(100))
        link.linkRate = 100e6
        let id = try link.client.openStream()
        let total = 128 * 1024 * 1024
        link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
        let time = try link.transfer(total, on: id)
        XCTAssertGreaterThan(megabytesPerSecond(total, time), 90)
        let target = try XCTUnwrap(link.largestTarget[id])
        XCTAssertGreaterThanOrEqual(target, 2 * 1024 * 1024)
        XCTAssertLessThanOrEqual(target, 4 * 1024 * 1024, "grew past what the round trip needs")
    }

    /// The round-trip rule alone (the solo growth off, as when other streams talk).
    func testWindowStaysSmallOnATinyRoundTrip() throws {
        // 100 µs round trip.
        func run(timed: Bool, linkRate: Double?, readRate: Double?) throws -> (target: UInt32, rate: Double) {
            var configuration = YamuxSession.Configuration()
            configuration.soloGrowthTimeFloor = .zero
            var link = TimedLink(oneWay: .microseconds(50), step: .microseconds(10), configuration: configuration)
            link.linkRate = linkRate
            link.readRate = readRate
            link.timed = timed
            let id = try link.client.openStream()
            let total = 32 * 1024 * 1024
            link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
            let time = try link.transfer(total, on: id)
            return (link.largestTarget[id] ?? 0, megabytesPerSecond(total, time))
        }
        // A reader at 500 MB/s: 50 kB in flight would do.
        let slowReader = try run(timed: true, linkRate: nil, readRate: 500e6)
        XCTAssertEqual(slowReader.target, 256 * 1024)
        XCTAssertGreaterThan(slowReader.rate, 0.95 * 500, "the window limited the stream")
        // A reader that keeps up behind a 1 GB/s link: 100 kB in flight would do.
        // Without the clock, the window grows to its maximum for nothing.
        let timed = try run(timed: true, linkRate: 1e9, readRate: nil)
        let clockless = try run(timed: false, linkRate: 1e9, readRate: nil)
        XCTAssertLessThanOrEqual(timed.target, 512 * 1024)
        XCTAssertEqual(clockless.target, YamuxSession.Configuration().maxStreamWindow)
        XCTAssertGreaterThan(timed.rate, 0.95 * 1000, "the window limited the stream")
        XCTAssertGreaterThan(timed.rate, 0.98 * clockless.rate)
    }

    func testGrowthTimeFloorWidensWindowsOnlyOnFastLinks() throws {
        // 100 µs round trip; windows may hold 1 ms of data whatever the round trip.
        func target(linkRate: Double, total: Int) throws -> UInt32 {
            var configuration = YamuxSession.Configuration()
            configuration.growthTimeFloor = .milliseconds(1)
            var link = TimedLink(oneWay: .microseconds(50), step: .microseconds(10), configuration: configuration)
            link.linkRate = linkRate
            let id = try link.client.openStream()
            link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
            _ = try link.transfer(total, on: id, limit: .seconds(120))
            return try XCTUnwrap(link.largestTarget[id])
        }
        // 1 GB/s: a window of 1 MB empties in 1 ms, so it grows to about that.
        let fast = try target(linkRate: 1e9, total: 64 * 1024 * 1024)
        XCTAssertGreaterThanOrEqual(fast, 1024 * 1024)
        XCTAssertLessThanOrEqual(fast, 2 * 1024 * 1024, "grew past 1 ms of data")
        // 50 Mbit/s: the initial window already takes 42 ms to empty.
        XCTAssertEqual(try target(linkRate: 6.25e6, total: 4 * 1024 * 1024), 256 * 1024)
    }

    /// A stream alone on its session may grow to hold 1 ms of data
    /// (`soloGrowthTimeFloor`): on a fast link with a tiny round trip that is
    /// what keeps the sender busy. Once another stream receives data, that
    /// growth is taken back, so the other stream's frames do not wait behind a
    /// millisecond of bulk data; when it falls quiet, the bulk stream grows again.
    func testSoloGrowthIsTakenBackWhileAnotherStreamTalks() throws {
        var configuration = YamuxSession.Configuration()
        configuration.soloQuietSpan = .milliseconds(20)
        var link = TimedLink(oneWay: .microseconds(50), step: .microseconds(10), configuration: configuration)
        link.linkRate = 1e9
        let bulk = try link.client.openStream()
        link.client.write(streamID: bulk, data: ByteBuffer(repeating: 1, count: 512 * 1024 * 1024))
        _ = try link.transfer(64 * 1024 * 1024, on: bulk, limit: .seconds(120))
        let alone = try XCTUnwrap(link.server.windowTarget(streamID: bulk))
        XCTAssertGreaterThanOrEqual(alone, 1024 * 1024, "a lone stream grows to about 1 ms of data")
        XCTAssertLessThanOrEqual(alone, 2 * 1024 * 1024)
        // Another stream talks: 32 bytes every 100 µs for 10 ms.
        let chat = try link.client.openStream()
        for _ in 0..<100 {
            link.client.write(streamID: chat, data: ByteBuffer(repeating: 2, count: 32))
            for _ in 0..<10 { try link.advance() }
        }
        let shared = try XCTUnwrap(link.server.windowTarget(streamID: bulk))
        XCTAssertLessThanOrEqual(shared, 512 * 1024, "the solo growth was taken back")
        XCTAssertGreaterThanOrEqual(shared, 256 * 1024)
        // Quiet again for longer than `soloQuietSpan`: the bulk stream grows back.
        let done = link.consumed[bulk, default: 0]
        _ = try link.transfer(done + 128 * 1024 * 1024, on: bulk, limit: .seconds(120))
        XCTAssertGreaterThanOrEqual(try XCTUnwrap(link.server.windowTarget(streamID: bulk)), 1024 * 1024)
    }

    func testAPeerThatNeverAnswersPingsBreaksNothing() throws {
        var link = TimedLink(oneWay: .milliseconds(10), step: .microseconds(500))
        link.dropPongs = true
        let id = try link.client.openStream()
        let total = 8 * 1024 * 1024
        link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
        link.client.closeWrite(streamID: id)
        _ = try link.transfer(total, on: id, limit: .seconds(120))
        XCTAssertNil(link.client.roundTripTime, "the pongs never came")
        XCTAssertNil(link.server.roundTripTime)
        XCTAssertEqual(link.largestTarget[id], 256 * 1024, "no round trip, no growth")
        XCTAssertTrue(link.serverEvents.contains(.remoteClosedWrite(id)))
        // Minutes later: still one ping per interval, and the link still works.
        for _ in 0..<(120_000 * 2) { try link.advance() }
        XCTAssertLessThanOrEqual(link.pingsSent, 2 * 5, "a ping each way per 30 s")
        link.server.write(streamID: id, data: ByteBuffer(string: "still here"))
        for _ in 0..<100 { try link.advance() }
        XCTAssertTrue(link.clientEvents.contains { if case .data(id, _) = $0 { return true } else { return false } })
    }
}
