import Crypto
import Foundation
import Multiformats
import NIOCore
import NIOPosix

/// File reads and writes run on NIO's blocking-I/O thread pool, never on an
/// event loop or the cooperative pool.
final class PooledFile: Sendable {
    // Every use goes through `run`, one operation at a time per transfer (the
    // owner awaits each before the next), so the offset a read seeks to holds.
    private let handle: FileHandle
    let path: String

    private init(handle: FileHandle, path: String) {
        self.handle = handle
        self.path = path
    }

    static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await NIOThreadPool.singleton.runIfActive(body)
    }

    static func openForReading(_ path: String) async throws -> PooledFile {
        try await run {
            guard let handle = FileHandle(forReadingAtPath: path) else {
                throw CocoaError(.fileReadNoSuchFile, userInfo: [NSFilePathErrorKey: path])
            }
            return PooledFile(handle: handle, path: path)
        }
    }

    /// Opens (creating it empty if missing) for writing at its end.
    static func openForAppending(_ path: String) async throws -> PooledFile {
        try await run {
            if !FileManager.default.fileExists(atPath: path) {
                guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
                else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: path]) }
            }
            guard let handle = FileHandle(forWritingAtPath: path) else {
                throw CocoaError(.fileWriteNoPermission, userInfo: [NSFilePathErrorKey: path])
            }
            try handle.seekToEnd()
            return PooledFile(handle: handle, path: path)
        }
    }

    /// Up to `count` bytes from `offset`; fewer (or none) at the end of the file.
    func read(at offset: UInt64, count: Int) async throws -> ByteBuffer {
        try await Self.run { [handle] in
            try handle.seek(toOffset: offset)
            let data = try handle.read(upToCount: count) ?? Data()
            return ByteBuffer(bytes: data)
        }
    }

    /// Writes the buffers at the end of the file, in order.
    func append(_ buffers: [ByteBuffer]) async throws {
        try await Self.run { [handle] in
            for buffer in buffers {
                try buffer.withUnsafeReadableBytes { bytes in
                    guard let base = bytes.baseAddress, bytes.count > 0 else { return }
                    // The buffer outlives the write: no copy into Data.
                    try handle.write(
                        contentsOf: Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: bytes.count, deallocator: .none))
                }
            }
        }
    }

    func close() async {
        _ = try? await Self.run { [handle] in try handle.close() }
    }
}

/// Hands the file's first `length` bytes to `body`, chunk by chunk; throws
/// `truncated` if the file is shorter.
func forEachChunk(
    ofFile path: String, length: UInt64, chunk: Int = 1 << 20, _ body: (ByteBuffer) -> Void
) async throws {
    let file = try await PooledFile.openForReading(path)
    var offset: UInt64 = 0
    do {
        while offset < length {
            let piece = try await file.read(at: offset, count: Int(min(UInt64(chunk), length - offset)))
            guard piece.readableBytes > 0 else { break }
            body(piece)
            offset += UInt64(piece.readableBytes)
        }
    } catch {
        await file.close()
        throw error
    }
    await file.close()
    guard offset == length else { throw FileTransferError.truncated(received: offset, expected: length) }
}

extension CID {
    /// The CIDv1 (raw, sha2-256) of content whose SHA-256 is `digest`.
    static func rawSHA256(_ digest: [UInt8]) -> CID {
        CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: digest))
    }

    /// Whether this CID names content by its SHA-256 (so a download can be verified).
    var sha256Digest: [UInt8]? {
        multihash.code == Multihash.sha2_256 && multihash.digest.count == 32 ? multihash.digest : nil
    }
}
