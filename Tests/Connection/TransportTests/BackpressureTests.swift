import Host
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
@testable import Transport
import XCTest

/// TCP's backpressure reaches the stream's writer: when the socket takes
/// nothing more, data waits in the stream's queue (counted in the writer's
/// credit), not as ciphertext in the connection's output buffer.
final class BackpressureTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// Both ends' sockets limit what waits unsent in the kernel, so that data a
    /// slow link cannot carry yet waits in the streams' queues, by turns.
    func testSocketsLimitTheKernelsUnsentQueue() async throws {
        let (server, address) = try await makeTestHost(group: group)
        var configuration = TransportConfiguration()
        configuration.notSentLowWatermark = 64 * 1024
        let (client, _) = try await makeTestHost(group: group, configuration: configuration)
        let inbound = AsyncStream<Connection>.makeStream()
        server.setStreamHandler("/p2pchat/test/lowat/1.0.0") { stream in
            inbound.continuation.yield(stream.connection)
            try? await stream.closeWrite()
        }
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: ["/p2pchat/test/lowat/1.0.0"])
        try await stream.closeWrite()
        let serverSide = try await withDeadline(10) { () -> Connection? in
            for await connection in inbound.stream { return connection }
            return nil
        }
        let option = ChannelOptions.tcpOption(.tcp_notsent_lowat)
        let clientValue = try await connection.channel!.getOption(option).get()
        let serverValue = try await XCTUnwrap(serverSide).channel!.getOption(option).get()
        XCTAssertEqual(clientValue, 64 * 1024)
        XCTAssertEqual(serverValue, TransportConfiguration().notSentLowWatermark)
        await client.close()
        await server.close()
    }

    func testBlockedSocketHoldsTheWriterNotTheOutputBuffer() async throws {
        // A Yamux window far larger than the kernel's socket buffers, so that
        // only TCP can hold the writer back.
        var configuration = TransportConfiguration()
        configuration.yamux.initialWindow = 64 * 1024 * 1024
        configuration.yamux.maxStreamWindow = 64 * 1024 * 1024
        // Memory for such windows (each stream reserves its window).
        var limits = HostLimits()
        limits.maxMemory = 2 << 30
        limits.maxMemoryPerPeer = 2 << 30
        let (server, address) = try await makeTestHost(group: group, configuration: configuration, limits: limits)
        let (client, _) = try await makeTestHost(group: group, configuration: configuration, limits: limits)
        let total = 48 * 1024 * 1024
        let resume = AsyncStream<Void>.makeStream()
        let paused = AsyncStream<Void>.makeStream()
        server.setStreamHandler("/p2pchat/test/blocked/1.0.0") { stream in
            // The server stops reading its socket altogether.
            try? await stream.connection.channel!.setOption(.autoRead, value: false).get()
            paused.continuation.yield()
            for await _ in resume.stream { break }
            try? await stream.connection.channel!.setOption(.autoRead, value: true).get()
            var count = 0
            while let chunk = try? await stream.read() { count += chunk.readableBytes }
            var reply = ByteBuffer()
            reply.writeInteger(UInt64(count))
            try? await stream.write(reply)
            try? await stream.closeWrite()
        }
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: ["/p2pchat/test/blocked/1.0.0"])
        let written = Counter()
        let chunk = ByteBuffer(repeating: 7, count: 64 * 1024)
        let writer = Task {
            while written.value < total {
                try await stream.write(chunk)
                written.add(chunk.readableBytes)
            }
            try await stream.closeWrite()
        }
        try await withDeadline(10) { for await _ in paused.stream { break } }

        // Wait until the writer stops making progress (the socket is full).
        try await withDeadline(60) {
            var last = -1
            var still = 0
            while still < 10 {
                try await Task.sleep(for: .milliseconds(100))
                let now = written.value
                still = now == last ? still + 1 : 0
                last = now
            }
        }
        let buffered = try await connection.channel!.getOption(.bufferedWritableBytes).get()
        XCTAssertLessThan(written.value, total, "the writer was not held back")
        // What NIO holds beyond the socket: at most about a batch and the
        // write watermark, never the megabytes the Yamux window allows.
        XCTAssertLessThanOrEqual(buffered, 1024 * 1024, "ciphertext piled up in the output buffer")

        // Once the server reads again, every byte arrives.
        resume.continuation.yield()
        try await withDeadline(60) { try await writer.value }
        let count = try await withDeadline(30) {
            var reader = StreamReader(stream)
            return try await reader.readExactly(8).getInteger(at: 0, as: UInt64.self)
        }
        XCTAssertEqual(count, UInt64(total))
        await client.close()
        await server.close()
    }
}
