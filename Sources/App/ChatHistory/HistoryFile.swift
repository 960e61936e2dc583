import Foundation
import Multiformats
import PubSub
import Synchronization

/// The history on disk: records of an unsigned-varint length, then the
/// receive time (milliseconds since 1970, 8 bytes big-endian) and the message
/// as pubsub carries it. Appended as messages arrive (through one handle kept
/// open, see `HistoryAppender`), rewritten with what is kept at each start.
struct HistoryFile: Sendable {
    let path: String
    /// Larger files are not read (a history never grows that big by itself).
    static let maxFileSize = 256 * 1024 * 1024

    /// The verified records, oldest first; a missing file is an empty history.
    func load(maxMessageSize: Int) throws(HistoryError) -> [(PubSubMessage, Date)] {
        guard FileManager.default.fileExists(atPath: path) else { return [] }
        let data: Data
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            guard attributes[.type] as? FileAttributeType == .typeRegular else {
                throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "not a regular file"])
            }
            guard (attributes[.size] as? NSNumber)?.intValue ?? 0 <= Self.maxFileSize else {
                throw CocoaError(.fileReadTooLarge)
            }
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw .file(path: path, underlying: error)
        }
        return Self.decode(Array(data), maxMessageSize: maxMessageSize)
    }

    /// Records of `bytes` that decode and verify; a truncated tail (a write
    /// cut short) and bad records are skipped.
    static func decode(_ bytes: [UInt8], maxMessageSize: Int) -> [(PubSubMessage, Date)] {
        var records: [(PubSubMessage, Date)] = []
        var offset = 0
        while offset < bytes.count {
            guard let (length, size) = try? Varint.decode(bytes[offset...]), length >= 8,
                length <= UInt64(maxMessageSize + 64 * 1024), offset + size + Int(length) <= bytes.count
            else { break }
            let start = offset + size
            let millis = bytes[start..<start + 8].reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
            let wire = Array(bytes[(start + 8)..<(start + Int(length))])
            if let message = try? PubSubMessage.verified(wire: wire, maxSize: maxMessageSize, receivedFrom: nil) {
                records.append((message, Date(timeIntervalSince1970: Double(millis) / 1000)))
            }
            offset = start + Int(length)
        }
        return records
    }

    static func encode(_ message: PubSubMessage, at time: Date) -> [UInt8] {
        let wire = message.wireBytes
        var record = Varint.encode(UInt64(8 + wire.count))
        let millis = UInt64(max(0, time.timeIntervalSince1970 * 1000))
        for shift in stride(from: 56, through: 0, by: -8) { record.append(UInt8(truncatingIfNeeded: millis >> UInt64(shift))) }
        return record + wire
    }

    /// Opens the file for appending records (creating it, owner-only, if missing).
    func openForAppending() throws(HistoryError) -> HistoryAppender {
        HistoryAppender(path: path, handle: try openDescriptor())
    }

    /// Replaces the file with the store's messages (atomically); returns its size.
    @discardableResult
    func rewrite(_ store: HistoryStore) throws(HistoryError) -> Int {
        do {
            var bytes: [UInt8] = []
            for entry in store.allEntries { bytes += Self.encode(entry.message, at: entry.receivedAt) }
            try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
            return bytes.count
        } catch {
            throw .file(path: path, underlying: error)
        }
    }

    /// Opens the file for appending (creating it, owner-only, if missing).
    func openDescriptor() throws(HistoryError) -> FileHandle {
        let descriptor = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else {
            throw .file(path: path, underlying: POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO))
        }
        return FileHandle(fileDescriptor: descriptor, closeOnDealloc: true)
    }
}

/// The history file open for appending, from the service's start to its
/// `close` (one open per session, not per message). Appends are serialized, so
/// records from concurrent writers never interleave.
final class HistoryAppender: Sendable {
    let path: String
    /// Nil once closed.
    private let handle: Mutex<FileHandle?>

    init(path: String, handle: FileHandle) {
        self.path = path
        self.handle = Mutex(handle)
    }

    /// Appends one record; returns its bytes (none when the appender is closed).
    @discardableResult
    func append(_ message: PubSubMessage, at time: Date) throws(HistoryError) -> Int {
        let record = Data(HistoryFile.encode(message, at: time))
        let path = self.path
        return try handle.withLock { handle throws(HistoryError) -> Int in
            guard let handle else { return 0 }
            do { try handle.write(contentsOf: record) } catch { throw .file(path: path, underlying: error) }
            return record.count
        }
    }

    /// Replaces the file with what the store keeps (atomically; `store` is
    /// read with the appends held, so none is lost between), and appends to
    /// the new file from now on. Returns the new file's size (nil when closed).
    func rewrite(with store: () -> HistoryStore) throws(HistoryError) -> Int? {
        let file = HistoryFile(path: path)
        return try handle.withLock { handle throws(HistoryError) -> Int? in
            guard let old = handle else { return nil }
            let size = try file.rewrite(store())
            handle = try file.openDescriptor()
            try? old.close()
            return size
        }
    }

    func close() {
        let closing = handle.withLock { handle in
            defer { handle = nil }
            return handle
        }
        try? closing?.close()
    }
}
