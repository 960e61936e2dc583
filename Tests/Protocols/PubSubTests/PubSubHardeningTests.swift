import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
import TestSupport
import Transport
import XCTest

@testable import PubSub

/// A peer that starts pubsub RPCs and never finishes them cannot make us hold
/// their bytes: one inbound stream per peer, a deadline per RPC, a shared budget.
final class PubSubHardeningTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton

    func makeNode(limits: HostLimits = .init(), _ configure: (inout PubSubConfiguration) -> Void = { _ in }) async throws
        -> (Libp2pHost, PubSubService, Multiaddr)
    {
        let (host, address) = try await makeTestHost(group: group, limits: limits)
        var configuration = PubSubConfiguration()
        configuration.heartbeatInterval = .milliseconds(200)
        configure(&configuration)
        let pubsub = try PubSubService(host: host, configuration: configuration)
        pubsub.start()
        return (host, pubsub, address)
    }

    /// Opens a meshsub stream and sends the length prefix of a `announced`-byte
    /// RPC followed by `sent` bytes of it, never the rest.
    func startIncompleteRPC(on connection: Connection, announced: Int, sent: Int) async throws -> MuxedStream {
        let stream = try await connection.newStream(protocols: ["/meshsub/1.2.0"])
        var frame = ByteBuffer()
        frame.writeBytes(Varint.encode(UInt64(announced)))
        frame.writeBytes([UInt8](repeating: 0x0a, count: sent))
        try await stream.write(frame)
        return stream
    }

    /// Whether the remote resets `stream` within `seconds` (reads until then).
    func isReset(_ stream: MuxedStream, within seconds: Double) async -> Bool {
        do {
            return try await withDeadline(seconds) {
                do {
                    while try await stream.read() != nil {}
                    return false
                } catch TransportError.streamReset {
                    return true
                }
            }
        } catch {
            return false
        }
    }

    /// Found 1 of issue 14: many streams, each with most of a large RPC, held
    /// forever. Now a newer stream replaces the older (which drains a while), the unfinished RPC is
    /// dropped at its deadline, and an honest peer is still served.
    func testIncompleteRPCsAreNotHeld() async throws {
        let (server, serverPubSub, address) = try await makeNode { configuration in
            configuration.rpcCompletionTimeout = .seconds(1)
        }
        let (attacker, _) = try await makeTestHost(group: group)
        let connection = try await attacker.connect(address)
        var streams: [MuxedStream] = []
        for _ in 0..<8 {
            streams.append(try await startIncompleteRPC(on: connection, announced: 300_000, sent: 200_000))
        }
        // Every stream but the newest two was reset as soon as a second one followed it...
        for (index, stream) in streams.dropLast(2).enumerated() {
            let reset = await isReset(stream, within: 5)
            XCTAssertTrue(reset, "older stream \(index) still open")
        }
        // ...and the newest, and the one it replaced (still draining), are dropped at the RPC deadline.
        for stream in streams.suffix(2) {
            let reset = await isReset(stream, within: 5)
            XCTAssertTrue(reset, "the unfinished RPC was not dropped at its deadline")
        }
        let counters = await serverPubSub.counters()
        XCTAssertEqual(counters.replacedInboundStreams, streams.count - 1)
        XCTAssertEqual(counters.incompleteRPCTimeouts, 2)
        try await waitUntil("inbound state released", seconds: 5) {
            let usage = await serverPubSub.inboundUsage()
            return usage.pendingRPCBytes == 0 && usage.streams == 0
        }
        try await assertServesHonestPeer(server, serverPubSub, address)
        await attacker.close()
        await serverPubSub.stop()
        await server.close()
    }

    /// A length-prefixed RPC as it goes on a stream.
    static func frame(_ rpc: PubSubRPC) -> ByteBuffer {
        var bytes = ByteBuffer()
        bytes.writeLengthPrefixed(PubSubCodec.encode(rpc))
        return bytes
    }

    /// A message on `topic` signed by a fresh author.
    static func signedMessage(_ text: String, topic: String) throws -> RawMessage {
        let key = PrivateKey.generateEd25519()
        var message = RawMessage(
            from: PeerID(publicKey: key.publicKey).bytes, data: Array(text.utf8), seqno: [0, 0, 0, 1], topic: topic)
        try MessageSigning.sign(&message, with: key)
        return message
    }

    /// A peer that moves to a newer stream (on another connection, as after a
    /// hole punch) may have sent on the older one just before: what it sent
    /// there still arrives. The older stream, if the peer leaves it open, is
    /// reset once its drain time is over.
    func testRPCsOnAReplacedStreamStillArrive() async throws {
        let (server, serverPubSub, address) = try await makeNode { $0.replacedStreamDrainTime = .seconds(1) }
        let messages = await serverPubSub.subscribe("t")
        let (client, _) = try await makeTestHost(group: group)
        let connection = try await client.connect(address)
        let old = try await connection.newStream(protocols: ["/meshsub/1.2.0"])
        try await old.write(Self.frame(PubSubRPC(subscriptions: [Subscription(topic: "t", subscribe: true)])))
        let new = try await connection.newStream(protocols: ["/meshsub/1.2.0"])
        try await waitUntil("the newer stream adopted", seconds: 5) { await serverPubSub.counters().replacedInboundStreams == 1 }
        // Sent on the replaced stream after the newer one was adopted.
        try await old.write(Self.frame(PubSubRPC(messages: [try Self.signedMessage("on the old stream", topic: "t")])))
        try await new.write(Self.frame(PubSubRPC(messages: [try Self.signedMessage("on the new stream", topic: "t")])))
        let received = try await withDeadline(5) {
            var texts: Set<String> = []
            for await message in messages {
                texts.insert(String(decoding: message.data, as: UTF8.self))
                if texts.count == 2 { break }
            }
            return texts
        }
        XCTAssertEqual(received, ["on the old stream", "on the new stream"])
        let oldReset = await isReset(old, within: 5)
        XCTAssertTrue(oldReset, "the replaced stream was not reset after its drain time")
        try await waitUntil("one inbound stream left", seconds: 5) { await serverPubSub.inboundUsage().streams == 1 }
        await client.close()
        await serverPubSub.stop()
        await server.close()
    }

    /// RPCs in transit share a budget: one that does not fit is refused (its
    /// stream reset), and the budget is back once the others end.
    func testRPCsInTransitShareABudget() async throws {
        let (server, serverPubSub, address) = try await makeNode { configuration in
            configuration.maxPendingRPCBytes = 500_000
        }
        let (first, _) = try await makeTestHost(group: group)
        let (second, _) = try await makeTestHost(group: group)
        let firstStream = try await startIncompleteRPC(
            on: try await first.connect(address), announced: 400_000, sent: 1000)
        try await waitUntil("the first RPC reserved its bytes", seconds: 5) {
            await serverPubSub.inboundUsage().pendingRPCBytes == 400_000
        }
        let secondStream = try await startIncompleteRPC(
            on: try await second.connect(address), announced: 400_000, sent: 1000)
        let secondReset = await isReset(secondStream, within: 5)
        XCTAssertTrue(secondReset, "an RPC over the budget was accepted")
        let refused = await serverPubSub.counters().refusedOverRPCBudget
        XCTAssertEqual(refused, 1)
        firstStream.reset()
        try await waitUntil("budget released", seconds: 5) { await serverPubSub.inboundUsage().pendingRPCBytes == 0 }
        try await assertServesHonestPeer(server, serverPubSub, address)
        await first.close()
        await second.close()
        await serverPubSub.stop()
        await server.close()
    }

    /// RPCs in transit reserve in the host's memory budget too (their bytes
    /// left the stream's window): one that does not fit the peer's share is
    /// refused, and what was reserved goes back when the stream ends.
    func testRPCsInTransitReserveHostMemory() async throws {
        // 1 376 000 bytes per peer: a window and the largest RPC (maxRPCSize, 1 114 112) do not fit.
        var limits = HostLimits()
        limits.maxMemoryPerPeer = 1_376_000
        let (server, serverPubSub, address) = try await makeNode(limits: limits)
        let budget = try XCTUnwrap(server.upgrader.memoryBudget)
        let (first, _) = try await makeTestHost(group: group)
        let (second, _) = try await makeTestHost(group: group)
        let firstConnection = try await first.connect(address)
        let secondConnection = try await second.connect(address)
        // What the connection holds once the streams of its start have ended:
        // identify both ways, and our pubsub stream, which `first` refuses.
        let serverSide = try await waitFor("the server's connection to the first peer") {
            server.connection(to: first.localPeer)
        }
        try await waitUntil("the streams of the connection's start ended", seconds: 5) {
            let identified =
                !(server.peerStore.info(first.localPeer)?.protocols.isEmpty ?? true)
                && !(first.peerStore.info(server.localPeer)?.protocols.isEmpty ?? true)
            guard identified else { return false }
            return try await serverSide.streamCount() == 0
        }
        let baseline = budget.used(by: first.localPeer)
        let window = 256 * 1024
        let firstStream = try await startIncompleteRPC(on: firstConnection, announced: 800_000, sent: 1000)
        try await waitUntil("the RPC reserved its bytes in the host's budget", seconds: 5) {
            budget.used(by: first.localPeer) == baseline + window + 800_000
        }
        let secondStream = try await startIncompleteRPC(on: secondConnection, announced: 1_114_000, sent: 1000)
        let secondReset = await isReset(secondStream, within: 5)
        XCTAssertTrue(secondReset, "an RPC over the peer's memory share was accepted")
        let refused = await serverPubSub.counters().refusedOverRPCBudget
        XCTAssertEqual(refused, 1)
        firstStream.reset()
        try await waitUntil("memory released", seconds: 5) { budget.used(by: first.localPeer) == baseline }
        try await assertServesHonestPeer(server, serverPubSub, address)
        await first.close()
        await second.close()
        await serverPubSub.stop()
        await server.close()
    }

    /// Issue 25, row 2: peer ids at five addresses fill the host's memory
    /// budget with idle streams; a newcomer still joins the topic (the flood's
    /// idle streams are reclaimed for it), and the streams of the honest peer
    /// already in the mesh, idle between messages, are not what is reclaimed.
    func testAnIdleStreamFloodTakesNoHonestPeersPubSubStream() async throws {
        var limits = HostLimits()
        limits.maxMemory = 32 << 20
        limits.maxMemoryPerPeer = 4 << 20
        limits.limitLoopback = true
        limits.reclaimIdleStreamsAfter = .seconds(2)
        let (server, serverPubSub, address) = try await makeNode(limits: limits)
        try await withDeadline(120) { [group] in
            let budget = try XCTUnwrap(server.upgrader.memoryBudget)
            var inbox = await serverPubSub.subscribe("lobby").makeAsyncIterator()
            func host(at ip: String) async throws -> Libp2pHost {
                try await makeTestHost(
                    group: group, transports: [TCPTransport(group: group, reusePort: true)],
                    listen: Multiaddr("/ip4/\(ip)/tcp/0")
                ).0
            }
            func pubsub(at ip: String) async throws -> (Libp2pHost, PubSubService) {
                let node = try await host(at: ip)
                var configuration = PubSubConfiguration()
                configuration.heartbeatInterval = .milliseconds(200)
                let service = try PubSubService(host: node, configuration: configuration)
                service.start()
                _ = await service.subscribe("lobby")
                _ = try await node.connect(address)
                try await waitForEachOther(serverPubSub, server.localPeer, service, node.localPeer, on: "lobby", "\(ip) joined")
                return (node, service)
            }
            let (honest, honestPubSub) = try await pubsub(at: "127.0.0.40")
            // 5 addresses, 2 peer ids each, 16 idle ping streams each: more than the budget holds.
            var attackers: [Libp2pHost] = []
            var held: [MuxedStream] = []
            for index in 0..<10 {
                let attacker = try await host(at: "127.0.0.\(2 + index % 5)")
                attackers.append(attacker)
                let connection = try await attacker.connect(address)
                for _ in 0..<16 {
                    if let stream = try? await connection.newStream(protocols: ["/ipfs/ping/1.0.0"]) { held.append(stream) }
                }
            }
            let idleSince = ContinuousClock.now
            XCTAssertGreaterThan(server.limitCounters.transport[.memory(.total), default: 0], 0, "the budget was not filled")
            try await Task.sleep(until: idleSince + .milliseconds(2500))

            let (newcomer, newcomerPubSub) = try await pubsub(at: "127.0.0.50")
            try await newcomerPubSub.publish("lobby", data: Array("newcomer here".utf8))
            let first = try await nextMessage(&inbox)
            XCTAssertEqual(String(decoding: first.data, as: UTF8.self), "newcomer here")
            try await honestPubSub.publish("lobby", data: Array("still here".utf8))
            let second = try await nextMessage(&inbox)
            XCTAssertEqual(String(decoding: second.data, as: UTF8.self), "still here")
            XCTAssertGreaterThan(budget.reclaims, 0)
            XCTAssertEqual(budget.reclaims(of: honest.localPeer), 0, "an honest peer's stream was reclaimed")

            for stream in held { stream.reset() }
            await newcomerPubSub.stop()
            await honestPubSub.stop()
            await newcomer.close()
            await honest.close()
            for attacker in attackers { await attacker.close() }
            await serverPubSub.stop()
            await server.close()
        }
    }

    /// Found 6 of issue 14: a graylisted peer stayed connected; now it is
    /// disconnected once graylisted for `graylistDisconnectAfter`.
    func testGraylistedPeerIsDisconnected() async throws {
        let (attacker, attackerPubSub, _) = try await makeNode()
        let attackerPeer = attacker.localPeer
        let (server, serverPubSub, address) = try await makeNode { configuration in
            configuration.graylistDisconnectAfter = .seconds(1)
            configuration.scoreParameters.appSpecificScore = { $0 == attackerPeer ? -1000 : 0 }
        }
        _ = try await attacker.connect(address)
        try await waitUntil("the graylisted peer was disconnected", seconds: 10) {
            let disconnects = await serverPubSub.counters().graylistDisconnects
            return server.connections.allSatisfy { $0.remotePeer != attackerPeer } && disconnects >= 1
        }
        try await assertServesHonestPeer(server, serverPubSub, address)
        await attackerPubSub.stop()
        await attacker.close()
        await serverPubSub.stop()
        await server.close()
    }

    /// An honest node joins the server's topic and its message arrives.
    func assertServesHonestPeer(_ server: Libp2pHost, _ serverPubSub: PubSubService, _ address: Multiaddr) async throws {
        let (honest, honestPubSub, _) = try await makeNode()
        var inbox = await serverPubSub.subscribe("lobby").makeAsyncIterator()
        _ = await honestPubSub.subscribe("lobby")
        _ = try await honest.connect(address)
        try await waitForEachOther(
            serverPubSub, server.localPeer, honestPubSub, honest.localPeer, on: "lobby", "honest peer joined")
        try await honestPubSub.publish("lobby", data: Array("still here".utf8))
        let message = try await nextMessage(&inbox)
        XCTAssertEqual(String(decoding: message.data, as: UTF8.self), "still here")
        await honestPubSub.stop()
        await honest.close()
    }
}
