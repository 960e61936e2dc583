import Logging
import NIOCore
import NIOEmbedded
import NIOWebSocket
import XCTest

@testable import WebSocket

/// The frame <-> bytes handler on its own, in an embedded channel.
final class ByteStreamHandlerTests: XCTestCase {
    private func channel(_ role: WebSocketByteStreamHandler.Role, maxFramePayload: Int = 64 * 1024) throws
        -> EmbeddedChannel
    {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            WebSocketByteStreamHandler(role: role, maxFramePayload: maxFramePayload, logger: Logger(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func frame(
        _ opcode: WebSocketOpcode, _ bytes: [UInt8], fin: Bool = true, masked: Bool
    ) -> WebSocketFrame {
        let key: WebSocketMaskingKey? = masked ? .random() : nil
        var data = ByteBuffer(bytes: bytes)
        if let key { data.webSocketMask(key) }
        return WebSocketFrame(fin: fin, opcode: opcode, maskKey: key, data: data)
    }

    private func outboundFrames(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var frames: [WebSocketFrame] = []
        while let frame = try channel.readOutbound(as: WebSocketFrame.self) { frames.append(frame) }
        return frames
    }

    func testFastUnmaskingMatchesNIO() throws {
        for count in Array(0..<40) + [65537, 1 << 20] {
            let key = WebSocketMaskingKey.random()
            let bytes = (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
            // Also from an odd reader index, as a slice of a larger read.
            var ours = ByteBuffer(bytes: [9, 9, 9] + bytes)
            ours.moveReaderIndex(forwardBy: 3)
            var theirs = ByteBuffer(bytes: bytes)
            ours.unmaskWebSocketPayload(key)
            theirs.webSocketUnmask(key)
            XCTAssertTrue(ours == theirs, "count \(count)")
        }
    }

    func testClientWritesMaskedBinaryFramesOfBoundedSize() throws {
        let channel = try channel(.client, maxFramePayload: 1000)
        let data = (0..<2500).map { UInt8(truncatingIfNeeded: $0) }
        try channel.writeAndFlush(ByteBuffer(bytes: data)).wait()
        let frames = try outboundFrames(channel)
        XCTAssertEqual(frames.map(\.length), [1000, 1000, 500])
        XCTAssertTrue(frames.allSatisfy { $0.fin && $0.opcode == .binary && $0.maskKey != nil })
        // Outbound frames carry their key; the encoder applies it, so the data here is still plain.
        XCTAssertTrue(frames.flatMap { Array($0.data.readableBytesView) } == data)
        _ = try channel.finish()
    }

    func testServerWritesUnmaskedFrames() throws {
        let channel = try channel(.server)
        try channel.writeAndFlush(ByteBuffer(bytes: [1, 2, 3])).wait()
        let frames = try outboundFrames(channel)
        XCTAssertEqual(frames.count, 1)
        XCTAssertNil(frames[0].maskKey)
        XCTAssertEqual(Array(frames[0].data.readableBytesView), [1, 2, 3])
        _ = try channel.finish()
    }

    func testBinaryAndContinuationFramesBecomeBytes() throws {
        let channel = try channel(.server)
        try channel.writeInbound(frame(.binary, [1, 2], fin: false, masked: true))
        // A ping may come between fragments; it is answered, not delivered.
        try channel.writeInbound(frame(.ping, [9], masked: true))
        try channel.writeInbound(frame(.continuation, [3], fin: false, masked: true))
        try channel.writeInbound(frame(.continuation, [4, 5], fin: true, masked: true))
        var received: [UInt8] = []
        while let bytes = try channel.readInbound(as: ByteBuffer.self) { received += bytes.readableBytesView }
        XCTAssertEqual(received, [1, 2, 3, 4, 5])
        let replies = try outboundFrames(channel)
        XCTAssertEqual(replies.map(\.opcode), [.pong])
        XCTAssertEqual(Array(replies[0].data.readableBytesView), [9])
        XCTAssertTrue(channel.isActive)
        _ = try channel.finish()
    }

    func testClientAnswersPingWithMaskedPong() throws {
        let channel = try channel(.client)
        try channel.writeInbound(frame(.ping, [7, 8], masked: false))
        let replies = try outboundFrames(channel)
        XCTAssertEqual(replies.map(\.opcode), [.pong])
        XCTAssertNotNil(replies[0].maskKey)
        XCTAssertEqual(Array(replies[0].data.readableBytesView), [7, 8])
        _ = try channel.finish()
    }

    private func assertClosedWith(_ code: WebSocketErrorCode, _ channel: EmbeddedChannel, file: StaticString = #filePath, line: UInt = #line) throws {
        let frames = try outboundFrames(channel)
        XCTAssertEqual(frames.map(\.opcode), [.connectionClose], file: file, line: line)
        var payload = frames.first?.data ?? ByteBuffer()
        XCTAssertEqual(payload.readWebSocketErrorCode(), code, file: file, line: line)
        channel.embeddedEventLoop.run()
        XCTAssertFalse(channel.isActive, "still open", file: file, line: line)
    }

    func testTextFrameClosesWithProtocolError() throws {
        let channel = try channel(.server)
        XCTAssertThrowsError(try channel.writeInbound(frame(.text, Array("hi".utf8), masked: true))) { error in
            guard case WebSocketError.protocolViolation = error else { return XCTFail("\(error)") }
        }
        XCTAssertNil(try channel.readInbound(as: ByteBuffer.self))
        try assertClosedWith(.protocolError, channel)
    }

    func testUnmaskedClientFrameClosesWithProtocolError() throws {
        let channel = try channel(.server)
        XCTAssertThrowsError(try channel.writeInbound(frame(.binary, [1], masked: false)))
        XCTAssertNil(try channel.readInbound(as: ByteBuffer.self))
        try assertClosedWith(.protocolError, channel)
    }

    func testContinuationWithoutMessageClosesWithProtocolError() throws {
        let channel = try channel(.client)
        XCTAssertThrowsError(try channel.writeInbound(frame(.continuation, [1], masked: false)))
        try assertClosedWith(.protocolError, channel)
    }

    func testOversizedFrameClosesWithMessageTooBig() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: 10)))
        try channel.pipeline.syncOperations.addHandler(
            WebSocketByteStreamHandler(role: .client, maxFramePayload: 64, logger: Logger(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        // An unmasked binary frame of 11 bytes: one over the limit.
        XCTAssertThrowsError(try channel.writeInbound(ByteBuffer(bytes: [0x82, 11] + [UInt8](repeating: 1, count: 11)))) {
            XCTAssertEqual($0 as? NIOWebSocketError, .invalidFrameLength)
        }
        XCTAssertNil(try channel.readInbound(as: ByteBuffer.self))
        try assertClosedWith(.messageTooLarge, channel)
    }

    func testCloseFrameIsEchoedAndClosesTheChannel() throws {
        let channel = try channel(.client)
        var payload = ByteBuffer()
        payload.write(webSocketErrorCode: .goingAway)
        try channel.writeInbound(WebSocketFrame(fin: true, opcode: .connectionClose, data: payload))
        try assertClosedWith(.goingAway, channel)
    }

    func testClosingSendsACloseFrameAndRefusesLaterWrites() throws {
        let channel = try channel(.server)
        // A close coming from the handlers above (the libp2p connection).
        channel.close(promise: nil)
        channel.embeddedEventLoop.run()
        let frames = try outboundFrames(channel)
        XCTAssertEqual(frames.map(\.opcode), [.connectionClose])
        XCTAssertFalse(channel.isActive)
        let late = channel.write(ByteBuffer(bytes: [1]))
        channel.embeddedEventLoop.run()
        XCTAssertThrowsError(try late.wait())
    }
}
