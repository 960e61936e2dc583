import Foundation
@testable import Identity
import XCTest

/// Found 6 of issue 14: the identity file was loaded whatever its mode, a
/// dangling symbolic link was replaced by a new file, and a directory or FIFO
/// gave Foundation's messages.
final class KeyFileHardeningTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pchat-keyfile-\(UUID())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    func testGroupOrWorldReadableKeyIsRefused() throws {
        let keyPath = path("identity.key")
        let key = try KeyFile.loadOrCreate(path: keyPath)
        chmod(keyPath, 0o644)
        XCTAssertThrowsError(try KeyFile.load(path: keyPath)) { error in
            XCTAssertTrue("\(error)".contains("644"), "\(error)")
            XCTAssertTrue("\(error)".contains("chmod 600"), "\(error)")
        }
        chmod(keyPath, 0o640)
        XCTAssertThrowsError(try KeyFile.loadOrCreate(path: keyPath))
        chmod(keyPath, 0o400)
        XCTAssertEqual(try KeyFile.load(path: keyPath).publicKey, key.publicKey)
    }

    func testDanglingSymlinkIsRefusedAndLeftAlone() throws {
        let linkPath = path("identity.key")
        let missing = path("elsewhere/identity.key")
        XCTAssertEqual(symlink(missing, linkPath), 0)
        XCTAssertThrowsError(try KeyFile.loadOrCreate(path: linkPath)) { error in
            XCTAssertTrue("\(error)".contains("symbolic link"), "\(error)")
            XCTAssertTrue("\(error)".contains(missing), "\(error)")
        }
        // Still the link, and nothing created at its target.
        XCTAssertEqual(try FileManager.default.destinationOfSymbolicLink(atPath: linkPath), missing)
        XCTAssertFalse(FileManager.default.fileExists(atPath: missing))
    }

    func testSymlinkToAKeyIsFollowed() throws {
        let target = path("real.key")
        let key = try KeyFile.loadOrCreate(path: target)
        let linkPath = path("identity.key")
        XCTAssertEqual(symlink(target, linkPath), 0)
        XCTAssertEqual(try KeyFile.loadOrCreate(path: linkPath).publicKey, key.publicKey)
    }

    func testDirectoryAndFIFOAreNamed() throws {
        let directoryPath = path("identity.key")
        try FileManager.default.createDirectory(atPath: directoryPath, withIntermediateDirectories: false)
        XCTAssertThrowsError(try KeyFile.loadOrCreate(path: directoryPath)) { error in
            XCTAssertEqual("\(error)", "key file \(directoryPath) is a directory, not a key file")
        }
        let fifoPath = path("fifo.key")
        XCTAssertEqual(mkfifo(fifoPath, 0o600), 0)
        // Refused without opening it (opening a FIFO would wait for a writer).
        XCTAssertThrowsError(try KeyFile.loadOrCreate(path: fifoPath)) { error in
            XCTAssertEqual("\(error)", "key file \(fifoPath) is a FIFO (named pipe), not a key file")
        }
    }

    /// Issue 22: two chats on one identity file each took the same peer id and
    /// never met. The file is locked by the process that claims it.
    func testAClaimedKeyFileIsInUseForOthersUntilReleased() throws {
        let keyPath = path("identity.key")
        guard case .claimed(let key, let lock) = try KeyFile.claim(path: keyPath) else {
            return XCTFail("a new key file is free")
        }
        // flock locks belong to the open file: a second claim in this process conflicts too.
        guard case .inUse(let inUsePath, let pid) = try KeyFile.claim(path: keyPath) else {
            return XCTFail("a claimed key file is in use")
        }
        XCTAssertEqual(inUsePath, keyPath)
        XCTAssertEqual(pid, getpid(), "the holder's pid, from /proc/locks")
        lock.release()
        guard case .claimed(let again, let second) = try KeyFile.claim(path: keyPath) else {
            return XCTFail("a released key file is free again")
        }
        XCTAssertEqual(again.publicKey, key.publicKey)
        second.release()
    }

    /// Two first runs at once: the one that writes second keeps the file's key, never replaces it.
    func testCreatingAKeyNeverReplacesOneThatAppeared() throws {
        let keyPath = path("identity.key")
        let first = PrivateKey.generateEd25519()
        XCTAssertTrue(try KeyFile.saveUnlessPresent(first, path: keyPath))
        XCTAssertFalse(try KeyFile.saveUnlessPresent(PrivateKey.generateEd25519(), path: keyPath))
        XCTAssertEqual(try KeyFile.load(path: keyPath).publicKey, first.publicKey)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path), ["identity.key"], "no temporary file left")
    }
}
