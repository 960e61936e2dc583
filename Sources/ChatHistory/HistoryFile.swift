import Foundation
import Multiformats
import PubSub

/// The history on disk: records of an unsigned-varint length, then the
/// receive time (milliseconds since 1970, 8 bytes big-endian) and the message
/// as pubsub carries it. Appended as messages arrive, rewritten with what is
/// kept at each start. Small writes, made where the message is recorded.
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

    func append(_ message: PubSubMessage, at time: Date) throws {
        let record = Data(Self.encode(message, at: time))
        if !FileManager.default.fileExists(atPath: path) {
            FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
        }
        guard let handle = FileHandle(forWritingAtPath: path) else {
            throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
        }
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: record)
    }

    /// Replaces the file with the store's messages (atomically).
    func rewrite(_ store: HistoryStore) throws(HistoryError) {
        do {
            var bytes: [UInt8] = []
            for entry in store.allEntries { bytes += Self.encode(entry.message, at: entry.receivedAt) }
            try Data(bytes).write(to: URL(fileURLWithPath: path), options: .atomic)
            try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: path)
        } catch {
            throw .file(path: path, underlying: error)
        }
    }
}
