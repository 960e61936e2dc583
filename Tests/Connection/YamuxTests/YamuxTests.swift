import NIOCore
import TestKit
import XCTest
@testable import Yamux

/// Two sessions wired back to back.
struct Link {
    var client = YamuxSession(isClient: true)
    var server = YamuxSession(isClient: false)
    var clientEvents: [YamuxEvent] = []
    var serverEvents: [YamuxEvent] = []

    init(configuration: YamuxSession.Configuration = .init()) {
        client = YamuxSession(isClient: true, configuration: configuration)
        server = YamuxSession(isClient: false, configuration: configuration)
    }

    /// Moves bytes both ways until quiet, `step` bytes at a time.
    mutating func pump(step: Int = .max) throws {
        for _ in 0..<1_000_000 {
            var toServer = client.takeOutput()
            var toClient = server.takeOutput()
            if toServer.readableBytes == 0 && toClient.readableBytes == 0 { return }
            while toServer.readableBytes > 0 {
                var chunk = toServer.readSlice(length: min(step, toServer.readableBytes))!
                serverEvents += try server.receive(&chunk)
            }
            while toClient.readableBytes > 0 {
                var chunk = toClient.readSlice(length: min(step, toClient.readableBytes))!
                clientEvents += try client.receive(&chunk)
            }
        }
        XCTFail("link did not settle")
    }

    static func dataBytes(_ events: [YamuxEvent], stream: UInt32) -> Int {
        events.reduce(0) { total, event in
            if case .data(let id, let data) = event, id == stream { return total + data.readableBytes }
            return total
        }
    }
}

func header(type: UInt8, flags: UInt16, stream: UInt32, length: UInt32, version: UInt8 = 0) -> ByteBuffer {
    var buffer = ByteBuffer()
    buffer.writeInteger(version)
    buffer.writeInteger(type)
    buffer.writeInteger(flags)
    buffer.writeInteger(stream)
    buffer.writeInteger(length)
    return buffer
}

/// The frames in a run of output pieces: (type, flags, stream, length).
func frames(in pieces: [ByteBuffer]) -> [(type: UInt8, flags: UInt16, stream: UInt32, length: UInt32)] {
    var all = ByteBuffer()
    for var piece in pieces { all.writeBuffer(&piece) }
    var result: [(type: UInt8, flags: UInt16, stream: UInt32, length: UInt32)] = []
    while all.readableBytes >= 12 {
        all.moveReaderIndex(forwardBy: 1)
        let type = all.readInteger(as: UInt8.self)!
        let flags = all.readInteger(as: UInt16.self)!
        let stream = all.readInteger(as: UInt32.self)!
        let length = all.readInteger(as: UInt32.self)!
        if type == 0 { all.moveReaderIndex(forwardBy: Int(length)) }
        result.append((type, flags, stream, length))
    }
    XCTAssertEqual(all.readableBytes, 0, "output ends inside a frame")
    return result
}

final class YamuxTests: XCTestCase {
    /// Data is framed only within the budget the adapter gives (the socket's
    /// room), a frame per stream per turn; control frames never wait.
    func testDataBudgetSharesTheLinkByTurns() throws {
        var link = Link()
        let a = try link.client.openStream()
        let b = try link.client.openStream()
        try link.pump()
        link.client.write(streamID: a, data: ByteBuffer(repeating: 1, count: 512 * 1024))
        link.client.write(streamID: b, data: ByteBuffer(repeating: 2, count: 64 * 1024))
        _ = link.client.ping()

        // A socket that takes nothing: the ping goes, the data stays queued.
        let blocked = link.client.takeOutput(dataBudget: 0)
        XCTAssertEqual(frames(in: blocked.pieces).map(\.type), [2])
        XCTAssertEqual(blocked.streamsSent, [])
        XCTAssertEqual(link.client.queuedBytes(streamID: a), 512 * 1024)
        XCTAssertTrue(link.client.hasDataToSend)

        // Room for 200 KiB: a frame of A, then B's turn, then the rest of the budget to A.
        let some = link.client.takeOutput(dataBudget: 200 * 1024)
        let sent = frames(in: some.pieces)
        XCTAssertEqual(sent.map(\.stream), [a, b, a])
        XCTAssertEqual(sent.map(\.length), [128 * 1024, 64 * 1024, 8 * 1024])
        XCTAssertEqual(Set(some.streamsSent), [a, b])
        XCTAssertEqual(link.client.queuedBytes(streamID: a), (512 - 136) * 1024)
        XCTAssertEqual(link.client.queuedBytes(streamID: b), 0)

        // The rest goes within A's window (256 KiB at first), then waits for the remote.
        let rest = link.client.takeOutput(dataBudget: .max)
        XCTAssertEqual(frames(in: rest.pieces).reduce(0) { $0 + Int($1.length) }, (256 - 136) * 1024)
        XCTAssertFalse(link.client.hasDataToSend)
        XCTAssertEqual(link.client.queuedBytes(streamID: a), 256 * 1024)
    }

    /// A budget smaller than a frame, call after call (a slow socket): streams
    /// still take turns. The stream whose turn the budget ran out before keeps
    /// its place, instead of going behind the one that just framed (which then
    /// framed first at every call, and the other never).
    func testStreamsTakeTurnsWhenTheBudgetRunsOutEveryCall() throws {
        var link = Link()
        let a = try link.client.openStream()
        let b = try link.client.openStream()
        try link.pump()
        link.client.write(streamID: a, data: ByteBuffer(repeating: 1, count: 10_000))
        link.client.write(streamID: b, data: ByteBuffer(repeating: 2, count: 10_000))
        var sent: [UInt32: Int] = [:]
        for _ in 0..<20 {
            for frame in frames(in: link.client.takeOutput(dataBudget: 100).pieces) where frame.type == 0 {
                sent[frame.stream, default: 0] += Int(frame.length)
            }
        }
        XCTAssertEqual(sent[a], 1000)
        XCTAssertEqual(sent[b], 1000)
    }

    /// A FIN follows the stream's data: it waits while the data does, and goes
    /// at once when nothing is queued.
    func testFinFollowsQueuedDataWhateverTheBudget() throws {
        var link = Link()
        let a = try link.client.openStream()
        let b = try link.client.openStream()
        try link.pump()
        link.client.write(streamID: a, data: ByteBuffer(repeating: 1, count: 1000))
        link.client.closeWrite(streamID: a)
        link.client.closeWrite(streamID: b)
        let blocked = frames(in: link.client.takeOutput(dataBudget: 0).pieces)
        XCTAssertEqual(blocked.count, 1)
        XCTAssertEqual(blocked.first?.stream, b)
        XCTAssertEqual(blocked.first?.flags, 4, "b's FIN alone")
        let later = frames(in: link.client.takeOutput(dataBudget: .max).pieces)
        XCTAssertEqual(later.count, 1)
        XCTAssertEqual(later.first?.stream, a)
        XCTAssertEqual(later.first?.type, 0)
        XCTAssertEqual(later.first?.length, 1000)
        XCTAssertEqual(later.first?.flags, 4, "FIN on a's last data frame")
    }
    func testOpenSendCloseBothWays() throws {
        for step in [1, 5, 12, 13, 1000] {
            var link = Link()
            let id = try link.client.openStream()
            XCTAssertEqual(id, 1)
            link.client.write(streamID: id, data: ByteBuffer(string: "hello"))
            link.client.closeWrite(streamID: id)
            try link.pump(step: step)
            XCTAssertTrue(link.serverEvents.contains(.inboundStream(1)), "step \(step)")
            XCTAssertEqual(Link.dataBytes(link.serverEvents, stream: 1), 5)
            XCTAssertTrue(link.serverEvents.contains(.remoteClosedWrite(1)))
            link.server.write(streamID: id, data: ByteBuffer(string: "world"))
            link.server.closeWrite(streamID: id)
            try link.pump(step: step)
            XCTAssertEqual(Link.dataBytes(link.clientEvents, stream: 1), 5)
            // The client learns of the close from the remote FIN; the server
            // closed last, locally, and simply forgets the stream.
            XCTAssertTrue(link.clientEvents.contains(.closed(1)))
            XCTAssertEqual(link.client.streamCount, 0)
            XCTAssertEqual(link.server.streamCount, 0)
        }
    }

    func testWindowExhaustionAndResumption() throws {
        var link = Link()
        let id = try link.client.openStream()
        link.client.write(streamID: id, data: ByteBuffer(repeating: 7, count: 1024 * 1024))
        try link.pump()
        // Only the initial window arrives until the reader consumes.
        XCTAssertEqual(Link.dataBytes(link.serverEvents, stream: id), 256 * 1024)
        XCTAssertEqual(link.client.queuedBytes(streamID: id), 768 * 1024)
        var delivered = 256 * 1024
        var consumed = 0
        var rounds = 0
        while delivered < 1024 * 1024 {
            rounds += 1
            XCTAssertLessThan(rounds, 100)
            // The reader consumes all it was given so far.
            link.server.consumed(streamID: id, bytes: delivered - consumed)
            consumed = delivered
            try link.pump()
            delivered = Link.dataBytes(link.serverEvents, stream: id)
            // Received-but-unread data never exceeds the largest window.
            XCTAssertLessThanOrEqual(delivered - consumed, Int(YamuxSession.Configuration().maxStreamWindow))
        }
        XCTAssertEqual(delivered, 1024 * 1024)
        XCTAssertTrue(link.clientEvents.contains(.sendWindowOpened(id)))
        XCTAssertEqual(link.client.queuedBytes(streamID: id), 0)
    }

    /// Sends `total` bytes on one stream; each round the reader consumes
    /// `share` of what it holds unread. Returns the largest unread amount seen.
    func largestUnread(
        configuration: YamuxSession.Configuration, total: Int, share: Double, streams: Int = 1
    ) throws -> Int {
        var link = Link(configuration: configuration)
        var ids: [UInt32] = []
        for _ in 0..<streams {
            let id = try link.client.openStream()
            link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: total))
            ids.append(id)
        }
        var consumed = [UInt32: Int]()
        var largest = 0
        for _ in 0..<10_000 {
            try link.pump()
            var unreadNow = 0
            var done = true
            for id in ids {
                let delivered = Link.dataBytes(link.serverEvents, stream: id)
                let unread = delivered - consumed[id, default: 0]
                unreadNow += unread
                if delivered < total { done = false }
                let take = max(1, Int(Double(unread) * share))
                if unread > 0 {
                    link.server.consumed(streamID: id, bytes: min(take, unread))
                    consumed[id, default: 0] += min(take, unread)
                }
            }
            largest = max(largest, unreadNow)
            if done { return largest }
        }
        XCTFail("transfer did not finish")
        return largest
    }

    func testWindowGrowsForAReaderThatKeepsUp() throws {
        var configuration = YamuxSession.Configuration()
        configuration.maxStreamWindow = 1024 * 1024
        let largest = try largestUnread(configuration: configuration, total: 16 * 1024 * 1024, share: 1)
        XCTAssertGreaterThan(largest, 256 * 1024, "the window never grew")
        XCTAssertLessThanOrEqual(largest, 1024 * 1024, "the window grew past its bound")
    }

    func testWindowStaysForAReaderThatLags() throws {
        // A reader that leaves most of its data unread keeps the initial window.
        let largest = try largestUnread(configuration: .init(), total: 4 * 1024 * 1024, share: 0.25)
        XCTAssertLessThanOrEqual(largest, 256 * 1024)
    }

    func testSessionBoundsTheGrowthOfAllStreams() throws {
        var configuration = YamuxSession.Configuration()
        configuration.maxStreamWindow = 4 * 1024 * 1024
        configuration.maxSessionWindowGrowth = 512 * 1024
        let largest = try largestUnread(configuration: configuration, total: 8 * 1024 * 1024, share: 1, streams: 3)
        XCTAssertLessThanOrEqual(largest, 3 * 256 * 1024 + 512 * 1024)
    }

    func testDataIsDeliveredAsItArrives() throws {
        var session = YamuxSession(isClient: false)
        var frame = header(type: 0, flags: 1 | 4, stream: 1, length: 1000)  // SYN + FIN
        frame.writeRepeatingByte(9, count: 1000)
        var first = frame.readSlice(length: 12 + 100)!
        let early = try session.receive(&first)
        XCTAssertEqual(early.count, 2)
        XCTAssertEqual(early.first, .inboundStream(1))
        guard case .data(1, let piece) = early.last else { return XCTFail("no data yet: \(early)") }
        XCTAssertEqual(piece.readableBytes, 100)
        // The FIN comes after the rest of the payload, not with the header.
        let rest = try session.receive(&frame)
        XCTAssertEqual(rest.count, 2)
        guard case .data(1, let tail) = rest.first else { return XCTFail("no tail: \(rest)") }
        XCTAssertEqual(tail.readableBytes, 900)
        XCTAssertEqual(rest.last, .remoteClosedWrite(1))
    }

    func testManyConcurrentStreams() throws {
        var link = Link()
        var ids: [UInt32] = []
        for _ in 0..<150 { ids.append(try link.client.openStream()) }
        for (index, id) in ids.enumerated() {
            link.client.write(streamID: id, data: ByteBuffer(repeating: UInt8(index % 256), count: 1000 + index))
        }
        try link.pump(step: 333)
        for (index, id) in ids.enumerated() {
            XCTAssertEqual(Link.dataBytes(link.serverEvents, stream: id), 1000 + index)
        }
    }

    func testInboundStreamLimit() throws {
        var configuration = YamuxSession.Configuration()
        configuration.maxStreams = 2
        var link = Link()
        link.server = YamuxSession(isClient: false, configuration: configuration)
        for _ in 0..<3 { _ = try link.client.openStream() }
        try link.pump()
        XCTAssertEqual(link.server.streamCount, 2)
        XCTAssertTrue(link.clientEvents.contains(.reset(5)))
    }

    /// A configuration the session cannot honour is a described error, found
    /// before any session exists (an `initialWindow` below the protocol's once
    /// trapped on an unsigned underflow at the first stream).
    func testConfigurationValidation() throws {
        XCTAssertNoThrow(try YamuxSession.Configuration().validate())
        var large = YamuxSession.Configuration()
        large.initialWindow = 64 * 1024 * 1024
        large.maxStreamWindow = 64 * 1024 * 1024
        XCTAssertNoThrow(try large.validate())

        var small = YamuxSession.Configuration()
        small.initialWindow = 128 * 1024
        XCTAssertThrowsError(try small.validate()) { error in
            XCTAssertEqual(error as? YamuxConfigurationError, .initialWindowBelowDefault(128 * 1024, minimum: 256 * 1024))
            XCTAssertEqual(
                "\(error)", "yamux initialWindow 131072 is below the protocol's initial window of 262144 bytes")
        }
        var inverted = YamuxSession.Configuration()
        inverted.initialWindow = 1024 * 1024
        inverted.maxStreamWindow = 512 * 1024
        XCTAssertThrowsError(try inverted.validate()) { error in
            XCTAssertEqual(
                error as? YamuxConfigurationError, .maxStreamWindowBelowInitialWindow(512 * 1024, initialWindow: 1024 * 1024))
        }
        var noStreams = YamuxSession.Configuration()
        noStreams.maxStreams = 0
        XCTAssertThrowsError(try noStreams.validate()) { error in
            XCTAssertEqual(error as? YamuxConfigurationError, .notPositive("maxStreams", 0))
        }
        var noFrames = YamuxSession.Configuration()
        noFrames.maxFramePayload = 0
        XCTAssertThrowsError(try noFrames.validate())
        var noGrowthRule = YamuxSession.Configuration()
        noGrowthRule.growthRoundTrips = 0
        XCTAssertThrowsError(try noGrowthRule.validate())
    }

    /// The other order of `testOpenSendCloseBothWays`: the remote closes first;
    /// we still send, a write after our close is dropped, and the stream leaves
    /// both sessions once both FINs went.
    func testRemoteClosesFirst() throws {
        var link = Link()
        let id = try link.client.openStream()
        try link.pump()
        link.server.closeWrite(streamID: id)
        try link.pump()
        XCTAssertTrue(link.clientEvents.contains(.remoteClosedWrite(id)))
        XCTAssertEqual(link.client.streamCount, 1, "half closed: still there")
        link.client.write(streamID: id, data: ByteBuffer(bytes: [1, 2, 3]))
        link.client.closeWrite(streamID: id)
        link.client.write(streamID: id, data: ByteBuffer(bytes: [4]))
        try link.pump()
        XCTAssertEqual(Link.dataBytes(link.serverEvents, stream: id), 3, "what follows our close is dropped")
        XCTAssertTrue(link.serverEvents.contains(.closed(id)))
        XCTAssertEqual(link.client.streamCount, 0)
        XCTAssertEqual(link.server.streamCount, 0)
    }

    func testResetWithQueuedData() throws {
        var link = Link()
        let id = try link.client.openStream()
        link.client.write(streamID: id, data: ByteBuffer(repeating: 1, count: 600 * 1024))
        try link.pump()
        link.client.reset(streamID: id)
        try link.pump()
        XCTAssertTrue(link.serverEvents.contains(.reset(id)))
        XCTAssertEqual(link.client.streamCount, 0)
        XCTAssertEqual(link.server.streamCount, 0)
        // Late frames for the gone stream are ignored.
        var late = header(type: 0, flags: 0, stream: id, length: 3)
        late.writeBytes([1, 2, 3])
        XCTAssertEqual(try link.server.receive(&late), [])
    }

    func testPingAndGoAway() throws {
        var link = Link()
        let opaque = link.client.ping()
        try link.pump()
        XCTAssertTrue(link.serverEvents.contains(.ping(opaque)))
        XCTAssertTrue(link.clientEvents.contains(.pong(opaque)))
        link.server.goAway()
        try link.pump()
        XCTAssertTrue(link.clientEvents.contains(.goAway(0)))
        XCTAssertThrowsError(try link.client.openStream())
    }

    func testDataAfterFinResetsTheStream() throws {
        var server = YamuxSession(isClient: false)
        var frames = header(type: 1, flags: 1, stream: 1, length: 0)
        var fin = header(type: 0, flags: 4, stream: 1, length: 1)
        fin.writeInteger(UInt8(1))
        frames.writeBuffer(&fin)
        var more = header(type: 0, flags: 0, stream: 1, length: 1)
        more.writeInteger(UInt8(2))
        frames.writeBuffer(&more)
        let events = try server.receive(&frames)
        XCTAssertTrue(events.contains(.remoteClosedWrite(1)))
        XCTAssertTrue(events.contains(.reset(1)))
    }

    func testProtocolViolations() {
        func violation(_ bytes: ByteBuffer, isClient: Bool = false) -> YamuxError? {
            var session = YamuxSession(isClient: isClient)
            var input = bytes
            do {
                _ = try session.receive(&input)
                return nil
            } catch {
                // A go-away (protocol error) is queued for the remote.
                let out = session.takeOutput()
                XCTAssertEqual(out.getInteger(at: out.writerIndex - 12 + 1, as: UInt8.self), 3)
                XCTAssertEqual(out.getInteger(at: out.writerIndex - 4, as: UInt32.self), 1)
                return error as YamuxError
            }
        }
        XCTAssertEqual(violation(header(type: 0, flags: 1, stream: 1, length: 0, version: 1)), .badVersion(1))
        XCTAssertEqual(violation(header(type: 9, flags: 0, stream: 1, length: 0)), .badType(9))
        XCTAssertEqual(violation(header(type: 0, flags: 1, stream: 1, length: 1 << 30)), .frameTooLarge(1 << 30))
        XCTAssertEqual(violation(header(type: 1, flags: 1, stream: 2, length: 0)), .wrongStreamParity(2))
        XCTAssertEqual(violation(header(type: 1, flags: 1, stream: 1, length: 0), isClient: true), .wrongStreamParity(1))
        var duplicate = header(type: 1, flags: 1, stream: 1, length: 0)
        var again = header(type: 1, flags: 1, stream: 1, length: 0)
        duplicate.writeBuffer(&again)
        XCTAssertEqual(violation(duplicate), .duplicateStream(1))
        // More data than the window granted.
        var flood = header(type: 1, flags: 1, stream: 1, length: 0)
        for _ in 0..<2 {
            var frame = header(type: 0, flags: 0, stream: 1, length: 200 * 1024)
            frame.writeRepeatingByte(0, count: 200 * 1024)
            flood.writeBuffer(&frame)
        }
        XCTAssertEqual(violation(flood), .windowExceeded(stream: 1, length: 200 * 1024, window: 56 * 1024))
        XCTAssertEqual(violation(header(type: 1, flags: 1, stream: 0, length: 0)), .sessionStreamFlags)
    }

    func testTruncatedHeaderWaits() throws {
        var session = YamuxSession(isClient: false)
        var frame = header(type: 1, flags: 1, stream: 1, length: 0)
        var first = frame.readSlice(length: 7)!
        XCTAssertEqual(try session.receive(&first), [])
        XCTAssertEqual(try session.receive(&frame), [.inboundStream(1)])
    }

    func testRandomInputNeverCrashes() {
        var random = SplitMix(seed: 11)
        func next() -> UInt64 { random.next() }
        for _ in 0..<3000 {
            var session = YamuxSession(isClient: next() % 2 == 0)
            var input = ByteBuffer()
            for _ in 0..<Int(next() % 6) {
                input.writeInteger(UInt8(next() % 2))  // mostly version 0
                input.writeInteger(UInt8(next() % 5))
                input.writeInteger(UInt16(next() % 16))
                input.writeInteger(UInt32(next() % 8))
                let length = UInt32(next() % 64)
                input.writeInteger(next() % 10 == 0 ? UInt32(truncatingIfNeeded: next()) : length)
                input.writeBytes((0..<Int(next() % 64)).map { _ in UInt8(truncatingIfNeeded: next()) })
            }
            _ = try? session.receive(&input)
        }
    }
}
