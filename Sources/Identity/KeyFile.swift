import Foundation

/// Errors loading or saving a key file.
public enum KeyFileError: Error, CustomStringConvertible, Sendable {
    case unreadable(path: String, reason: String)
    case malformed(path: String, reason: String)
    case unwritable(path: String, reason: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read key file \(path): \(reason)"
        case .malformed(let path, let reason): return "key file \(path) is not a libp2p private key: \(reason)"
        case .unwritable(let path, let reason): return "cannot write key file \(path): \(reason)"
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

    public static func load(path: String) throws -> PrivateKey {
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
    public static func loadOrCreate(path: String) throws -> PrivateKey {
        if FileManager.default.fileExists(atPath: path) {
            return try load(path: path)
        }
        let key = PrivateKey.generateEd25519()
        try save(key, path: path)
        return key
    }
}
