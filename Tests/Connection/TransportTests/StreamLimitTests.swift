import Multistream
import NIOCore
import Transport
import XCTest
import Yamux

/// Streams waiting for protocol negotiation are bounded per connection (sans-IO).
final class StreamLimitTests: XCTestCase {
    static func frame(type: UInt8, flags: UInt16, stream: UInt32, payload: ByteBuffer = ByteBuffer()) -> ByteBuffer {
        var buffer = ByteBuffer()
        buffer.writeInteger(UInt8(0))
        buffer.writeInteger(type)
        buffer.writeInteger(flags)
        buffer.writeInteger(stream)
        buffer.writeInteger(UInt32(payload.readableBytes))
        var payload = payload
        buffer.writeBuffer(&payload)
        return buffer
    }

    func testNegotiatingInboundStreamsAreBounded() throws {
        var table = StreamTable(
            isClient: false, configuration: .init(), limits: MultistreamLimits(), maxNegotiatingInbound: 2,
            supports: { _ in true })
        var events: [StreamTable.Event] = []
        for id: UInt32 in [1, 3, 5] {
            var syn = Self.frame(type: 1, flags: 1, stream: id)
            events += try table.receive(&syn, now: .now())
        }
        let incoming = events.compactMap { event -> UInt32? in
            if case .incoming(let id) = event { return id }
            return nil
        }
        XCTAssertEqual(incoming, [1, 3])
        XCTAssertEqual(table.refusedNegotiating, 1)
        // Stream 5 was reset (RST in the output).
        var output = ByteBuffer()
        for var piece in table.takeOutput(dataBudget: .max).pieces { output.writeBuffer(&piece) }
        var sawReset = false
        while output.readableBytes >= 12 {
            let flags = output.getInteger(at: output.readerIndex + 2, as: UInt16.self)!
            let stream = output.getInteger(at: output.readerIndex + 4, as: UInt32.self)!
            let length = output.getInteger(at: output.readerIndex + 8, as: UInt32.self)!
            let type = output.getInteger(at: output.readerIndex + 1, as: UInt8.self)!
            if stream == 5 && flags & 8 != 0 { sawReset = true }
            output.moveReaderIndex(forwardBy: 12 + (type == 0 ? Int(length) : 0))
        }
        XCTAssertTrue(sawReset, "the stream over the limit was not reset")
        // Once stream 1 has its protocol, a new stream may negotiate.
        var proposal = ByteBuffer()
        MultistreamNegotiation.writeMessage("/multistream/1.0.0", into: &proposal)
        MultistreamNegotiation.writeMessage("/echo", into: &proposal)
        var data = Self.frame(type: 0, flags: 0, stream: 1, payload: proposal)
        let opened = try table.receive(&data, now: .now())
        XCTAssertTrue(opened.contains { if case .opened(1, "/echo", true) = $0 { return true } else { return false } })
        var syn = Self.frame(type: 1, flags: 1, stream: 7)
        let accepted = try table.receive(&syn, now: .now())
        XCTAssertTrue(accepted.contains { if case .incoming(7) = $0 { return true } else { return false } })
        XCTAssertEqual(table.refusedNegotiating, 1)
    }
}
