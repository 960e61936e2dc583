import Crypto
import Foundation
import Host
import Identity
import Logging
import Multiformats
import Multistream
import NIOCore
import RequestResponse
import Synchronization
import Transport

/// Limits and timing of file transfers.
public struct FileShareConfiguration: Sendable {
    /// Largest file we download.
    public var maxDownloadSize: UInt64 = 64 * 1024 * 1024 * 1024
    /// Bytes read from a file per write to the stream, and gathered from the
    /// stream per write to a file (each a hop to the file thread pool).
    public var chunkSize = 1024 * 1024
    /// Uploads at once to one peer, and in total; more are refused (`busy`).
    public var maxUploadsPerPeer = 4
    public var maxUploads = 32
    /// Seconds a transfer may go without a byte moving (the request, the
    /// answer's header, or the body) before it is given up.
    public var stallTimeout: Double = 30

    public init() {}
}

/// How far a download is.
public struct FileProgress: Sendable {
    public let received: UInt64
    public let total: UInt64
    /// Average since this attempt started (a resumed download counts only its new bytes).
    public let bytesPerSecond: Double
}

/// Files offered to peers and fetched from them, each transfer on a stream of
/// its own beside the chat (`/p2pchat/file/1.0.0`: resumable, verified against
/// the offer's CID), and the file exchange of libp2p's universal-connectivity
/// chat (`/universal-connectivity-file/1`: one length-prefixed file id, one
/// length-prefixed file).
public final class FileShareService: Sendable {
    public static let protocolID = "/p2pchat/file/1.0.0"
    public static let universalConnectivityProtocolID = "/universal-connectivity-file/1"
    static let maxRequestLength = 1024

    public let host: Libp2pHost
    public let configuration: FileShareConfiguration
    private let offers = Mutex<[CID: (offer: FileOffer, path: String)]>([:])
    private let uploads: Mutex<InboundAdmission>
    private let logger = Logger(label: "p2pchat.files")

    public init(host: Libp2pHost, configuration: FileShareConfiguration = .init()) {
        self.host = host
        self.configuration = configuration
        uploads = Mutex(InboundAdmission(perPeer: configuration.maxUploadsPerPeer, total: configuration.maxUploads))
    }

    /// Serves the offered files on both protocols.
    public func start() {
        host.setStreamHandler(Self.protocolID) { [self] stream in await self.upload(on: stream, universal: false) }
        host.setStreamHandler(Self.universalConnectivityProtocolID) { [self] stream in
            await self.upload(on: stream, universal: true)
        }
    }

    // MARK: Offering

    /// Offers the file at `path` (hashed now, read again for each transfer).
    public func offer(path: String, name: String? = nil) async throws(FileTransferError) -> FileOffer {
        let proposed = name ?? URL(fileURLWithPath: path).lastPathComponent
        guard let safeName = FileName.safe(proposed) else { throw .unsafeName(proposed) }
        do {
            let attributes = try FileManager.default.attributesOfItem(atPath: path)
            guard attributes[.type] as? FileAttributeType == .typeRegular else {
                throw CocoaError(.fileReadUnknown, userInfo: [NSLocalizedDescriptionKey: "not a regular file"])
            }
            let size = (attributes[.size] as? NSNumber)?.uint64Value ?? 0
            let digest = RunningDigest()
            try await forEachChunk(ofFile: path, length: size) { digest.update([$0]) }
            let offer = FileOffer(cid: .rawSHA256(digest.finalize()), name: safeName, size: size)
            offers.withLock { $0[offer.cid] = (offer, path) }
            return offer
        } catch let error as FileTransferError {
            throw error
        } catch {
            throw .file(path: path, underlying: error)
        }
    }

    public func withdraw(_ cid: CID) {
        offers.withLock { _ = $0.removeValue(forKey: cid) }
    }

    public var offered: [FileOffer] { offers.withLock { $0.values.map(\.offer) } }

    // MARK: Uploading

    private func upload(on stream: MuxedStream, universal: Bool) async {
        let peer = stream.remotePeer
        let watchdog = StallWatchdog(stream: stream, limit: configuration.stallTimeout)
        defer { watchdog.stop() }
        var reader = StreamReader(stream)
        let refusal = uploads.withLock { $0.admit(peer) }
        defer { if refusal == nil { uploads.withLock { $0.release(peer) } } }
        do {
            guard let request = try await reader.readLengthPrefixed(maxLength: Self.maxRequestLength) else {
                return stream.reset()
            }
            let (key, offset): (String, UInt64)
            if universal {
                key = String(decoding: request.readableBytesView, as: UTF8.self)
                offset = 0
            } else {
                let parsed = try FileRequest(serializedBytes: Array(request.readableBytesView))
                (key, offset) = (parsed.cid, parsed.offset)
            }
            let entry = (try? CID(key)).flatMap { cid in offers.withLock { $0[cid] } }
            var header = FileResponse()
            if refusal != nil {
                header.status = .busy
            } else if let entry {
                header.size = entry.offer.size
                header.status = offset > entry.offer.size ? .badOffset : .ok
            } else {
                header.status = .notFound
            }
            if universal {
                // The universal-connectivity exchange has no status: a refusal is a reset.
                guard header.status == .ok, let entry else { return stream.reset() }
                var prefix = ByteBuffer()
                prefix.writeBytes(Varint.encode(entry.offer.size))
                try await stream.write(prefix)
                try await send(entry.path, from: 0, size: entry.offer.size, on: stream, watchdog: watchdog)
            } else {
                var message = ByteBuffer()
                message.writeLengthPrefixed(try header.serializedBytes() as [UInt8])
                try await stream.write(message)
                if header.status == .ok, let entry {
                    try await send(entry.path, from: offset, size: entry.offer.size, on: stream, watchdog: watchdog)
                }
            }
            try await stream.closeWrite()
            await stream.close()
        } catch {
            logger.debug("upload failed", metadata: ["peer": "\(peer)", "error": "\(error)"])
            stream.reset()
        }
    }

    /// Streams the file's bytes `offset..<size`, chunk by chunk (writes wait for the remote's window).
    private func send(_ path: String, from offset: UInt64, size: UInt64, on stream: MuxedStream, watchdog: StallWatchdog)
        async throws
    {
        let file = try await PooledFile.openForReading(path)
        let chunk = UInt64(configuration.chunkSize)
        // The next chunk is read while the current one is written (read ahead by one).
        func readAhead(_ position: UInt64) -> Task<ByteBuffer, Error>? {
            guard position < size else { return nil }
            // Awaited before returning, on success and failure alike.
            return Task { try await file.read(at: position, count: Int(min(chunk, size - position))) }
        }
        var position = offset
        var next = readAhead(position)
        do {
            while let reading = next {
                let piece = try await reading.value
                // The file shrank since it was offered: stop short (the recipient sees a truncated transfer).
                guard piece.readableBytes > 0 else { throw FileTransferError.truncated(received: position, expected: size) }
                position += UInt64(piece.readableBytes)
                next = readAhead(position)
                try await stream.write(piece)
                watchdog.touch()
            }
        } catch {
            if let next { _ = try? await next.value }
            await file.close()
            throw error
        }
        await file.close()
    }

    // MARK: Downloading

    /// Fetches an offered file from `peer` into `directory`, resuming a partial
    /// download of the same file found there, and verifying the whole file
    /// against the offer's CID. Returns the path of the saved file, a new name
    /// in `directory` (never an existing file overwritten).
    public func fetch(
        _ offer: FileOffer, from peer: PeerID, into directory: String,
        progress: @escaping @Sendable (FileProgress) -> Void = { _ in }
    ) async throws(FileTransferError) -> String {
        guard offer.size <= configuration.maxDownloadSize else {
            throw .tooLarge(size: offer.size, limit: configuration.maxDownloadSize)
        }
        guard let digest = offer.cid.sha256Digest else { throw .notOffered(offer.cid.text()) }
        let partial = partialPath(in: directory, key: offer.cid.text())
        var start = partialSize(partial)
        if start > offer.size {
            removeFile(partial)
            start = 0
        }
        let hasher = RunningDigest()
        if start > 0 {
            do {
                try await forEachChunk(ofFile: partial, length: start) { hasher.update([$0]) }
            } catch {
                removeFile(partial)
                start = 0
                hasher.reset()
            }
        }
        var request = FileRequest()
        request.cid = offer.cid.text()
        request.offset = start
        let requestBytes: [UInt8]
        do { requestBytes = try request.serializedBytes() } catch { throw .malformed("\(error)") }
        return try await download(
            from: peer, protocolID: Self.protocolID, request: requestBytes, partial: partial, start: start,
            hasher: hasher, expectedDigest: digest, name: offer.name, directory: directory, progress: progress
        ) { reader in
            guard let bytes = try await reader.readLengthPrefixed(maxLength: Self.maxRequestLength) else {
                throw FileTransferError.malformed("the stream ended before the answer")
            }
            let header: FileResponse
            do { header = try FileResponse(serializedBytes: Array(bytes.readableBytesView)) } catch {
                throw FileTransferError.malformed("\(error)")
            }
            switch header.status {
            case .ok: break
            case .notFound: throw FileTransferError.notOffered(offer.cid.text())
            case .badOffset: throw FileTransferError.badOffset(start)
            case .busy: throw FileTransferError.busy
            case .UNRECOGNIZED(let code): throw FileTransferError.malformed("status \(code)")
            }
            guard header.size == offer.size else { throw FileTransferError.sizeMismatch(offered: offer.size, sent: header.size) }
            return header.size
        }
    }

    /// Fetches a file offered on libp2p's universal-connectivity chat (its
    /// file id, as announced on its file topic). The whole file comes in one
    /// answer (no resume); it is verified when the id is a SHA-256 CID.
    public func fetchUniversalConnectivity(
        fileID: String, from peer: PeerID, into directory: String, name: String? = nil,
        progress: @escaping @Sendable (FileProgress) -> Void = { _ in }
    ) async throws(FileTransferError) -> String {
        guard fileID.utf8.count <= Self.maxRequestLength, let safeName = FileName.safe(name ?? fileID) else {
            throw .unsafeName(name ?? fileID)
        }
        let partial = partialPath(in: directory, key: fileID)
        removeFile(partial)
        let limit = configuration.maxDownloadSize
        return try await download(
            from: peer, protocolID: Self.universalConnectivityProtocolID, request: Array(fileID.utf8), partial: partial,
            start: 0, hasher: RunningDigest(), expectedDigest: (try? CID(fileID))?.sha256Digest, name: safeName,
            directory: directory, progress: progress
        ) { reader in
            guard let size = try await reader.readVarint() else {
                throw FileTransferError.malformed("the stream ended before the file's length")
            }
            guard size <= limit else { throw FileTransferError.tooLarge(size: size, limit: limit) }
            return size
        }
    }

    /// The common download: request, header (`readHeader` returns the file's
    /// whole size), then the body appended to `partial` from `start`.
    private func download(
        from peer: PeerID, protocolID: String, request: [UInt8], partial: String, start: UInt64, hasher digest: RunningDigest,
        expectedDigest: [UInt8]?, name: String, directory: String, progress: @escaping @Sendable (FileProgress) -> Void,
        readHeader: (inout StreamReader) async throws -> UInt64
    ) async throws(FileTransferError) -> String {
        let stream: MuxedStream
        do {
            stream = try await host.newStream(to: peer, protocols: [protocolID])
        } catch {
            throw .transport(underlying: error)
        }
        let watchdog = StallWatchdog(stream: stream, limit: configuration.stallTimeout)
        defer { watchdog.stop() }
        var received = start
        var total: UInt64 = 0
        let began = ContinuousClock.now
        do {
            var message = ByteBuffer()
            message.writeLengthPrefixed(request)
            try await stream.write(message)
            try await stream.closeWrite()
            var reader = StreamReader(stream)
            total = try await readHeader(&reader)
            watchdog.touch()
            let file: PooledFile
            do { file = try await PooledFile.openForAppending(partial) } catch {
                throw FileTransferError.file(path: partial, underlying: error)
            }
            // Chunks are gathered into batches of `chunkSize`, each hashed and
            // written on the file pool while the next is gathered (one at a
            // time, in order), so the receiving task only moves buffers.
            var gathered: [ByteBuffer] = []
            var gatheredBytes = 0
            var writing: Task<Void, Error>?
            func flush() async throws {
                if let writing { try await writing.value }
                writing = nil
                guard gatheredBytes > 0 else { return }
                let batch = gathered
                gathered = []
                gatheredBytes = 0
                // Awaited by the next flush, or before returning on failure.
                writing = Task {
                    try await PooledFile.run { digest.update(batch) }
                    try await file.append(batch)
                }
            }
            do {
                while received < total, let chunk = try await reader.readChunk() {
                    watchdog.touch()
                    guard UInt64(chunk.readableBytes) <= total - received else {
                        throw FileTransferError.malformed("more bytes than the file's \(total)")
                    }
                    received += UInt64(chunk.readableBytes)
                    gathered.append(chunk)
                    gatheredBytes += chunk.readableBytes
                    if gatheredBytes >= configuration.chunkSize {
                        do { try await flush() } catch { throw FileTransferError.file(path: partial, underlying: error) }
                    }
                    let elapsed = ContinuousClock.now - began
                    let seconds = max(1e-6, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
                    progress(FileProgress(received: received, total: total, bytesPerSecond: Double(received - start) / seconds))
                }
                do {
                    try await flush()
                    try await flush()
                } catch {
                    throw FileTransferError.file(path: partial, underlying: error)
                }
            } catch {
                if let writing { _ = try? await writing.value }
                await file.close()
                throw error
            }
            await file.close()
            await stream.close()
        } catch let error as FileTransferError {
            stream.reset()
            if case .malformed = error { removeFile(partial) }
            throw error
        } catch {
            stream.reset()
            guard received < total || total == 0 else { throw .transport(underlying: error) }
            throw watchdog.fired ? .truncated(received: received, expected: total) : .transport(underlying: error)
        }
        guard received == total else { throw .truncated(received: received, expected: total) }
        if let expectedDigest, digest.finalize() != expectedDigest {
            removeFile(partial)
            throw .hashMismatch(expected: CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: expectedDigest)).text())
        }
        return try place(partial, named: name, in: directory)
    }

    // MARK: Files in the download directory

    private func partialPath(in directory: String, key: String) -> String {
        let digest = SHA256.hash(data: Array(key.utf8)).prefix(12).map { String(format: "%02x", $0) }.joined()
        return (directory as NSString).appendingPathComponent(".\(digest).part")
    }

    private func partialSize(_ path: String) -> UInt64 {
        ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value ?? 0
    }

    private func removeFile(_ path: String) {
        try? FileManager.default.removeItem(atPath: path)
    }

    /// Moves the finished download to `name` in `directory`, or to `name (1)`,
    /// `name (2)`... if taken: never over an existing file.
    private func place(_ partial: String, named name: String, in directory: String) throws(FileTransferError) -> String {
        let base = (name as NSString).deletingPathExtension
        let ext = (name as NSString).pathExtension
        for attempt in 0..<1000 {
            let candidate = attempt == 0 ? name : "\(base) (\(attempt))" + (ext.isEmpty ? "" : ".\(ext)")
            let target = (directory as NSString).appendingPathComponent(candidate)
            guard !FileManager.default.fileExists(atPath: target) else { continue }
            do {
                // Fails rather than replace a file created meanwhile.
                try FileManager.default.linkItem(atPath: partial, toPath: target)
                removeFile(partial)
                return target
            } catch where FileManager.default.fileExists(atPath: target) {
                continue
            } catch {
                throw .file(path: target, underlying: error)
            }
        }
        throw .file(path: directory, underlying: CocoaError(.fileWriteFileExists))
    }
}

/// A SHA-256 being computed by whichever task holds the next batch (batches
/// are hashed one at a time, in order).
final class RunningDigest: Sendable {
    private let hasher = Mutex(SHA256())

    init() {}

    /// Starts over.
    func reset() { hasher.withLock { $0 = SHA256() } }

    func update(_ buffers: [ByteBuffer]) {
        hasher.withLock { hasher in
            for buffer in buffers { buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) } }
        }
    }

    func finalize() -> [UInt8] { hasher.withLock { Array($0.finalize()) } }
}

/// Resets a stream on which nothing moved for `limit` seconds (its pending
/// read or write then fails); `touch` on progress, `stop` when done.
final class StallWatchdog: Sendable {
    private final class Progress: Sendable {
        let lastNanos = Atomic<Int64>(0)
        let fired = Atomic<Bool>(false)
    }

    private static let origin = ContinuousClock.now
    private let progress = Progress()
    private let task: Task<Void, Never>

    private static var nowNanos: Int64 {
        let elapsed = ContinuousClock.now - origin
        return elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000
    }

    init(stream: MuxedStream, limit: Double) {
        let progress = self.progress
        progress.lastNanos.store(Self.nowNanos, ordering: .relaxed)
        let limitNanos = Int64(limit * 1e9)
        let tick = Duration.milliseconds(Int(min(1000, max(10, limit * 250))))
        task = Task {
            while !Task.isCancelled {
                try? await Task.sleep(for: tick)
                guard !Task.isCancelled else { return }
                if Self.nowNanos - progress.lastNanos.load(ordering: .relaxed) > limitNanos {
                    progress.fired.store(true, ordering: .relaxed)
                    stream.reset()
                    return
                }
            }
        }
    }

    deinit { task.cancel() }

    func touch() { progress.lastNanos.store(Self.nowNanos, ordering: .relaxed) }
    func stop() { task.cancel() }
    var fired: Bool { progress.fired.load(ordering: .relaxed) }
}
