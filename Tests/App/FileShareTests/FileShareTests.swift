import Crypto
@testable import FileShare
import Foundation
import Host
import Multiformats
import NIOCore
import NIOPosix
import Synchronization
import TestSupport
import Transport
import XCTest

final class FileShareTests: XCTestCase {
    let group = MultiThreadedEventLoopGroup.singleton
    var directories: [String] = []

    override func tearDown() {
        for directory in directories { try? FileManager.default.removeItem(atPath: directory) }
    }

    func makeDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "p2pchat-files-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        directories.append(path)
        return path
    }

    func writeFile(_ bytes: [UInt8], named name: String, in directory: String) throws -> String {
        let path = (directory as NSString).appendingPathComponent(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// A sender and a receiver on the in-memory transport, connected.
    func pair(configuration: FileShareConfiguration = .init()) async throws
        -> (sender: FileShareService, receiver: FileShareService, senderHost: Libp2pHost, receiverHost: Libp2pHost)
    {
        let (senderHost, receiverHost) = try await makeConnectedMemoryHosts(group: group)
        let sender = FileShareService(host: senderHost, configuration: configuration)
        sender.start()
        return (sender, FileShareService(host: receiverHost, configuration: configuration), senderHost, receiverHost)
    }

    /// `stop` ends an upload that is waiting for its request, refuses both
    /// protocols afterwards, and leaves no task it started running.
    func testStopEndsTheUploadsItServesAndRefusesNewOnes() async throws {
        let (sender, _, senderHost, receiverHost) = try await pair()
        let connection = try XCTUnwrap(receiverHost.connection(to: senderHost.localPeer))
        try await assertStopEndsService(
            FileShareService.protocolID, over: connection,
            refused: [FileShareService.protocolID, FileShareService.universalConnectivityProtocolID],
            running: { sender.tasks.running }, stop: { await sender.stop() })
    }

    func testOfferFetchVerifyAndNeverOverwrite() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = patternBytes(count: 3 * 1024 * 1024 + 17, seed: 1)
        let path = try writeFile(content, named: "report.pdf", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            XCTAssertEqual(offer.name, "report.pdf")
            XCTAssertEqual(offer.size, UInt64(content.count))
            XCTAssertEqual(offer.cid.multihash.digest, Array(SHA256.hash(data: content)))
            XCTAssertEqual(FileOffer(announcement: offer.announcement), offer)
            let updates = Mutex<[FileProgress]>([])
            let saved = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads) { progress in
                updates.withLock { $0.append(progress) }
            }
            XCTAssertEqual(saved, (downloads as NSString).appendingPathComponent("report.pdf"))
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: saved))), content)
            let seen = updates.withLock { $0 }
            XCTAssertEqual(seen.last?.received, UInt64(content.count))
            XCTAssertTrue(seen.allSatisfy { $0.total == UInt64(content.count) })
            XCTAssertEqual(seen.map(\.received), seen.map(\.received).sorted())
            // Fetched again: a new name beside the first, which is untouched.
            let again = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
            XCTAssertEqual(again, (downloads as NSString).appendingPathComponent("report (1).pdf"))
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: again))), content)
            // No partial file is left behind.
            let left = try FileManager.default.contentsOfDirectory(atPath: downloads).sorted()
            XCTAssertEqual(left, ["report (1).pdf", "report.pdf"])
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testResumesAfterTheConnectionDrops() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = patternBytes(count: 8 * 1024 * 1024, seed: 2)
        let path = try writeFile(content, named: "big.bin", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            // The connection is closed once 2 MiB have arrived.
            let dropped = Mutex(false)
            try await assertCutShort("the transfer survived its connection") {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads) { progress in
                    guard progress.received >= 2 * 1024 * 1024, !dropped.withLock({ $0 }) else { return }
                    dropped.withLock { $0 = true }
                    for connection in receiverHost.connections { Task { await connection.close() } }
                }
            }
            let partials = try FileManager.default.contentsOfDirectory(atPath: downloads)
            XCTAssertEqual(partials.count, 1)
            XCTAssertTrue(partials[0].hasSuffix(".part"), "\(partials)")
            // Fetched again (a new connection): it starts where the partial file ends.
            let firstUpdate = Mutex<UInt64?>(nil)
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            let saved = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads) { progress in
                firstUpdate.withLock { if $0 == nil { $0 = progress.received } }
            }
            XCTAssertGreaterThan(try XCTUnwrap(firstUpdate.withLock { $0 }), 2 * 1024 * 1024)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: saved))), content)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: downloads), ["big.bin"])
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testHashMismatchRemovesThePartialFile() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let path = try writeFile(patternBytes(count: 100_000, seed: 3), named: "a.txt", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            // The file changes after it was offered (same size, other bytes).
            try Data(patternBytes(count: 100_000, seed: 4)).write(to: URL(fileURLWithPath: path))
            do {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
                XCTFail("a file that does not match its CID was saved")
            } catch let error as FileTransferError {
                guard case .hashMismatch(let cid) = error else { return XCTFail("\(error)") }
                XCTAssertEqual(cid, offer.cid.text())
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: downloads), [])
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testRefusalsAreTyped() async throws {
        var configuration = FileShareConfiguration()
        configuration.maxDownloadSize = 1000
        let (sender, receiver, senderHost, receiverHost) = try await pair(configuration: configuration)
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let path = try writeFile(patternBytes(count: 500, seed: 5), named: "small", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            // A file never offered.
            let unknown = FileOffer(
                cid: CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: [UInt8](repeating: 7, count: 32))),
                name: "x", size: 10)
            do {
                _ = try await receiver.fetch(unknown, from: senderHost.localPeer, into: downloads)
                XCTFail("a file never offered was sent")
            } catch let error as FileTransferError {
                guard case .notOffered = error else { return XCTFail("\(error)") }
            }
            // A withdrawn offer.
            sender.withdraw(offer.cid)
            do {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
                XCTFail("a withdrawn file was sent")
            } catch let error as FileTransferError {
                guard case .notOffered = error else { return XCTFail("\(error)") }
            }
            // Over our size limit: refused before asking.
            let huge = FileOffer(cid: offer.cid, name: "huge", size: 1001)
            do {
                _ = try await receiver.fetch(huge, from: senderHost.localPeer, into: downloads)
                XCTFail("an oversized file was fetched")
            } catch let error as FileTransferError {
                guard case .tooLarge(1001, 1000) = error else { return XCTFail("\(error)") }
            }
            // An offer whose size is not the sender's.
            _ = try await sender.offer(path: path)
            do {
                _ = try await receiver.fetch(FileOffer(cid: offer.cid, name: "small", size: 400), from: senderHost.localPeer, into: downloads)
                XCTFail("a size mismatch was accepted")
            } catch let error as FileTransferError {
                guard case .sizeMismatch(400, 500) = error else { return XCTFail("\(error)") }
            }
            // Offering a directory or a missing file.
            do {
                _ = try await sender.offer(path: source)
                XCTFail("a directory was offered")
            } catch let error as FileTransferError {
                guard case .file = error else { return XCTFail("\(error)") }
            }
            do {
                _ = try await sender.offer(path: source + "/missing")
                XCTFail("a missing file was offered")
            } catch let error as FileTransferError {
                guard case .file = error else { return XCTFail("\(error)") }
            }
        }
        await senderHost.close()
        await receiverHost.close()
    }

    /// Small chunks, several in flight at both ends: many batches read ahead,
    /// hashed and written out of the receiving task, arrive whole and in order.
    func testManySmallChunksInFlightArriveInOrder() async throws {
        var configuration = FileShareConfiguration()
        configuration.chunkSize = 4096
        configuration.chunksInFlight = 3
        let (sender, receiver, senderHost, receiverHost) = try await pair(configuration: configuration)
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = patternBytes(count: 2 * 1024 * 1024 + 4093, seed: 9)
        let path = try writeFile(content, named: "pieces.bin", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            XCTAssertEqual(offer.cid.multihash.digest, Array(SHA256.hash(data: content)))
            let saved = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: saved))), content)
        }
        await senderHost.close()
        await receiverHost.close()
    }

    /// A file that shrank after it was offered: the sender stops at the short
    /// read (its reads ahead were made at fixed offsets), nothing is saved.
    func testAFileThatShrankIsNotSent() async throws {
        var configuration = FileShareConfiguration()
        configuration.chunkSize = 64 * 1024
        let (sender, receiver, senderHost, receiverHost) = try await pair(configuration: configuration)
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let path = try writeFile(patternBytes(count: 1024 * 1024, seed: 10), named: "shrinks.bin", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            try Data(patternBytes(count: 300_000, seed: 10)).write(to: URL(fileURLWithPath: path))
            try await assertCutShort("a file shorter than its offer was saved") {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
            }
            // Only the partial file (kept for a resume) is left, never the file's name.
            let left = try FileManager.default.contentsOfDirectory(atPath: downloads)
            XCTAssertTrue(left.allSatisfy { $0.hasSuffix(".part") }, "\(left)")
            receiver.discardPartial(fileID: offer.cid.text(), in: downloads)
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testAStalledSenderIsGivenUp() async throws {
        var configuration = FileShareConfiguration()
        configuration.stallTimeout = .milliseconds(500)
        let (_, receiver, senderHost, receiverHost) = try await pair(configuration: configuration)
        // A "sender" that takes the request and never answers.
        senderHost.setStreamHandler(FileShareService.protocolID) { stream in
            while (try? await stream.read()) != nil {}
            try? await Task.sleep(for: .seconds(30))
        }
        let offer = FileOffer(
            cid: CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: [UInt8](repeating: 1, count: 32))),
            name: "x", size: 10)
        let downloads = try makeDirectory()
        try await withDeadline(20) {
            let start = ContinuousClock.now
            do {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
                XCTFail("a silent sender delivered")
            } catch let error as FileTransferError {
                switch error {
                case .truncated, .malformed, .transport: break
                default: XCTFail("\(error)")
                }
            }
            XCTAssertLessThan(ContinuousClock.now - start, .seconds(10))
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testUniversalConnectivityFileExchange() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = patternBytes(count: 700_001, seed: 6)
        let path = try writeFile(content, named: "photo.jpg", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            // On the wire: a length-prefixed file id, then a length-prefixed file.
            let stream = try await receiverHost.newStream(
                to: senderHost.localPeer, protocols: [FileShareService.universalConnectivityProtocolID])
            var request = ByteBuffer()
            request.writeLengthPrefixed(Array(offer.cid.text().utf8))
            try await stream.write(request)
            try await stream.closeWrite()
            var reader = StreamReader(stream)
            let body = try await reader.readLengthPrefixed(maxLength: 1 << 20)
            XCTAssertEqual(body.map { Array($0.readableBytesView) }, content)
            // Through the service, verified against the id (a SHA-256 CID).
            let saved = try await receiver.fetchUniversalConnectivity(
                fileID: offer.cid.text(), from: senderHost.localPeer, into: downloads, name: "photo.jpg")
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: saved))), content)
            // An unknown id is refused with a reset.
            do {
                _ = try await receiver.fetchUniversalConnectivity(fileID: "nope", from: senderHost.localPeer, into: downloads)
                XCTFail("an unknown id was answered")
            } catch let error as FileTransferError {
                guard case .transport = error else { return XCTFail("\(error)") }
            }
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testGarbageRequestsAreRefusedAndServingGoesOn() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let path = try writeFile(patternBytes(count: 1000, seed: 8), named: "ok.bin", in: source)
        try await withDeadline(60) {
            let offer = try await sender.offer(path: path)
            var random = SplitMix(seed: 12)
            let cases: [[UInt8]] = [[0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], [0x80], [0x05, 1], [0x90, 0x4E]]
                + (0..<30).map { _ in (0..<Int(random.next() % 40)).map { _ in UInt8(truncatingIfNeeded: random.next()) } }
            for garbage in cases {
                for protocolID in [FileShareService.protocolID, FileShareService.universalConnectivityProtocolID] {
                    let stream = try await receiverHost.newStream(to: senderHost.localPeer, protocols: [protocolID])
                    try await stream.write(garbage)
                    try await stream.closeWrite()
                    // An answer (a NOT_FOUND header for a request that happens to parse) or a reset: never a file.
                    var total = 0
                    do { while let chunk = try await stream.read() { total += chunk.readableBytes } } catch {}
                    XCTAssertLessThan(total, 64)
                }
            }
            let saved = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
            XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: saved)).count, 1000)
        }
        await senderHost.close()
        await receiverHost.close()
    }

    func testSafeNames() {
        XCTAssertEqual(FileName.safe("../../etc/passwd"), "passwd")
        XCTAssertEqual(FileName.safe("a\u{0}b.txt"), "ab.txt")
        XCTAssertEqual(FileName.safe("\u{1b}[31mred"), "[31mred")
        XCTAssertEqual(FileName.safe("C:\\Windows\\evil.exe"), "evil.exe")
        XCTAssertEqual(FileName.safe(".hidden"), "hidden")
        XCTAssertEqual(FileName.safe("line\nbreak"), "linebreak")
        XCTAssertNil(FileName.safe(".."))
        XCTAssertNil(FileName.safe("."))
        XCTAssertNil(FileName.safe(""))
        XCTAssertEqual(FileName.safe("dir/"), "dir")
        XCTAssertNil(FileName.safe("\u{7}\u{8}"))
        let long = String(repeating: "é", count: 300)
        XCTAssertLessThanOrEqual(FileName.safe(long)?.utf8.count ?? 0, 255)
        XCTAssertGreaterThan(FileName.safe(long)?.utf8.count ?? 0, 250)
    }

    func testAnnouncementsParseOnlyWhatIsSafe() {
        let cid = CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: [UInt8](repeating: 9, count: 32)))
        let offer = FileOffer(cid: cid, name: "my file.txt", size: 42)
        XCTAssertEqual(offer.announcement, "/file \(cid) 42 my file.txt")
        XCTAssertEqual(FileOffer(announcement: offer.announcement), offer)
        XCTAssertNil(FileOffer(announcement: "hello"))
        XCTAssertNil(FileOffer(announcement: "/file"))
        XCTAssertNil(FileOffer(announcement: "/file \(cid) -1 x"))
        XCTAssertNil(FileOffer(announcement: "/file \(cid) 99999999999999999999999 x"))
        XCTAssertNil(FileOffer(announcement: "/file bafkqaaa 1 x"))  // an identity CID: not verifiable
        XCTAssertNil(FileOffer(announcement: "/file \(cid) 1 .."))
        XCTAssertEqual(FileOffer(announcement: "/file \(cid) 1 ../x")?.name, "x")
        XCTAssertNil(FileOffer(announcement: "/file \(cid) 1 " + String(repeating: "x", count: 2000)))
        var random = SplitMix(seed: 11)
        for _ in 0..<2000 {
            let count = Int(random.next() % 80)
            let bytes = (0..<count).map { _ in UInt8(truncatingIfNeeded: random.next()) }
            _ = FileOffer(announcement: "/file " + String(decoding: bytes, as: UTF8.self))
            _ = FileName.safe(String(decoding: bytes, as: UTF8.self))
        }
    }
}

/// `fetch` must fail as a transfer cut short (the connection gone, or fewer
/// bytes than offered); any other outcome fails the test with `otherwise`.
func assertCutShort(
    _ otherwise: String, file: StaticString = #filePath, line: UInt = #line, _ fetch: () async throws -> Void
) async throws {
    do {
        try await fetch()
        XCTFail(otherwise, file: file, line: line)
    } catch let error as FileTransferError {
        switch error {
        case .transport, .truncated: break
        default: XCTFail("\(error)", file: file, line: line)
        }
    }
}
