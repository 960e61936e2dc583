import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import TestSupport
import Synchronization
@testable import Transport
import XCTest

final class TransportTests: XCTestCase {
    // The process-wide group, as the host uses by default: it is never shut down,
    // so tasks that outlive a test (identify, handlers) never find a dead loop.
    let group = MultiThreadedEventLoopGroup.singleton

    /// A read waiting for data ends with CancellationError when its task is
    /// cancelled; nothing is lost, the next read gets what arrives later.
    func testWaitingReadIsCancellable() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: [echoProtocol])
        let reader = Task { try await stream.read() }
        // Cancelled once it is parked (the path under test), not before.
        try await waitUntil("the read parks") { stream.inbox.hasWaitingReader }
        reader.cancel()
        let outcome = try await withDeadline(5) { await reader.result }
        XCTAssertThrowsError(try outcome.get()) { XCTAssertTrue($0 is CancellationError, "\($0)") }
        try await stream.write([1, 2, 3])
        let echoed = try await withDeadline(5) { try await stream.read() }
        XCTAssertEqual(echoed.map { Array($0.readableBytesView) }, [1, 2, 3])
        await client.close()
        await server.close()
    }

    /// Length-prefixed messages that arrived together are taken without waiting;
    /// an incomplete one is left for a later read.
    func testBufferedLengthPrefixedMessages() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: [echoProtocol])
        var out = ByteBuffer()
        for text in ["one", "two", "three"] { out.writeLengthPrefixed(Array(text.utf8)) }
        out.writeBytes([10, 1, 2])  // a prefix announcing 10 bytes, and only 2 of them
        try await stream.write(out)
        var reader = StreamReader(stream)
        let first = try await withDeadline(5) { [reader] in
            var copy = reader
            let frame = try await copy.readLengthPrefixed(maxLength: 100)
            return (copy, frame)
        }
        reader = first.0
        XCTAssertEqual(first.1.map { String(buffer: $0) }, "one")
        var rest: [String] = []
        while let frame = try reader.takeBufferedLengthPrefixed(maxLength: 100) { rest.append(String(buffer: frame)) }
        XCTAssertEqual(rest, ["two", "three"])
        XCTAssertThrowsError(try reader.takeBufferedLengthPrefixed(maxLength: 5)) { error in
            guard case StreamReader.ReadError.messageTooLarge = error else { return XCTFail("\(error)") }
        }
        await client.close()
        await server.close()
    }

    /// A reader that does not read makes the writer wait: what the writer hands
    /// over stays within the stream's window plus its send bound (and one write).
    func testSlowReaderMakesTheWriterWait() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let reading = AsyncStream<Void>.makeStream()
        server.setStreamHandler("/p2pchat/test/slow/1.0.0") { stream in
            for await _ in reading.stream { break }
            while (try? await stream.read()) ?? nil != nil {}
            try? await stream.closeWrite()
        }
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: ["/p2pchat/test/slow/1.0.0"])
        let written = Counter()
        let chunk = ByteBuffer(repeating: 7, count: 64 * 1024)
        let total = 8 * 1024 * 1024
        let writer = Task {
            while written.value < total {
                try await stream.write(chunk)
                written.add(chunk.readableBytes)
            }
            try await stream.closeWrite()
        }
        // The writer parks once it has handed over all it may.
        try await waitUntil("the writer waits for the reader") { stream.credit.hasWaitingWriter }
        let bound = Int(TransportConfiguration().yamux.initialWindow) + TransportConfiguration().maxQueuedBytesPerStream
            + chunk.readableBytes
        XCTAssertLessThanOrEqual(written.value, bound, "the writer ran ahead of a reader that does not read")
        XCTAssertGreaterThan(written.value, 0)
        // Once the reader reads, everything goes through.
        reading.continuation.yield()
        try await withDeadline(30) { try await writer.value }
        XCTAssertEqual(written.value, total)
        await client.close()
        await server.close()
    }

    /// Writes to a stream the remote reset fail (this write, or the next one).
    func testWritesToAResetStreamFail() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        server.setStreamHandler("/p2pchat/test/reset/1.0.0") { stream in stream.reset() }
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: ["/p2pchat/test/reset/1.0.0"])
        let failure: Error? = try await withDeadline(10) {
            do {
                while true {
                    try await stream.write([1, 2, 3])
                    try await Task.sleep(for: .milliseconds(5))
                }
            } catch {
                return error
            }
        }
        XCTAssertNotNil(failure as? TransportError, "\(String(describing: failure))")
        await client.close()
        await server.close()
    }

    func testLargeEchoKeepsDataIntact() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let data = patternBytes(count: 8 * 1024 * 1024, seed: 7)
        let back = try await withDeadline(60) { try await echo(data, over: connection) }
        XCTAssertEqual(back.count, data.count)
        XCTAssertTrue(back == data)
        await client.close()
        await server.close()
    }

    func testHundredConcurrentStreams() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let intact = try await withDeadline(60) {
            try await echoConcurrently(100, over: connection, bytes: 64 * 1024, seed: 1, chunk: 8192)
        }
        XCTAssertEqual(intact, 100)
        // Finished streams are forgotten on both sides of the stream table (the
        // connection's own streams, identify's, end on their own time: wait for them).
        try await waitUntil("every finished stream forgotten") { try await connection.trackedStreamCount() == 0 }
        await client.close()
        await server.close()
    }

    func testWrongPeerIDIsRejected() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let impostor = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let wrong = address.withoutP2P.encapsulating(.p2p(impostor.bytes))
        do {
            _ = try await client.connect(wrong)
            XCTFail("connected to the wrong peer")
        } catch let error as TransportError {
            guard case .peerIDMismatch(let expected, let actual) = error else { return XCTFail("unexpected \(error)") }
            XCTAssertEqual(expected, impostor)
            XCTAssertEqual(actual, server.localPeer)
        }
        await client.close()
        await server.close()
    }

    func testUnsupportedProtocolFailsCleanly() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        do {
            _ = try await connection.newStream(protocols: ["/nope/1.0.0", "/nada/2.0.0"])
            XCTFail("negotiated an unsupported protocol")
        } catch let error as TransportError {
            guard case .negotiationFailed = error else { return XCTFail("unexpected \(error)") }
        }
        // The connection still works.
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
        await server.close()
    }

    func testDialTimeoutAndRefusal() async throws {
        var configuration = TransportConfiguration()
        configuration.dialTimeout = .milliseconds(500)
        let (client, _) = try await makeTestHost(group: group, configuration: configuration)
        let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        do {
            _ = try await client.connect(Multiaddr("/ip4/127.0.0.1/tcp/1").encapsulating(.p2p(peer.bytes)))
            XCTFail("connected to a closed port")
        } catch let error as TransportError {
            guard case .dialFailed = error else { return XCTFail("unexpected \(error)") }
            // Issue 22: was "dial ...: connection reset (error set): Connection refused) (errno: 111)".
            XCTAssertEqual("\(error)", "dial /ip4/127.0.0.1/tcp/1/p2p/\(peer): connection refused")
            XCTAssertEqual(error.reason, "connection refused")
        }
        await client.close()
    }

    /// Issue 22: what failed underneath, in short words, one line.
    func testFailuresAreDescribedInShortWords() throws {
        XCTAssertEqual(ErrorText.describe(IOError(errnoCode: ECONNREFUSED, reason: "connect")), "connection refused")
        XCTAssertEqual(ErrorText.describe(IOError(errnoCode: ENETUNREACH, reason: "connect")), "network unreachable")
        XCTAssertEqual(ErrorText.describe(IOError(errnoCode: EADDRINUSE, reason: "bind")), "address in use")
        XCTAssertEqual(ErrorText.describe(IOError(errnoCode: ENOENT, reason: "open")), "no such file or directory")
        XCTAssertEqual(ErrorText.describe(ChannelError.connectTimeout(.seconds(5))), "timed out after 5 s")
        XCTAssertEqual(ErrorText.timedOut(after: .milliseconds(500)), "timed out after 0.5 s")
        let timeout = TransportError.dialTimeout(address: "/ip4/192.0.2.1/tcp/4001", after: .seconds(5))
        XCTAssertEqual("\(timeout)", "dial /ip4/192.0.2.1/tcp/4001: timed out after 5 s")
        let refused = TransportError.dialFailed(
            address: "/ip6/::1/tcp/1", underlying: IOError(errnoCode: ECONNREFUSED, reason: "connection reset (error set)"))
        XCTAssertEqual("\(refused)", "dial /ip6/::1/tcp/1: connection refused")
    }

    /// A port in use: one line that names the address.
    func testListeningOnATakenPortSaysSo() async throws {
        let (server, bound) = try await makeTestHost(group: group)
        let address = bound.withoutP2P
        let other = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        do {
            _ = try await other.listen(on: [address])
            XCTFail("listened twice on \(address)")
        } catch {
            XCTAssertEqual("\(error)", "listen on \(address): address in use")
        }
        await other.close()
        await server.close()
    }

    func testIPv6ListenAndDial() async throws {
        let server = try Libp2pHost(key: .generateEd25519(), group: group, security: testSecurity)
        PingService(host: server).start()
        let bound = try await server.listen(on: [Multiaddr("/ip6/::1/tcp/0")])
        XCTAssertTrue(bound[0].description.hasPrefix("/ip6/::1/tcp/"), "\(bound[0])")
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(bound[0].encapsulating(.p2p(server.localPeer.bytes)))
        let rtts = try await PingService.ping(connection, count: 1)
        XCTAssertEqual(rtts.count, 1)
        await client.close()
        await server.close()
    }
}
