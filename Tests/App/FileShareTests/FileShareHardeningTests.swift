import Crypto
import FileShare
import Foundation
import Host
import Identity
import Multiformats
import NIOPosix
import Synchronization
import TestSupport
import Transport
import XCTest

/// Issue 25, rows 11 and 12: partial downloads in a shared download
/// directory, what fails leaves nothing behind, and what `--accept-files`
/// may fetch without asking.
extension FileShareTests {
    /// The name the partial file of `offer` had before (`.` + 12 bytes of SHA-256 of the CID's text, hex, + `.part`).
    static func predictableName(of offer: FileOffer) -> String {
        "." + SHA256.hash(data: Array(offer.cid.text().utf8)).prefix(12).map { String(format: "%02x", $0) }.joined() + ".part"
    }

    /// Fetches `offer`, closing the receiver's connections once 1 MiB has
    /// arrived: the fetch fails with the partial file kept.
    static func fetchCutShort(_ offer: FileOffer, receiver: FileShareService, receiverHost: Libp2pHost, from sender: PeerID, into directory: String)
        async throws
    {
        let dropped = Mutex(false)
        do {
            _ = try await receiver.fetch(offer, from: sender, into: directory) { progress in
                guard progress.received >= 1 << 20, !dropped.withLock({ $0 }) else { return }
                dropped.withLock { $0 = true }
                for connection in receiverHost.connections { Task { await connection.close() } }
            }
            XCTFail("the transfer survived its connection")
        } catch {
            switch error {
            case .transport, .truncated: break
            default: XCTFail("\(error)")
            }
        }
    }

    static func partials(in directory: String) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".part") }
    }

    /// Row 12: another user of a shared download directory puts a link where
    /// the partial file of an offer would be (its name was predictable), to a
    /// file outside. Before, the resume followed the link: the victim's bytes
    /// were taken as the start of the download and the rest appended to the
    /// victim (651 bytes in the report; here the 4 KiB victim grew to 4 MiB
    /// before the hash refused the download). Now the name is unpredictable, the
    /// partial file is created with O_EXCL | O_NOFOLLOW and reopened only if
    /// it is the very file we created: the victim is untouched, the download
    /// whole.
    func testAPartialFileIsNeverFollowedOrGuessed() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let shared = try makeDirectory()
        let outside = try makeDirectory()
        let content = patternBytes(count: 4 * 1024 * 1024, seed: 31)
        try Data(content).write(to: URL(fileURLWithPath: source + "/movie.bin"))
        let victim = outside + "/victim.txt"
        // Larger than the link's own size (what the old resume took for the partial file's length).
        let victimBytes = [UInt8](repeating: 0x76, count: 4096)
        try Data(victimBytes).write(to: URL(fileURLWithPath: victim))
        try await withDeadline(60) {
            let offer = try await sender.offer(path: source + "/movie.bin")
            let predicted = shared + "/" + Self.predictableName(of: offer)
            try FileManager.default.createSymbolicLink(atPath: predicted, withDestinationPath: victim)
            let saved = try await receiver.fetch(offer, from: senderHost.localPeer, into: shared)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: saved))), content)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: victim))), victimBytes, "the victim was written")
            XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: predicted), victim, "the link is not ours")
            try FileManager.default.removeItem(atPath: predicted)

            // The partial file of a download cut short: a random name, owner-only.
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            try await Self.fetchCutShort(offer, receiver: receiver, receiverHost: receiverHost, from: senderHost.localPeer, into: shared)
            let names = try Self.partials(in: shared)
            XCTAssertEqual(names.count, 1)
            let name = try XCTUnwrap(names.first)
            XCTAssertNotEqual(name, Self.predictableName(of: offer))
            XCTAssertEqual(name.count, 1 + 12 + 1 + 32 + 5, name)
            let attributes = try FileManager.default.attributesOfItem(atPath: shared + "/" + name)
            XCTAssertEqual((attributes[.posixPermissions] as? NSNumber)?.intValue, 0o600)
            // Seen in the directory and replaced by a link to the victim: the resume does not follow it,
            // starts over in a new partial file, and leaves the link alone.
            try FileManager.default.removeItem(atPath: shared + "/" + name)
            try FileManager.default.createSymbolicLink(atPath: shared + "/" + name, withDestinationPath: victim)
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            let firstUpdate = Mutex<UInt64?>(nil)
            let again = try await receiver.fetch(offer, from: senderHost.localPeer, into: shared) { progress in
                firstUpdate.withLock { if $0 == nil { $0 = progress.received } }
            }
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: again))), content)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: victim))), victimBytes, "the victim was written")
            XCTAssertLessThanOrEqual(try XCTUnwrap(firstUpdate.withLock { $0 }), 1 << 20, "started over")
            XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: shared + "/" + name), victim)
            // A regular file put in its place (another inode) is not taken for ours either, nor removed.
            try FileManager.default.removeItem(atPath: shared + "/" + name)
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            try await Self.fetchCutShort(offer, receiver: receiver, receiverHost: receiverHost, from: senderHost.localPeer, into: shared)
            let second = try XCTUnwrap(try Self.partials(in: shared).first)
            try FileManager.default.removeItem(atPath: shared + "/" + second)
            try Data(content.prefix(1 << 20)).write(to: URL(fileURLWithPath: shared + "/" + second))
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            let third = try await receiver.fetch(offer, from: senderHost.localPeer, into: shared)
            XCTAssertEqual(try Array(Data(contentsOf: URL(fileURLWithPath: third))), content)
            XCTAssertTrue(FileManager.default.fileExists(atPath: shared + "/" + second), "not ours: not removed")
        }
        await senderHost.close()
        await receiverHost.close()
    }

    /// Row 11: a download that fails for good removes its partial file; one
    /// cut short keeps it for a resume until it is given up (`discardPartial`).
    /// Before, a failed download left its `.part` file (a full disk's worth
    /// with enough offers).
    func testFailedDownloadsLeaveNoPartialFile() async throws {
        let (sender, receiver, senderHost, receiverHost) = try await pair()
        let source = try makeDirectory()
        let downloads = try makeDirectory()
        let content = patternBytes(count: 4 * 1024 * 1024, seed: 32)
        try Data(content).write(to: URL(fileURLWithPath: source + "/a.bin"))
        try await withDeadline(60) {
            let offer = try await sender.offer(path: source + "/a.bin")
            try await Self.fetchCutShort(offer, receiver: receiver, receiverHost: receiverHost, from: senderHost.localPeer, into: downloads)
            XCTAssertEqual(try Self.partials(in: downloads).count, 1, "kept for a resume")
            // Withdrawn meanwhile: the resume fails for good, and the partial file goes.
            sender.withdraw(offer.cid)
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            do {
                _ = try await receiver.fetch(offer, from: senderHost.localPeer, into: downloads)
                XCTFail("a withdrawn file was fetched")
            } catch let error as FileTransferError {
                guard case .notOffered = error else { return XCTFail("\(error)") }
            }
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: downloads), [])
            // Cut short, then given up.
            _ = try await sender.offer(path: source + "/a.bin")
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            try await Self.fetchCutShort(offer, receiver: receiver, receiverHost: receiverHost, from: senderHost.localPeer, into: downloads)
            XCTAssertEqual(try Self.partials(in: downloads).count, 1)
            receiver.discardPartial(fileID: offer.cid.text(), in: downloads)
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: downloads), [])
            // A universal-connectivity download has no resume: cut short, nothing is left.
            receiverHost.peerStore.addAddresses(senderHost.listenAddresses, for: senderHost.localPeer)
            let dropped = Mutex(false)
            do {
                _ = try await receiver.fetchUniversalConnectivity(fileID: offer.cid.text(), from: senderHost.localPeer, into: downloads) {
                    progress in
                    guard progress.received >= 1 << 20, !dropped.withLock({ $0 }) else { return }
                    dropped.withLock { $0 = true }
                    for connection in receiverHost.connections { Task { await connection.close() } }
                }
                XCTFail("the transfer survived its connection")
            } catch {}
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: downloads), [])
        }
        await senderHost.close()
        await receiverHost.close()
    }

    /// Row 11: 400 offers of 1 MiB from one peer, as `--accept-files` sees
    /// them: 25 are taken (its share), 2 at a time, the others listed only.
    /// From many peers: 100 files or 1 GiB in all; never below 512 MiB free.
    /// Before, every offer within --max-accept was fetched at once (400 offers
    /// of 1 MiB filled a 256 MiB disk in 2 s).
    /// Why `decision` refused, if it did.
    static func refusal(_ decision: AutoAccept<Int>.Decision) -> AutoAcceptRefusal? {
        if case .refused(let why) = decision { return why }
        return nil
    }

    func testAutoAcceptIsBoundedInCountBytesConcurrencyAndDiskSpace() {
        let attacker = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        var policy = AutoAccept<Int>(limits: AutoAcceptLimits(maxFileSize: 100 << 20))
        var started: [Int] = []
        var queued = 0
        var refusals: [AutoAcceptRefusal] = []
        for index in 0..<400 {
            switch policy.offer(index, size: 1 << 20, from: attacker, freeBytes: 100 << 30) {
            case .start: started.append(index)
            case .queued: queued += 1
            case .refused(let why): refusals.append(why)
            }
        }
        XCTAssertEqual(started, [0, 1], "two at a time")
        XCTAssertEqual(queued, 23)
        XCTAssertEqual(refusals.count, 375)
        XCTAssertEqual(Set(refusals), [.peerFiles(limit: 25)])
        // Each end starts the next, in order, until none waits.
        var order: [Int] = []
        while let next = policy.finished(size: 1 << 20) { order.append(next) }
        XCTAssertEqual(order, Array(2..<25))
        XCTAssertEqual(policy.running, 1)
        XCTAssertNil(policy.finished(size: 1 << 20))
        XCTAssertEqual(policy.running, 0)
        // Large files from one peer: its quarter of the bytes.
        var bytes = AutoAccept<Int>(limits: AutoAcceptLimits(maxFileSize: 100 << 20))
        let accepted = (0..<10).filter { Self.refusal(bytes.offer($0, size: 100 << 20, from: attacker, freeBytes: 100 << 30)) == nil }
        XCTAssertEqual(accepted.count, 2, "256 MiB a peer")
        // Many peers: 100 files in all.
        var many = AutoAccept<Int>(limits: AutoAcceptLimits(maxFileSize: 100 << 20))
        var total = 0
        for index in 0..<400 {
            let peer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
            if case .refused(let why) = many.offer(index, size: 1 << 20, from: peer, freeBytes: 100 << 30) {
                XCTAssertEqual(why, .tooManyFiles(limit: 100))
            } else {
                total += 1
            }
        }
        XCTAssertEqual(total, 100)
        XCTAssertEqual(many.acceptedBytes, 100 << 20)
        // A 256 MiB disk: nothing, since 512 MiB stay free; a larger one fills up to that.
        var small = AutoAccept<Int>(limits: AutoAcceptLimits(maxFileSize: 100 << 20))
        XCTAssertEqual(
            Self.refusal(small.offer(0, size: 1 << 20, from: attacker, freeBytes: 256 << 20)),
            .diskSpace(free: 256 << 20, needed: (1 << 20) + (512 << 20)))
        var disk = AutoAccept<Int>(limits: AutoAcceptLimits(maxFileSize: 100 << 20))
        let fits = (0..<25).filter { Self.refusal(disk.offer($0, size: 1 << 20, from: attacker, freeBytes: (512 + 10) << 20)) == nil }
        XCTAssertEqual(fits.count, 10, "the accepted downloads count against the free space")
        // Over the size, or of unknown size: never without asking.
        XCTAssertEqual(
            Self.refusal(disk.offer(0, size: (100 << 20) + 1, from: attacker, freeBytes: nil)), .tooLarge(size: (100 << 20) + 1, limit: 100 << 20))
        XCTAssertEqual(Self.refusal(disk.offer(0, size: nil, from: attacker, freeBytes: nil)), .sizeUnknown)
    }

    /// Row 11: the chat's list of offers (universal-connectivity ones
    /// included) is bounded in all and per peer, found by key, numbers kept.
    /// Before, it grew by every offer with a linear scan each.
    func testTheOfferListIsBoundedAndIndexed() throws {
        let spammer = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        let honest = PeerID(publicKey: PrivateKey.generateEd25519().publicKey)
        var book = OfferBook<String>()
        let honestNumber = book.add("report.pdf", fileID: "bafy-honest", from: honest)
        let start = ContinuousClock.now
        for index in 0..<100_000 { _ = book.add("x", fileID: "file-\(index)", from: spammer) }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(20), "no scan per offer")
        XCTAssertEqual(book.count, 1 + book.maxPerPeer, "the spammer keeps its newest \(book.maxPerPeer)")
        XCTAssertEqual(book[honestNumber]?.offer, "report.pdf", "the honest offer stays, under its number")
        XCTAssertEqual(book.number(of: "bafy-honest", from: honest), honestNumber)
        XCTAssertNil(book.number(of: "file-0", from: spammer))
        XCTAssertEqual(book.number(of: "file-99999", from: spammer), honestNumber + 100_000)
        // Many peers: the oldest of all go past the total.
        for index in 0..<5000 {
            _ = book.add("y", fileID: "many-\(index)", from: PeerID(publicKey: PrivateKey.generateEd25519().publicKey))
        }
        XCTAssertEqual(book.count, book.maxOffers)
        XCTAssertNil(book[honestNumber])
        XCTAssertEqual(book.all.map(\.number), book.all.map(\.number).sorted())
        book.update(book.all[0].number, to: "z")
        XCTAssertEqual(book.all[0].offer, "z")
    }
}
