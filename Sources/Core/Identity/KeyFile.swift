import Foundation
import Synchronization

/// Errors loading or saving a key file.
public enum KeyFileError: Error, CustomStringConvertible, Sendable {
    case unreadable(path: String, reason: String)
    case malformed(path: String, reason: String)
    case unwritable(path: String, reason: String)
    /// Group or others may read the key (as ssh, we refuse it).
    case tooOpen(path: String, mode: UInt32)
    /// Something other than a regular file is at the path (what, in words).
    case notAFile(path: String, what: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read key file \(path): \(reason)"
        case .malformed(let path, let reason): return "key file \(path) is not a libp2p private key: \(reason)"
        case .unwritable(let path, let reason): return "cannot write key file \(path): \(reason)"
        case .tooOpen(let path, let mode):
            return "key file \(path) has permissions \(String(mode, radix: 8)): others can read it, so it is not used "
                + "(run: chmod 600 \(path))"
        case .notAFile(let path, let what): return "key file \(path) is \(what), not a key file"
        }
    }
}

/// The node's identity on disk: the protobuf `PrivateKey` bytes, mode 0600.
public enum KeyFile {
    /// `$XDG_CONFIG_HOME/p2pchat/identity.key`, or `~/.config/p2pchat/identity.key`.
    public static var defaultPath: String {
        let environment = ProcessInfo.processInfo.environment
        let base: String
        if let xdg = environment["XDG_CONFIG_HOME"], !xdg.isEmpty {
            base = xdg
        } else {
            base = (environment["HOME"] ?? NSHomeDirectory()) + "/.config"
        }
        return base + "/p2pchat/identity.key"
    }

    /// Largest key file we read (RSA 8192 private keys are under 5 KiB).
    static let maxSize = 16 * 1024

    /// What is at `path` (following a symbolic link), checked before reading:
    /// a regular file that only its owner can read.
    static func checkKeyFile(path: String) throws {
        var link = stat()
        guard lstat(path, &link) == 0 else {
            throw KeyFileError.unreadable(path: path, reason: String(cString: strerror(errno)))
        }
        var target = stat()
        guard stat(path, &target) == 0 else {
            let destination = (try? FileManager.default.destinationOfSymbolicLink(atPath: path)) ?? "?"
            throw KeyFileError.notAFile(
                path: path, what: "a symbolic link to \(destination), which does not exist (create the key there or remove the link)")
        }
        switch target.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw KeyFileError.notAFile(path: path, what: "a directory")
        case S_IFIFO: throw KeyFileError.notAFile(path: path, what: "a FIFO (named pipe)")
        case S_IFSOCK: throw KeyFileError.notAFile(path: path, what: "a socket")
        case S_IFCHR, S_IFBLK: throw KeyFileError.notAFile(path: path, what: "a device")
        default: throw KeyFileError.notAFile(path: path, what: "not a regular file")
        }
        let mode = UInt32(target.st_mode) & 0o777
        guard mode & 0o077 == 0 else { throw KeyFileError.tooOpen(path: path, mode: mode) }
    }

    public static func load(path: String) throws -> PrivateKey {
        try checkKeyFile(path: path)
        let data: Data
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            if let size = attributes[.size] as? Int, size > maxSize {
                throw KeyFileError.malformed(path: path, reason: "\(size) bytes is too large")
            }
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch let error as KeyFileError {
            throw error
        } catch {
            throw KeyFileError.unreadable(path: path, reason: error.localizedDescription)
        }
        do {
            return try PrivateKey(marshaled: Array(data))
        } catch {
            throw KeyFileError.malformed(path: path, reason: "\(error)")
        }
    }

    /// Writes atomically (temporary file with mode 0600, then rename); creates
    /// the directory with mode 0700 if needed.
    public static func save(_ key: PrivateKey, path: String) throws {
        let url = URL(fileURLWithPath: path)
        let directory = url.deletingLastPathComponent().path
        do {
            try FileManager.default.createDirectory(
                atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw KeyFileError.unwritable(path: path, reason: error.localizedDescription)
        }
        let temporary = path + ".tmp-\(getpid())"
        let bytes = key.marshal()
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_EXCL, 0o600)
        guard fd >= 0 else {
            throw KeyFileError.unwritable(path: path, reason: String(cString: strerror(errno)))
        }
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let synced = fsync(fd)
        close(fd)
        guard written == bytes.count, synced == 0, rename(temporary, path) == 0 else {
            let reason = String(cString: strerror(errno))
            unlink(temporary)
            throw KeyFileError.unwritable(path: path, reason: reason)
        }
    }

    /// Loads the key at `path`, or creates a new Ed25519 key there if there is no file.
    /// Anything at the path, a dangling symbolic link included, is loaded (and
    /// refused with a reason if it is not a private key file), never replaced.
    public static func loadOrCreate(path: String) throws -> PrivateKey {
        var link = stat()
        if lstat(path, &link) == 0 {
            return try load(path: path)
        }
        let key = PrivateKey.generateEd25519()
        // Never over another process's new key: two first runs at once both end up with the file's key.
        guard try saveUnlessPresent(key, path: path) else { return try load(path: path) }
        return key
    }

    /// As `save`, but false (and nothing written) when a file appeared at `path` meanwhile.
    static func saveUnlessPresent(_ key: PrivateKey, path: String) throws -> Bool {
        let temporary = path + ".tmp-\(getpid())"
        try save(key, path: temporary)
        defer { unlink(temporary) }
        // link(2), unlike rename(2), fails when the destination exists.
        guard link(temporary, path) == 0 else {
            if errno == EEXIST { return false }
            throw KeyFileError.unwritable(path: path, reason: String(cString: strerror(errno)))
        }
        return true
    }

    /// The key at `path` (created if missing, as `loadOrCreate`) with the file
    /// locked for this process (`flock`), or, when another process holds the
    /// lock, who: two nodes with one identity reach nobody (each peer takes
    /// one for the other), so the caller should run with another key.
    public static func claim(path: String) throws -> KeyFileClaim {
        let key = try loadOrCreate(path: path)
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw KeyFileError.unreadable(path: path, reason: String(cString: strerror(errno))) }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let failure = errno
            let holder = lockHolder(fd)
            close(fd)
            guard failure == EWOULDBLOCK else {
                throw KeyFileError.unreadable(path: path, reason: "cannot lock: \(String(cString: strerror(failure)))")
            }
            return .inUse(path: path, pid: holder)
        }
        return .claimed(key, KeyFileLock(fd: fd))
    }

    /// The process holding a `flock` on the file open at `fd`, from
    /// /proc/locks (Linux; nil elsewhere, or when it is not listed).
    static func lockHolder(_ fd: Int32) -> Int32? {
        var info = stat()
        guard fstat(fd, &info) == 0, let table = try? String(contentsOfFile: "/proc/locks", encoding: .utf8) else {
            return nil
        }
        let device = UInt64(info.st_dev)
        let major = ((device >> 8) & 0xfff) | ((device >> 32) & ~0xfff)
        let minor = (device & 0xff) | ((device >> 12) & ~0xff)
        let file = String(format: "%02llx:%02llx:%llu", major, minor, UInt64(info.st_ino))
        // "1: FLOCK  ADVISORY  WRITE 11859 fe:00:16221522 0 EOF"
        for line in table.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 6, fields[1] == "FLOCK", fields[5] == file, let pid = Int32(fields[4]) else { continue }
            return pid
        }
        return nil
    }
}

/// What `KeyFile.claim` found.
public enum KeyFileClaim: Sendable {
    /// The key, its file locked by this process until `lock.release()` or the process ends.
    case claimed(PrivateKey, KeyFileLock)
    /// Another process (`pid`, when the system tells) holds the file's lock.
    case inUse(path: String, pid: Int32?)
}

/// The lock on an identity file. It is not released when this object goes
/// away: it lasts for the life of the process unless `release()` is called.
public final class KeyFileLock: Sendable {
    private let fd: Mutex<Int32>

    init(fd: Int32) {
        self.fd = Mutex(fd)
    }

    /// Unlocks the file (closing the descriptor that holds the lock).
    public func release() {
        fd.withLock { fd in
            if fd >= 0 { close(fd) }
            fd = -1
        }
    }
}
