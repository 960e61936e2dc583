import Host
import Multiformats
import Perf
import TestSupport
import XCTest

/// `/perf/1.0.0` against py-libp2p 0.8.1's PerfService, both directions.
extension InteropTests {
    func testSwiftPerfAgainstPythonServer() async throws {
        let (_, address) = try await pythonListener()
        let (host, _) = try await makeTestHost(group: group)
        let connection = try await host.connect(address)
        let size: UInt64 = 4 * 1024 * 1024
        let result = try await withDeadline(120) {
            try await PerfService.run(connection, upload: size, download: size)
        }
        XCTAssertEqual(result.uploadBytes, size)
        XCTAssertEqual(result.downloadBytes, size)
        XCTAssertGreaterThan(result.uploadBytesPerSecond, 0)
        XCTAssertGreaterThan(result.downloadBytesPerSecond, 0)
        await host.close()
    }

    func testPythonPerfAgainstSwiftServer() async throws {
        let (host, address) = try await makeTestHost(group: group)
        PerfService(host: host).start()
        let size = 4 * 1024 * 1024
        let peer = try startPython(["dial", "\(address)", "perf", "--upload", "\(size)", "--download", "\(size)", "--timeout", "120"])
        let result = try await peer.next("perf", within: 120)
        XCTAssertEqual(result["upload_bytes"] as? Double, Double(size))
        XCTAssertEqual(result["download_bytes"] as? Double, Double(size))
        let status = try await peer.waitForExit(within: 30)
        XCTAssertEqual(status, 0, peer.stderrTail)
        await host.close()
    }
}
