import Host
import Multiformats
import NIOCore
import NIOPosix
@testable import Perf
import TestSupport
import Transport
import XCTest

/// `/perf/1.0.0` between Swift nodes, and its failure modes.
final class PerfTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func testUploadAndDownloadBetweenSwiftNodes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        PerfService(host: server).start()
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let upload: UInt64 = 3 * 1024 * 1024 + 17
        let download: UInt64 = 5 * 1024 * 1024 + 3
        let result = try await withDeadline(60) {
            try await PerfService.run(connection, upload: upload, download: download)
        }
        XCTAssertEqual(result.uploadBytes, upload)
        XCTAssertEqual(result.downloadBytes, download)
        XCTAssertGreaterThan(result.uploadDuration, .zero)
        XCTAssertGreaterThan(result.downloadDuration, .zero)
        // Empty transfers are valid too: only the header goes over.
        let empty = try await withDeadline(30) {
            try await PerfService.run(connection, upload: 0, download: 0)
        }
        XCTAssertEqual(empty.downloadBytes, 0)
        XCTAssertEqual(empty.downloadBytesPerSecond, 0)
        await client.close()
        await server.close()
    }

    func testServerResetsAStreamWithATruncatedHeader() async throws {
        let (server, address) = try await makeTestHost(group: group)
        PerfService(host: server).start()
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let stream = try await connection.newStream(protocols: [PerfService.protocolID])
        try await stream.write([0, 0, 1])
        try await stream.closeWrite()
        // The server gives up on the stream: it must neither answer nor hang.
        let outcome: String = try await withDeadline(30) {
            do {
                return try await stream.read() == nil ? "eof" : "data"
            } catch {
                return "reset"
            }
        }
        XCTAssertEqual(outcome, "reset")
        // The connection still serves perf afterwards.
        let result = try await withDeadline(30) {
            try await PerfService.run(connection, upload: 10, download: 10)
        }
        XCTAssertEqual(result.downloadBytes, 10)
        await client.close()
        await server.close()
    }

    func testClientRejectsAServerThatSendsTheWrongAmount() async throws {
        let (server, address) = try await makeTestHost(group: group)
        // A broken server: answers 3 bytes whatever was asked.
        server.setStreamHandler(PerfService.protocolID) { stream in
            do {
                while try await stream.read() != nil {}
                try await stream.write([1, 2, 3])
                try await stream.closeWrite()
            } catch {
                stream.reset()
            }
        }
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        do {
            _ = try await withDeadline(30) {
                try await PerfService.run(connection, upload: 100, download: 1000)
            }
            XCTFail("a short download was accepted")
        } catch let error as PerfError {
            XCTAssertEqual(error, .wrongDownloadSize(expected: 1000, got: 3))
        }
        await client.close()
        await server.close()
    }

    /// `stop` ends a perf stream whose upload is still arriving, and later runs are refused.
    func testStopEndsTheStreamsItServesAndRefusesNewOnes() async throws {
        let (server, address) = try await makeTestHost(group: group)
        let (client, _) = try await makeTestHost(group: group)
        let perf = PerfService(host: server)
        perf.start()
        let connection = try await client.connect(address)
        try await assertStopEndsService(
            PerfService.protocolID, over: connection, running: { perf.tasks.running },
            block: { stream in
                var header = ByteBuffer()
                header.writeInteger(UInt64(1 << 20), endianness: .big)
                try await stream.write(header)
                try await stream.write(ByteBuffer(repeating: 0, count: 1000))
            },
            stop: { await perf.stop() })
        await client.close()
        await server.close()
    }
}
