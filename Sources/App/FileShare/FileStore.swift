import Crypto
import Foundation
import Multiformats
import NIOCore
import NIOPosix

/// File reads and writes run on NIO's blocking-I/O thread pool, never on an
/// event loop or the cooperative pool.
final class PooledFile: Sendable {
    // Used on the file pool only (`run`, or the `...Now` calls inside it);
    // reads are positional (`pread`), appends go to the end (`O_APPEND`) one
    // batch at a time per transfer, in order.
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

    /// Creates a new partial download in `directory`: a name nobody can
    /// predict (`.<prefix>.<128 random bits>.part`), created with `O_EXCL |
    /// O_NOFOLLOW` (never an existing file, never through a link), owner-only,
    /// opened for reading and appending.
    static func createPartial(in directory: String, prefix: String) async throws -> (PooledFile, PartialFile) {
        try await run {
            var generator = SystemRandomNumberGenerator()
            let random = (0..<16).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
            let path = (directory as NSString).appendingPathComponent(".\(prefix).\(random).part")
            let descriptor = open(path, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
            guard descriptor >= 0 else { throw POSIXError.current }
            var status = stat()
            guard fstat(descriptor, &status) == 0 else {
                let error = POSIXError.current
                Glibc.close(descriptor)
                throw error
            }
            return (
                PooledFile(handle: FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), path: path),
                PartialFile(path: path, status: status)
            )
        }
    }

    /// Opens `partial` again to resume it, only if its path still names the
    /// very file we created, as we left it (`PartialFile.matches`: not
    /// through a link, `O_NOFOLLOW`; a regular file of one link, ours, on the
    /// same device and inode, of the same size and modification time). Nil
    /// otherwise (it is then not touched).
    static func reopenPartial(_ partial: PartialFile) async throws -> PooledFile? {
        try await run {
            let descriptor = open(partial.path, O_RDWR | O_APPEND | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC)
            guard descriptor >= 0 else { return nil }
            var status = stat()
            guard fstat(descriptor, &status) == 0, partial.matches(status) else {
                Glibc.close(descriptor)
                return nil
            }
            return PooledFile(handle: FileHandle(fileDescriptor: descriptor, closeOnDealloc: true), path: partial.path)
        }
    }

    /// The open file's status (`fstat`).
    func status() async throws -> stat {
        try await Self.run { [handle] in
            var status = stat()
            guard fstat(handle.fileDescriptor, &status) == 0 else { throw POSIXError.current }
            return status
        }
    }

    /// Gives the open file the name `target` (a hard link of this very file,
    /// through `/proc/self/fd`: whatever its partial path names meanwhile);
    /// fails with `EEXIST` rather than replace a file.
    func link(to target: String) async throws {
        try await Self.run { [handle] in
            let source = "/proc/self/fd/\(handle.fileDescriptor)"
            guard linkat(AT_FDCWD, source, AT_FDCWD, target, AT_SYMLINK_FOLLOW) == 0 else { throw POSIXError.current }
        }
    }

    /// Up to `count` bytes from `offset`; fewer (or none) at the end of the file.
    func read(at offset: UInt64, count: Int) async throws -> ByteBuffer {
        try await Self.run { [self] in try readNow(at: offset, count: count) }
    }

    /// `read(at:count:)` on the calling thread (the file pool's): `pread`
    /// straight into the buffer that goes to the stream, no copy through
    /// `Data`. Positional, so reads ahead may run at once.
    func readNow(at offset: UInt64, count: Int) throws -> ByteBuffer {
        guard count > 0 else { return ByteBuffer() }
        var buffer = ByteBufferAllocator().buffer(capacity: count)
        let descriptor = handle.fileDescriptor
        try buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { space throws(POSIXError) -> Int in
            var filled = 0
            while filled < count {
                let got = pread(descriptor, space.baseAddress! + filled, count - filled, off_t(offset) + off_t(filled))
                if got > 0 {
                    filled += got
                } else if got == 0 {
                    break
                } else if errno != EINTR {
                    throw POSIXError.current
                }
            }
            return filled
        }
        return buffer
    }

    /// Writes the buffers at the end of the file, in order.
    func append(_ buffers: [ByteBuffer]) async throws {
        try await Self.run { [self] in
            for buffer in buffers { try appendNow(buffer) }
        }
    }

    /// Writes the buffer's readable bytes at the end of the file, on the
    /// calling thread (the file pool's), straight from the buffer.
    func appendNow(_ buffer: ByteBuffer) throws {
        let descriptor = handle.fileDescriptor
        try buffer.withUnsafeReadableBytes { bytes throws(POSIXError) in
            var done = 0
            while done < bytes.count {
                let written = write(descriptor, bytes.baseAddress! + done, bytes.count - done)
                if written > 0 {
                    done += written
                } else if written < 0, errno != EINTR {
                    throw POSIXError.current
                } else if written == 0 {
                    throw POSIXError(.EIO)
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
    do {
        try await forEachChunk(of: file, length: length, chunk: chunk, body)
    } catch {
        await file.close()
        throw error
    }
    await file.close()
}

/// Hands the open file's first `length` bytes to `body`, chunk by chunk, the
/// next chunk read while `body` takes the current one; throws `truncated` if
/// the file is shorter.
func forEachChunk(
    of file: PooledFile, length: UInt64, chunk: Int = 1 << 20, _ body: (ByteBuffer) -> Void
) async throws {
    func readAhead(_ offset: UInt64) -> Task<ByteBuffer, Error>? {
        guard offset < length else { return nil }
        // Awaited before returning, on success and failure alike.
        return Task { try await file.read(at: offset, count: Int(min(UInt64(chunk), length - offset))) }
    }
    var offset: UInt64 = 0
    var next = readAhead(offset)
    do {
        while let reading = next {
            next = nil
            let piece = try await reading.value
            guard piece.readableBytes > 0 else { break }
            offset += UInt64(piece.readableBytes)
            next = readAhead(offset)
            body(piece)
        }
    } catch {
        if let next { _ = try? await next.value }
        throw error
    }
    guard offset == length else { throw FileTransferError.truncated(received: offset, expected: length) }
}

/// A partial download this process created: its path, and which file that
/// was (device and inode), so that a resume or a removal touches that file
/// only, whatever else the path came to name in a shared directory.
struct PartialFile: Sendable, Hashable {
    let path: String
    let device: UInt64
    let inode: UInt64
    /// Its size and modification time (nanoseconds) when we last closed it:
    /// a file made in its place, even on a reused inode, differs.
    var size: UInt64 = 0
    var modified: Int64 = 0

    init(path: String, status: stat) {
        self.path = path
        device = UInt64(status.st_dev)
        inode = UInt64(status.st_ino)
        size = UInt64(status.st_size)
        modified = Int64(status.st_mtim.tv_sec) * 1_000_000_000 + Int64(status.st_mtim.tv_nsec)
    }

    /// Whether `status` (of a file opened without following links) is this file, as we left it.
    func matches(_ status: stat) -> Bool {
        status.st_mode & S_IFMT == S_IFREG && status.st_nlink == 1 && status.st_uid == geteuid()
            && PartialFile(path: path, status: status) == self
    }

    /// Removes the path if it still names this file (not through a link).
    /// `modifiedSince`: we may have written it since we recorded its size and time.
    func remove(modifiedSince: Bool = false) {
        var status = stat()
        guard lstat(path, &status) == 0, UInt64(status.st_dev) == device, UInt64(status.st_ino) == inode,
            modifiedSince || matches(status)
        else { return }
        unlink(path)
    }
}

extension POSIXError {
    /// The error of the last failed system call (`errno`).
    static var current: POSIXError { POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
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
