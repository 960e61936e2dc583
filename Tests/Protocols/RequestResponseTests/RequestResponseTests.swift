import Host
import Identity
import Multiformats
import NIOCore
import NIOPosix
@testable import RequestResponse
import SwiftProtobuf
import Synchronization
import TestSupport
import Transport
import XCTest

/// Request-response between two hosts on the in-memory transport.
final class RequestResponseTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    static let protocolID = "/p2pchat/test-rr/1.0.0"
    var protocolID: String { Self.protocolID }

    /// A responder and a requester connected to it.
    func pair() async throws -> (responder: Libp2pHost, requester: Libp2pHost) {
        let (responder, requester) = try await makeConnectedMemoryHosts(group: group)
        return (responder, requester)
    }

    func close(_ hosts: Libp2pHost...) async {
        for host in hosts { await host.close() }
    }

    func testBytesRoundTripAndManyConcurrentRequests() async throws {
        let (responder, requester) = try await pair()
        RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec()).serve { request, context in
            XCTAssertEqual(context.protocolID, "/p2pchat/test-rr/1.0.0")
            return Array(request.reversed()) + Array(context.peer.bytes.prefix(2))
        }
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec())
        let peer = responder.localPeer
        let requesterID = Array(requester.localPeer.bytes.prefix(2))
        try await withDeadline(30) {
            let response = try await client.send([1, 2, 3], to: peer)
            XCTAssertEqual(response, [3, 2, 1] + requesterID)
            // Empty requests and a large one.
            let empty = try await client.send([], to: peer)
            XCTAssertEqual(empty, requesterID)
            let large = patternBytes(count: 900 * 1024, seed: 3)
            let largeResponse = try await client.send(large, to: peer)
            XCTAssertEqual(largeResponse, large.reversed() + requesterID)
            // Concurrent requests each get their own response.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<12 {
                    group.addTask {
                        let reply = try await client.send([UInt8(index)], to: peer)
                        XCTAssertEqual(reply, [UInt8(index)] + requesterID)
                    }
                }
                try await group.waitForAll()
            }
        }
        await close(responder, requester)
    }

    func testProtobufCodec() async throws {
        let (responder, requester) = try await pair()
        typealias Codec = ProtobufCodec<Google_Protobuf_StringValue, Google_Protobuf_UInt64Value>
        RequestResponse(host: responder, protocols: [protocolID], codec: Codec()).serve { request, _ in
            Google_Protobuf_UInt64Value(UInt64(request.value.utf8.count))
        }
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: Codec())
        let peer = responder.localPeer
        try await withDeadline(30) {
            let count = try await client.send(Google_Protobuf_StringValue("héllo"), to: peer)
            XCTAssertEqual(count.value, 6)
        }
        await close(responder, requester)
    }

    func testUnsupportedProtocolIsTypedAndSecondProtocolIsTried() async throws {
        let (responder, requester) = try await pair()
        RequestResponse(host: responder, protocols: ["/p2pchat/test-rr/2.0.0"], codec: BytesCodec()).serve { request, _ in
            request
        }
        let peer = responder.localPeer
        try await withDeadline(30) {
            let old = RequestResponse(host: requester, protocols: [Self.protocolID], codec: BytesCodec())
            do {
                _ = try await old.send([1], to: peer)
                XCTFail("a protocol the peer does not speak was accepted")
            } catch let error as RequestResponseError {
                guard case .unsupportedProtocols(let protocols, _) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(protocols, [Self.protocolID])
            }
            // Offered in order: the first the peer speaks wins.
            let both = RequestResponse(
                host: requester, protocols: [Self.protocolID, "/p2pchat/test-rr/2.0.0"], codec: BytesCodec())
            let echoed = try await both.send([9], to: peer)
            XCTAssertEqual(echoed, [9])
        }
        await close(responder, requester)
    }

    func testTimeoutEndsTheRequestAndTheConnectionStillServes() async throws {
        let (responder, requester) = try await pair()
        RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec()).serve { request, _ in
            // [0] stalls (until the responder's own 10 s limit cancels it).
            if request == [0] { try await Task.sleep(for: .seconds(60)) }
            return request
        }
        var configuration = RequestResponseConfiguration()
        configuration.timeout = .milliseconds(500)
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec(), configuration: configuration)
        let peer = responder.localPeer
        try await withDeadline(30) {
            let start = ContinuousClock.now
            do {
                _ = try await client.send([0], to: peer)
                XCTFail("a stalled request returned")
            } catch let error as RequestResponseError {
                guard case .timeout(let seconds) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(seconds, 0.5)
            }
            XCTAssertLessThan(ContinuousClock.now - start, .seconds(5))
            let reply = try await client.send([7], to: peer)
            XCTAssertEqual(reply, [7])
        }
        await close(responder, requester)
    }

    func testSizeLimitsOnBothSides() async throws {
        let (responder, requester) = try await pair()
        var small = RequestResponseConfiguration()
        small.maxRequestSize = 1000
        RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec(), configuration: small).serve {
            request, _ in
            [UInt8](repeating: 1, count: Int(request.first ?? 0) * 1000)
        }
        var configuration = RequestResponseConfiguration()
        configuration.maxResponseSize = 10_000
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec(), configuration: configuration)
        var unlimited = RequestResponseConfiguration()
        unlimited.maxRequestSize = 1 << 20
        let bigSender = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec(), configuration: unlimited)
        let peer = responder.localPeer
        try await withDeadline(30) {
            // Our own limit: never sent.
            var tooBig = RequestResponseConfiguration()
            tooBig.maxRequestSize = 10
            let limited = RequestResponse(host: requester, protocols: [Self.protocolID], codec: BytesCodec(), configuration: tooBig)
            do {
                _ = try await limited.send([UInt8](repeating: 0, count: 11), to: peer)
                XCTFail("an oversized request was sent")
            } catch let error as RequestResponseError {
                guard case .requestTooLarge(11, 10) = error else { return XCTFail("\(error)") }
            }
            // The responder's limit: it resets.
            do {
                _ = try await bigSender.send([UInt8](repeating: 0, count: 1001), to: peer)
                XCTFail("an oversized request was served")
            } catch let error as RequestResponseError {
                guard case .reset = error else { return XCTFail("\(error)") }
            }
            // Our response limit: refused by its announced length.
            do {
                _ = try await client.send([11], to: peer)
                XCTFail("an oversized response was accepted")
            } catch let error as RequestResponseError {
                guard case .responseTooLarge(let size, 10_000) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(size, 11_000)
            }
            let fits = try await client.send([10], to: peer)
            XCTAssertEqual(fits.count, 10_000)
        }
        await close(responder, requester)
    }

    func testHandlerFailureAndGarbageRequestsReset() async throws {
        let (responder, requester) = try await pair()
        struct Refused: Error {}
        RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec()).serve { request, _ in
            if request == [0] { throw Refused() }
            return request
        }
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec())
        let peer = responder.localPeer
        try await withDeadline(30) {
            do {
                _ = try await client.send([0], to: peer)
                XCTFail("a failed handler produced a response")
            } catch let error as RequestResponseError {
                guard case .reset = error else { return XCTFail("\(error)") }
            }
            // A bad length prefix, a truncated request and random bytes: each stream is reset.
            for garbage: [UInt8] in [[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], [0x05, 1, 2], [0x80]] {
                let stream = try await requester.newStream(to: peer, protocols: [Self.protocolID])
                try await stream.write(garbage)
                try await stream.closeWrite()
                do {
                    while try await stream.read() != nil {}
                    XCTFail("garbage \(garbage) got an answer")
                } catch {
                    XCTAssertEqual("\(error)", "\(TransportError.streamReset)")
                }
            }
            var random = SplitMix(seed: 42)
            for _ in 0..<20 {
                let stream = try await requester.newStream(to: peer, protocols: [Self.protocolID])
                let bytes = (0..<Int(random.next() % 64)).map { _ in UInt8(truncatingIfNeeded: random.next()) }
                try await stream.write(bytes)
                try await stream.closeWrite()
                // Either a well-formed request (answered) or a reset: never a hang.
                _ = try? await { while try await stream.read() != nil {} }()
            }
            let reply = try await client.send([5], to: peer)
            XCTAssertEqual(reply, [5])
        }
        await close(responder, requester)
    }

    func testConcurrencyLimitRefusesTheNewestAndStillServes() async throws {
        let (responder, requester) = try await pair()
        var configuration = RequestResponseConfiguration()
        configuration.maxConcurrentInboundPerPeer = 2
        let release = Gate()
        let started = Counter()
        let server = RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec(), configuration: configuration)
        server.serve { request, _ in
            if request == [1] {
                started.add(1)
                await release.wait()
            }
            return request
        }
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec())
        let peer = responder.localPeer
        try await withDeadline(30) {
            let held = (0..<2).map { _ in Task { try await client.send([1], to: peer) } }
            try await waitUntil("both held requests are being served") { started.value == 2 }
            do {
                _ = try await client.send([2], to: peer)
                XCTFail("a request over the limit was served")
            } catch let error as RequestResponseError {
                guard case .reset = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(server.refusedInbound, 1)
            release.open()
            for task in held { _ = try await task.value }
            let reply = try await client.send([3], to: peer)
            XCTAssertEqual(reply, [3])
        }
        await close(responder, requester)
    }

    func testInboundAdmissionCountsPerPeerAndInTotal() throws {
        let a = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let b = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let c = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        var admission = InboundAdmission(perPeer: 2, total: 3)
        XCTAssertNil(admission.admit(a))
        XCTAssertNil(admission.admit(a))
        XCTAssertEqual(admission.admit(a), .peerLimit(2))
        XCTAssertNil(admission.admit(b))
        XCTAssertEqual(admission.admit(c), .totalLimit(3))
        admission.release(a)
        XCTAssertNil(admission.admit(c))
        XCTAssertEqual(admission.activeTotal, 3)
        // Releasing a peer with nothing admitted changes nothing.
        admission.release(PeerID(publicKey: PrivateKey.generateEd25519().publicKey))
        XCTAssertEqual(admission.activeTotal, 3)
        admission.release(a)
        admission.release(b)
        admission.release(c)
        XCTAssertEqual(admission.activeTotal, 0)
        XCTAssertEqual(admission.active(for: a), 0)
    }
    /// `stop` cancels a handler that is still answering (its requester sees a
    /// reset), and the protocol is refused afterwards.
    func testStopCancelsTheHandlersItRunsAndRefusesNewRequests() async throws {
        let (responder, requester) = try await pair()
        let server = RequestResponse(host: responder, protocols: [protocolID], codec: BytesCodec())
        let (entered, cancelled) = (Gate(), Gate())
        server.serve { _, _ in
            entered.open()
            do {
                try await Task.sleep(for: .seconds(3600))
            } catch {
                cancelled.open()
                throw error
            }
            return []
        }
        let connection = try await requester.connect(to: responder.localPeer)
        try await assertStopEndsService(
            protocolID, over: connection, running: { server.tasks.running },
            block: { stream in
                var request = ByteBuffer()
                request.writeLengthPrefixed([1, 2, 3])
                try await stream.write(request)
                try await stream.closeWrite()
                await entered.wait()
            },
            stop: { await server.stop() })
        XCTAssertTrue(cancelled.isOpen, "the handler ran on after stop")
        let client = RequestResponse(host: requester, protocols: [protocolID], codec: BytesCodec())
        do {
            _ = try await client.send([1], to: responder.localPeer)
            XCTFail("a request was answered after stop")
        } catch {
            // Refused at negotiation.
            if case .unsupportedProtocols = error {} else { XCTFail("\(error)") }
        }
        await close(responder, requester)
    }
}

/// Opens once; waiters before and after pass.
final class Gate: Sendable {
    private let state = Mutex<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    var isOpen: Bool { state.withLock { $0.open } }

    func open() {
        let waiters = state.withLock { state in
            state.open = true
            defer { state.waiters = [] }
            return state.waiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func wait() async {
        await withCheckedContinuation { continuation in
            let passed = state.withLock { state in
                if state.open { return true }
                state.waiters.append(continuation)
                return false
            }
            if passed { continuation.resume() }
        }
    }

}

