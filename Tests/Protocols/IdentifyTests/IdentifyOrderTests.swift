import Foundation
import Host
import Identity
@testable import Identify
import Multiformats
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Transport
import XCTest

/// Identify applies what a peer says in the order it was said, not in the
/// order the answers arrive: a late answer never overwrites a newer push.
final class IdentifyOrderTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    /// An identify message announcing `protocols`, length-prefixed.
    private func message(protocols: [String]) throws -> ByteBuffer {
        var message = Identify_Pb_Identify()
        message.protocols = protocols
        var buffer = ByteBuffer()
        buffer.writeLengthPrefixed(try message.serializedBytes() as [UInt8])
        return buffer
    }

    /// A gate the remote's identify responder waits at.
    private final class Gate: Sendable {
        let requests = Counter()
        private let (opened, open) = AsyncStream.makeStream(of: Void.self)
        func release() { open.finish() }
        func wait() async { for await _ in opened {} }
    }

    /// Two hosts on one in-memory network, connected, without identify (the
    /// test hosts run it: their own answers and pushes would race the test's).
    private func makeConnectedHostsWithoutIdentify() async throws -> (local: Libp2pHost, remote: Libp2pHost) {
        let network = MemoryNetwork()
        let local = try Libp2pHost(
            key: .generateEd25519(), group: group, transports: [MemoryTransport(group: group, network: network)], security: testSecurity)
        let remote = try Libp2pHost(
            key: .generateEd25519(), group: group, transports: [MemoryTransport(group: group, network: network)], security: testSecurity)
        let addresses = try await local.listen(on: [Multiaddr([.memory(0)])])
        _ = try await remote.connect(addresses[0].encapsulating(.p2p(local.localPeer.bytes)))
        try await waitUntil("both ends have the connection") { local.connection(to: remote.localPeer) != nil }
        return (local, remote)
    }

    /// `remote` pushes an identify message announcing `protocols`; returns once `local` applied it.
    private func push(_ protocols: [String], from remote: Libp2pHost, to local: Libp2pHost) async throws {
        let stream = try await XCTUnwrap(remote.connection(to: local.localPeer))
            .newStream(protocols: [IdentifyService.pushProtocolID])
        try await stream.write(try message(protocols: protocols))
        try await stream.closeWrite()
        try await waitUntil("the push is applied") { local.peerStore.info(remote.localPeer)?.protocols == protocols }
    }

    func testAPushReceivedAfterTheRequestWinsOverItsLateAnswer() async throws {
        let (local, remote) = try await makeConnectedHostsWithoutIdentify()
        let gate = Gate()
        // The remote answers identify only when the gate opens, with what it said before the push.
        let old = try message(protocols: ["/old/1.0.0"])
        remote.setStreamHandler(IdentifyService.protocolID) { stream in
            gate.requests.add(1)
            await gate.wait()
            try? await stream.write(old)
            try? await stream.closeWrite()
        }
        let service = IdentifyService(host: local, agentVersion: "order-test")
        service.start()
        let connection = try XCTUnwrap(local.connection(to: remote.localPeer))
        let answer = Task { try await service.identify(connection) }
        try await waitUntil("the remote got the request") { gate.requests.value >= 1 }

        // Meanwhile the remote pushes newer information.
        try await push(["/new/1.0.0"], from: remote, to: local)

        gate.release()
        let info = try await withDeadline(10) { try await answer.value }
        XCTAssertEqual(info.protocols, ["/old/1.0.0"], "identify still returns what the peer answered")
        XCTAssertEqual(local.peerStore.info(remote.localPeer)?.protocols, ["/new/1.0.0"], "the late answer is not applied")
        await local.close()
        await remote.close()
    }

    func testAnAnswerToARequestSentAfterAPushIsApplied() async throws {
        let (local, remote) = try await makeConnectedHostsWithoutIdentify()
        let current = try message(protocols: ["/current/1.0.0"])
        remote.setStreamHandler(IdentifyService.protocolID) { stream in
            try? await stream.write(current)
            try? await stream.closeWrite()
        }
        let service = IdentifyService(host: local, agentVersion: "order-test")
        service.start()
        try await push(["/pushed/1.0.0"], from: remote, to: local)
        let connection = try XCTUnwrap(local.connection(to: remote.localPeer))
        _ = try await withDeadline(10) { try await service.identify(connection) }
        XCTAssertEqual(local.peerStore.info(remote.localPeer)?.protocols, ["/current/1.0.0"])
        await local.close()
        await remote.close()
    }
}
