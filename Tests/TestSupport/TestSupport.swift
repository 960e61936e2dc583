import Host
import Identify
import Identity
import Multiformats
import NIOCore
import NIOPosix
import Ping
import Transport
import XCTest

public let echoProtocol = "/p2pchat/echo/1.0.0"

/// Helpers shared by the network tests.

/// A host listening on 127.0.0.1 that serves identify, ping and echo.
public func makeTestHost(group: EventLoopGroup, configuration: TransportConfiguration = .init()) async throws -> (Libp2pHost, Multiaddr) {
    let host = Libp2pHost(key: .generateEd25519(), configuration: configuration, group: group)
    IdentifyService(host: host, agentVersion: "p2pchat-test/0").start()
    PingService(host: host).start()
    host.setStreamHandler(echoProtocol) { stream in
        do {
            while let chunk = try await stream.read() {
                try await stream.write(chunk)
            }
            try await stream.closeWrite()
        } catch {
            stream.reset()
        }
    }
    let bound = try await host.listen(on: [Multiaddr("/ip4/127.0.0.1/tcp/0")])
    return (host, bound[0].encapsulating(.p2p(host.localPeer.bytes)))
}

/// Deterministic pseudo-random bytes (xorshift) for data integrity checks.
public func patternBytes(count: Int, seed: UInt64) -> [UInt8] {
    var state = seed | 1
    var out = [UInt8]()
    out.reserveCapacity(count)
    while out.count < count {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        withUnsafeBytes(of: state) { out.append(contentsOf: $0.prefix(count - out.count)) }
    }
    return out
}

/// Sends `data` through the echo protocol and returns what came back.
public func echo(_ data: [UInt8], over connection: Connection, chunk: Int = 64 * 1024) async throws -> [UInt8] {
    let stream = try await connection.newStream(protocols: [echoProtocol])
    async let received: [UInt8] = {
        var all: [UInt8] = []
        all.reserveCapacity(data.count)
        while let piece = try await stream.read() {
            all.append(contentsOf: piece.readableBytesView)
        }
        return all
    }()
    var offset = 0
    while offset < data.count {
        let end = min(offset + chunk, data.count)
        try await stream.write(ByteBuffer(bytes: data[offset..<end]))
        offset = end
    }
    try await stream.closeWrite()
    return try await received
}

/// Fails the test if `body` does not finish within `seconds`.
public func withDeadline<T: Sendable>(
    _ seconds: Double, file: StaticString = #filePath, line: UInt = #line,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: .seconds(seconds))
            return nil
        }
        guard let first = try await group.next(), let value = first else {
            group.cancelAll()
            XCTFail("timed out after \(seconds) s", file: file, line: line)
            throw CancellationError()
        }
        group.cancelAll()
        return value
    }
}
