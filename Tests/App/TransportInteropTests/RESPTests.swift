import Foundation
import NIOCore
import NIOPosix
import RedisRESP
import TestKit
import XCTest

/// The RESP2 decoder on whole, truncated and hostile input.
final class RESPDecoderTests: XCTestCase {
    let decoder = RESPDecoder()

    func decode(_ text: String) throws -> (value: RESPValue, consumed: Int)? {
        try decoder.decode(Array(text.utf8))
    }

    func testEachTypeDecodes() throws {
        XCTAssertEqual(try decode("+OK\r\n")?.value, .simpleString("OK"))
        XCTAssertEqual(try decode("-WRONGTYPE Operation against a key\r\n")?.value, .error("WRONGTYPE Operation against a key"))
        XCTAssertEqual(try decode(":-42\r\n")?.value, .integer(-42))
        XCTAssertEqual(try decode("$5\r\nhello\r\n")?.value, .bulkString(Array("hello".utf8)))
        XCTAssertEqual(try decode("$0\r\n\r\n")?.value, .bulkString([]))
        XCTAssertEqual(try decode("$-1\r\n")?.value, .bulkString(nil))
        XCTAssertEqual(try decode("*-1\r\n")?.value, .array(nil))
        XCTAssertEqual(try decode("*0\r\n")?.value, .array([]))
        // A bulk string may hold CR and LF: its length, not a line end, delimits it.
        XCTAssertEqual(try decode("$4\r\na\r\nb\r\n")?.value, .bulkString(Array("a\r\nb".utf8)))
    }

    func testABLPOPReplyAndWhatFollowsIt() throws {
        let reply = "*2\r\n$12\r\nlistenerAddr\r\n$38\r\n/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWAbc\r\n"
        let withNext = reply + "+PONG\r\n"
        let decoded = try XCTUnwrap(try decode(withNext))
        XCTAssertEqual(decoded.consumed, reply.utf8.count, "only the first value is consumed")
        XCTAssertEqual(
            decoded.value,
            .array([.bulkString(Array("listenerAddr".utf8)), .bulkString(Array("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWAbc".utf8))]))
        XCTAssertEqual(decoded.value.text, nil)
        if case .array(let elements?) = decoded.value { XCTAssertEqual(elements[1].text, "/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWAbc") }
    }

    /// Every proper prefix of a value is "need more" (never an error, never a
    /// wrong value), whatever the cut; the whole is the value.
    func testEveryTruncationWaitsForMore() throws {
        let messages = [
            "+OK\r\n", "-ERR x\r\n", ":1234567\r\n", "$5\r\nhello\r\n", "$-1\r\n", "*-1\r\n",
            "*3\r\n$5\r\nRPUSH\r\n*2\r\n:1\r\n+two\r\n$0\r\n\r\n",
        ]
        for message in messages {
            let bytes = Array(message.utf8)
            for cut in 0..<bytes.count {
                XCTAssertNil(try decoder.decode(Array(bytes[..<cut])), "\(message.debugDescription) cut at \(cut)")
            }
            XCTAssertEqual(try decoder.decode(bytes)?.consumed, bytes.count, message.debugDescription)
        }
    }

    func testGarbageIsRefused() {
        let cases: [(String, RESPError)] = [
            ("?what\r\n", .unknownType(UInt8(ascii: "?"))),
            ("HTTP/1.1 200 OK\r\n", .unknownType(UInt8(ascii: "H"))),
            (":12a\r\n", .malformedLine("not a number: 12a")),
            (":99999999999999999999999\r\n", .malformedLine("not a number: 99999999999999999999999")),
            ("$abc\r\n", .malformedLine("not a number: abc")),
            ("$-2\r\n", .malformedLine("bulk length -2")),
            ("*-3\r\n", .malformedLine("array length -3")),
            ("$3\r\nabcde\r\n", .missingTerminator),
            ("+OK\rX", .malformedLine("CR without LF")),
            ("+OK\n", .malformedLine("LF without CR")),
            ("$999999999\r\n", .bulkTooLong(length: 999_999_999, limit: 512 * 1024)),
            ("*100000\r\n", .arrayTooLong(count: 100_000, limit: 1024)),
            (String(repeating: "*1\r\n", count: 20) + ":1\r\n", .nestedTooDeep(limit: 8)),
        ]
        for (input, expected) in cases {
            XCTAssertThrowsError(try decode(input), input.debugDescription) { error in
                XCTAssertEqual(error as? RESPError, expected, input.debugDescription)
            }
        }
    }

    /// A line that never ends, or a value that keeps growing, is refused once
    /// it passes the limits instead of being buffered for ever.
    func testUnendingInputIsBounded() {
        var small = RESPDecoder()
        small.maxLineLength = 100
        small.maxValueBytes = 1000
        XCTAssertThrowsError(try small.decode(Array(("+" + String(repeating: "a", count: 200)).utf8))) {
            XCTAssertEqual($0 as? RESPError, .lineTooLong(limit: 100))
        }
        XCTAssertThrowsError(try small.decode(Array(("$900\r\n" + String(repeating: "b", count: 950)).utf8)))
        XCTAssertThrowsError(try small.decode(Array((String(repeating: "*1000\r\n", count: 1) + String(repeating: ":1\r\n", count: 300)).utf8)))
        // Within the limits, the same shapes only wait for more.
        XCTAssertNil(try small.decode(Array(("+" + String(repeating: "a", count: 50)).utf8)))
        XCTAssertNil(try small.decode(Array(("$900\r\n" + String(repeating: "b", count: 500)).utf8)))
    }

    /// Random bytes and random mutations of valid replies: the decoder always
    /// ends (value, need-more or error) and never claims more bytes than it got.
    func testRandomInputNeverTrapsOrOverreads() throws {
        var generator = SplitMix(seed: 0x5EED_2027)
        let valid = Array("*2\r\n$12\r\nlistenerAddr\r\n$25\r\n/ip4/1.2.3.4/tcp/5/p2p/Qm\r\n".utf8)
        let alphabet = Array("+-:$*\r\n0123456789-abc".utf8)
        for round in 0..<5000 {
            var bytes: [UInt8]
            if round % 2 == 0 {
                bytes = (0..<Int(generator.next() % 48)).map { _ in alphabet[Int(generator.next() % UInt64(alphabet.count))] }
            } else {
                bytes = valid
                for _ in 0..<(1 + Int(generator.next() % 4)) {
                    bytes[Int(generator.next() % UInt64(bytes.count))] = UInt8(truncatingIfNeeded: generator.next())
                }
            }
            if let (_, consumed) = try? decoder.decode(bytes) {
                XCTAssertLessThanOrEqual(consumed, bytes.count)
                XCTAssertGreaterThan(consumed, 0)
            }
        }
    }

    func testCommandsAreArraysOfBulkStrings() {
        XCTAssertEqual(
            String(decoding: RESPEncoder.command(["RPUSH", "listenerAddr", "/ip4/1.2.3.4/tcp/5"]), as: UTF8.self),
            "*3\r\n$5\r\nRPUSH\r\n$12\r\nlistenerAddr\r\n$18\r\n/ip4/1.2.3.4/tcp/5\r\n")
        // Lengths are in bytes, not characters.
        XCTAssertEqual(String(decoding: RESPEncoder.command(["é"]), as: UTF8.self), "*1\r\n$2\r\né\r\n")
    }

    func testRedisAddresses() throws {
        XCTAssertEqual(try RedisAddress(parsing: "redis:6379"), RedisAddress(host: "redis", port: 6379))
        XCTAssertEqual(try RedisAddress(parsing: "transport-redis:6380"), RedisAddress(host: "transport-redis", port: 6380))
        XCTAssertEqual(try RedisAddress(parsing: "redis"), RedisAddress(host: "redis", port: 6379))
        XCTAssertEqual(try RedisAddress(parsing: "redis://127.0.0.1:7000"), RedisAddress(host: "127.0.0.1", port: 7000))
        XCTAssertEqual(try RedisAddress(parsing: "[::1]:7000"), RedisAddress(host: "::1", port: 7000))
        XCTAssertEqual(try RedisAddress(parsing: "::1"), RedisAddress(host: "::1", port: 6379))
        for bad in ["", ":6379", "redis:", "redis:0", "redis:70000", "redis:x", "[::1", "[::1]x"] {
            XCTAssertThrowsError(try RedisAddress(parsing: bad), bad)
        }
    }
}

/// The client against Debian's redis-server, and against a server that answers garbage.
final class RedisClientTests: XCTestCase {
    func testCommandsAgainstARealRedis() async throws {
        let server = try await RedisServer.start()
        defer { server.stop() }
        let client = try await RedisClient.connect(to: RedisAddress(host: "127.0.0.1", port: server.port))
        defer { Task { await client.close() } }
        try await client.ping()
        let deleted = try await client.delete("k")
        XCTAssertEqual(deleted, 0)
        let first = try await client.rpush("k", "/ip4/127.0.0.1/tcp/1/p2p/A")
        let second = try await client.rpush("k", "second")
        XCTAssertEqual([first, second], [1, 2])
        let poppedFirst = try await client.blpop("k", timeoutSeconds: 1)
        let poppedSecond = try await client.blpop("k", timeoutSeconds: 1)
        XCTAssertEqual(poppedFirst, "/ip4/127.0.0.1/tcp/1/p2p/A")
        XCTAssertEqual(poppedSecond, "second")
        // Empty: BLPOP waits its timeout and answers a null array.
        let clock = ContinuousClock()
        let start = clock.now
        let none = try await client.blpop("k", timeoutSeconds: 1)
        XCTAssertNil(none)
        XCTAssertGreaterThanOrEqual(clock.now - start, .milliseconds(900))
        // A blocked BLPOP is answered when another client pushes.
        let pusher = try await RedisClient.connect(to: RedisAddress(host: "127.0.0.1", port: server.port))
        async let popped = client.blpop("late", timeoutSeconds: 10)
        try await Task.sleep(for: .milliseconds(200))
        try await pusher.rpush("late", "here")
        let value = try await popped
        XCTAssertEqual(value, "here")
        await pusher.close()
        // An error reply is a typed error, and the connection stays usable.
        _ = try await client.send(["SET", "s", "text"])
        do {
            try await client.rpush("s", "x")
            XCTFail("RPUSH on a string must fail")
        } catch {
            guard case .server(let message) = error else { return XCTFail("\(error)") }
            XCTAssertTrue(message.hasPrefix("WRONGTYPE"), message)
        }
        try await client.ping()
    }

    func testNoServerIsATypedConnectError() async throws {
        let port = try freeLoopbackPort()
        do {
            _ = try await RedisClient.connect(to: RedisAddress(host: "127.0.0.1", port: port), connectTimeout: .seconds(2))
            XCTFail("nothing listens there")
        } catch {
            guard case .connectFailed = error else { return XCTFail("\(error)") }
        }
    }

    /// Something that is not Redis answers: the pending command fails with a
    /// protocol error (not a hang), and later commands fail at once.
    func testGarbageFromTheServerFailsTheCommand() async throws {
        for garbage in ["HTTP/1.1 400 Bad Request\r\n\r\n", "$99999999999\r\n", "+" + String(repeating: "x", count: 70_000)] {
            let server = try await GarbageServer.start(answer: garbage)
            let client = try await RedisClient.connect(to: RedisAddress(host: "127.0.0.1", port: server.port))
            do {
                try await client.ping()
                XCTFail("garbage must not pass as PONG")
            } catch {
                guard case .protocolViolation = error else { return XCTFail("\(garbage.prefix(20)): \(error)") }
            }
            do {
                try await client.ping()
                XCTFail("the connection is closed after garbage")
            } catch {}
            await client.close()
            try await server.close()
        }
    }

    /// The server closes mid-reply: the command fails as a closed connection.
    func testTruncatedReplyThenCloseFailsTheCommand() async throws {
        let server = try await GarbageServer.start(answer: "$10\r\nabc", closeAfter: true)
        let client = try await RedisClient.connect(to: RedisAddress(host: "127.0.0.1", port: server.port))
        do {
            _ = try await client.blpop("k", timeoutSeconds: 1)
            XCTFail("a truncated reply must not succeed")
        } catch {
            guard case .connectionClosed = error else { return XCTFail("\(error)") }
        }
        await client.close()
        try await server.close()
    }
}

/// A TCP server on loopback that answers whatever arrives with fixed bytes.
final class GarbageServer: Sendable {
    let channel: any Channel
    var port: Int { channel.localAddress?.port ?? 0 }

    private init(channel: any Channel) { self.channel = channel }

    static func start(answer: String, closeAfter: Bool = false) async throws -> GarbageServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { child in
                child.eventLoop.makeCompletedFuture {
                    try child.pipeline.syncOperations.addHandler(Answerer(answer: answer, closeAfter: closeAfter))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return GarbageServer(channel: channel)
    }

    func close() async throws { try await channel.close() }

    final class Answerer: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let answer: String
        let closeAfter: Bool
        init(answer: String, closeAfter: Bool) {
            self.answer = answer
            self.closeAfter = closeAfter
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let future = context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: answer)))
            if closeAfter {
                let loopContext = NIOLoopBound(context, eventLoop: context.eventLoop)
                future.whenComplete { _ in loopContext.value.close(promise: nil) }
            }
        }
    }
}
