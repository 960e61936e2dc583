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
    /// Chunks a sender reads ahead of the stream, and a receiver holds for
    /// the disk (hashed and written in order on the file pool) while it goes
    /// on reading the stream: what a transfer buffers is at most this many
    /// chunks (plus one being gathered), whatever the file's size.
    public var chunksInFlight = 4
    /// Uploads at once to one peer, and in total; more are refused (`busy`).
    public var maxUploadsPerPeer = 4
    public var maxUploads = 32
    /// How long a transfer may go without a byte moving (the request, the
    /// answer's header, or the body) before it is given up.
    public var stallTimeout: Duration = .seconds(30)

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
    /// The partial downloads this service created and may resume.
    private let partials = Mutex<[PartialKey: PartialFile]>([:])
    private let logger = Logger(label: "p2pchat.files")
    /// The uploads being served, ended by `stop`.
    let tasks = ServiceTasks()

    public init(host: Libp2pHost, configuration: FileShareConfiguration = .init()) {
        self.host = host
        self.configuration = configuration
        uploads = Mutex(InboundAdmission(perPeer: configuration.maxUploadsPerPeer, total: configuration.maxUploads))
    }

    /// Serves the offered files on both protocols.
    public func start() {
        host.setStreamHandler(Self.protocolID) { [self] stream in
            await tasks.serve(stream) { await self.upload(on: $0, universal: false) }
        }
        host.setStreamHandler(Self.universalConnectivityProtocolID) { [self] stream in
            await tasks.serve(stream) { await self.upload(on: $0, universal: true) }
        }
    }

    /// Stops serving both protocols; returns once every upload under way has
    /// ended (its stream reset). Downloads are the caller's to cancel.
    public func stop() async {
        host.removeStreamHandler(Self.protocolID)
        host.removeStreamHandler(Self.universalConnectivityProtocolID)
        await tasks.stop()
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
            try await forEachChunk(ofFile: path, length: size) { digest.update($0) }
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

    /// Streams the file's bytes `offset..<size`, chunk by chunk (writes wait
    /// for the remote's window), reading up to `chunksInFlight` chunks ahead.
    private func send(_ path: String, from offset: UInt64, size: UInt64, on stream: MuxedStream, watchdog: StallWatchdog)
        async throws
    {
        let file = try await PooledFile.openForReading(path)
        let chunk = UInt64(configuration.chunkSize)
        var reads = ReadAhead(file: file, from: offset, to: size, chunk: chunk, depth: max(1, configuration.chunksInFlight))
        do {
            // The file shrank since it was offered: `next` throws, the recipient sees a truncated transfer.
            while let piece = try await reads.next() {
                try await stream.write(piece)
                watchdog.touch()
            }
        } catch {
            await reads.drain()
            await file.close()
            throw error
        }
        await file.close()
    }

    // MARK: Downloading

    /// Fetches an offered file from `peer` into `directory`, resuming a partial
    /// download of the same file made by this service (its path and its
    /// file checked: see `PartialFile`), and verifying the whole file
    /// against the offer's CID. Returns the path of the saved file, a new name
    /// in `directory` (never an existing file overwritten). When the transfer
    /// stops early (`transport`, `truncated`, `busy`) the partial file is kept
    /// for the next fetch of the offer, until `discardPartial`; any other
    /// failure removes it.
    public func fetch(
        _ offer: FileOffer, from peer: PeerID, into directory: String,
        progress: @escaping @Sendable (FileProgress) -> Void = { _ in }
    ) async throws(FileTransferError) -> String {
        guard offer.size <= configuration.maxDownloadSize else {
            throw .tooLarge(size: offer.size, limit: configuration.maxDownloadSize)
        }
        guard let digest = offer.cid.sha256Digest else { throw .notOffered(offer.cid.text()) }
        let key = PartialKey(directory: directory, fileID: offer.cid.text())
        var (file, partial, start) = try await openPartial(key, resumingUpTo: offer.size)
        let hasher = RunningDigest()
        if start > 0 {
            do {
                try await forEachChunk(of: file, length: start) { hasher.update($0) }
            } catch {
                await discard(key, file: file, partial: partial)
                (file, partial, start) = try await openPartial(key, resumingUpTo: nil)
                hasher.reset()
            }
        }
        var request = FileRequest()
        request.cid = offer.cid.text()
        request.offset = start
        let requestBytes: [UInt8]
        do { requestBytes = try request.serializedBytes() } catch { throw .malformed("\(error)") }
        return try await download(
            from: peer, protocolID: Self.protocolID, request: requestBytes, key: key, file: file, partial: partial,
            start: start, hasher: hasher, expectedDigest: digest, name: offer.name, resumable: true, progress: progress
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
    /// answer (no resume: a failure removes the partial file); it is verified
    /// when the id is a SHA-256 CID.
    public func fetchUniversalConnectivity(
        fileID: String, from peer: PeerID, into directory: String, name: String? = nil,
        progress: @escaping @Sendable (FileProgress) -> Void = { _ in }
    ) async throws(FileTransferError) -> String {
        guard fileID.utf8.count <= Self.maxRequestLength, let safeName = FileName.safe(name ?? fileID) else {
            throw .unsafeName(name ?? fileID)
        }
        let key = PartialKey(directory: directory, fileID: fileID)
        let (file, partial, _) = try await openPartial(key, resumingUpTo: nil)
        let limit = configuration.maxDownloadSize
        return try await download(
            from: peer, protocolID: Self.universalConnectivityProtocolID, request: Array(fileID.utf8), key: key, file: file,
            partial: partial, start: 0, hasher: RunningDigest(), expectedDigest: (try? CID(fileID))?.sha256Digest,
            name: safeName, resumable: false, progress: progress
        ) { reader in
            guard let size = try await reader.readVarint() else {
                throw FileTransferError.malformed("the stream ended before the file's length")
            }
            guard size <= limit else { throw FileTransferError.tooLarge(size: size, limit: limit) }
            return size
        }
    }

    /// Removes the partial file a stopped download of `fileID` (an offer's
    /// CID text, or a universal-connectivity file id) left in `directory`, if
    /// it is still the file we created.
    public func discardPartial(fileID: String, in directory: String) {
        let key = PartialKey(directory: directory, fileID: fileID)
        partials.withLock { $0.removeValue(forKey: key) }?.remove()
    }

    /// The download's result, placed; or, on failure, the partial file kept
    /// for a resume (a stop of the transfer on a resumable download) or removed.
    private func download(
        from peer: PeerID, protocolID: String, request: [UInt8], key: PartialKey, file: PooledFile, partial: PartialFile,
        start: UInt64, hasher digest: RunningDigest, expectedDigest: [UInt8]?, name: String, resumable: Bool,
        progress: @escaping @Sendable (FileProgress) -> Void, readHeader: (inout StreamReader) async throws -> UInt64
    ) async throws(FileTransferError) -> String {
        do throws(FileTransferError) {
            try await transfer(
                from: peer, protocolID: protocolID, request: request, file: file, start: start, hasher: digest,
                progress: progress, readHeader: readHeader)
            if let expectedDigest, digest.finalize() != expectedDigest {
                throw FileTransferError.hashMismatch(
                    expected: CID(codec: CID.raw, multihash: Multihash(code: Multihash.sha2_256, digest: expectedDigest)).text())
            }
            let target = try await place(file, named: name, in: (partial.path as NSString).deletingLastPathComponent)
            await discard(key, file: file, partial: partial)
            return target
        } catch {
            switch error {
            case .transport, .truncated, .busy:
                if resumable { await keep(key, file: file, partial: partial) } else { await discard(key, file: file, partial: partial) }
            default:
                await discard(key, file: file, partial: partial)
            }
            throw error
        }
    }

    /// Request, header (`readHeader` returns the file's whole size), then the
    /// body appended to `file` from `start`.
    private func transfer(
        from peer: PeerID, protocolID: String, request: [UInt8], file: PooledFile, start: UInt64, hasher digest: RunningDigest,
        progress: @escaping @Sendable (FileProgress) -> Void, readHeader: (inout StreamReader) async throws -> UInt64
    ) async throws(FileTransferError) {
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
            // Chunks are gathered into batches of `chunkSize`, each hashed and
            // written on the file pool (in order) while the stream is read on:
            // the receiving task only moves buffers, and waits for the disk
            // only when `chunksInFlight` batches are still pending.
            var disk = OrderedDiskWrites(file: file, digest: digest, depth: max(1, configuration.chunksInFlight))
            var gathered: [ByteBuffer] = []
            var gatheredBytes = 0
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
                        do { try await disk.submit(gathered) } catch { throw FileTransferError.file(path: file.path, underlying: error) }
                        gathered = []
                        gatheredBytes = 0
                    }
                    let elapsed = ContinuousClock.now - began
                    let seconds = max(1e-6, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18)
                    progress(FileProgress(received: received, total: total, bytesPerSecond: Double(received - start) / seconds))
                }
                do {
                    if gatheredBytes > 0 { try await disk.submit(gathered) }
                    try await disk.finish()
                } catch {
                    throw FileTransferError.file(path: file.path, underlying: error)
                }
            } catch {
                // What reached the disk stays a prefix of the file, for a resume.
                await disk.drain()
                throw error
            }
            await stream.close()
        } catch let error as FileTransferError {
            stream.reset()
            throw error
        } catch {
            stream.reset()
            guard received < total || total == 0 else { throw .transport(underlying: error) }
            throw watchdog.fired ? .truncated(received: received, expected: total) : .transport(underlying: error)
        }
        guard received == total else { throw .truncated(received: received, expected: total) }
    }

    // MARK: Files in the download directory

    /// Which partial download: of which file, into which directory.
    struct PartialKey: Hashable, Sendable {
        let directory: String
        let fileID: String
    }

    /// The partial file of `key` to go on with: the one this service created,
    /// when it is still that file and holds at most `resumingUpTo` bytes (nil:
    /// never resume), or a new one. Returns it open, and the bytes it holds.
    private func openPartial(_ key: PartialKey, resumingUpTo limit: UInt64?) async throws(FileTransferError)
        -> (PooledFile, PartialFile, UInt64)
    {
        if let known = partials.withLock({ $0[key] }) {
            if let limit, let reopened = try? await PooledFile.reopenPartial(known) {
                if known.size <= limit { return (reopened, known, known.size) }
                await reopened.close()
            }
            discardPartial(fileID: key.fileID, in: key.directory)
        }
        let prefix = SHA256.hash(data: Array(key.fileID.utf8)).prefix(6).map { String(format: "%02x", $0) }.joined()
        do {
            let (file, partial) = try await PooledFile.createPartial(in: key.directory, prefix: prefix)
            partials.withLock { $0[key] = partial }
            return (file, partial, 0)
        } catch {
            throw .file(path: key.directory, underlying: error)
        }
    }

    /// Closes and removes a partial file (still open: ours), and forgets it.
    private func discard(_ key: PartialKey, file: PooledFile, partial: PartialFile) async {
        await file.close()
        partials.withLock { if $0[key]?.path == partial.path { $0[key] = nil } }
        partial.remove(modifiedSince: true)
    }

    /// Closes a partial file kept for a resume, recording its size and time
    /// as we leave it (forgotten and removed if it cannot be read).
    private func keep(_ key: PartialKey, file: PooledFile, partial: PartialFile) async {
        guard let status = try? await file.status() else { return await discard(key, file: file, partial: partial) }
        await file.close()
        partials.withLock { $0[key] = PartialFile(path: partial.path, status: status) }
    }

    /// Gives the finished download (the open partial file) the name `name` in
    /// `directory`, or `name (1)`, `name (2)`... if taken: never over an existing file.
    private func place(_ file: PooledFile, named name: String, in directory: String) async throws(FileTransferError) -> String {
        let base = (name as NSString).deletingPathExtension
        let ext = (name as NSString).pathExtension
        for attempt in 0..<1000 {
            let candidate = attempt == 0 ? name : "\(base) (\(attempt))" + (ext.isEmpty ? "" : ".\(ext)")
            let target = (directory as NSString).appendingPathComponent(candidate)
            do {
                // Fails rather than replace a file (or a link) of that name.
                try await file.link(to: target)
                return target
            } catch let error as POSIXError where error.code == .EEXIST {
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

    func update(_ buffer: ByteBuffer) {
        hasher.withLock { hasher in buffer.withUnsafeReadableBytes { hasher.update(bufferPointer: $0) } }
    }

    func finalize() -> [UInt8] { hasher.withLock { Array($0.finalize()) } }
}

/// A file's chunks read on the file pool up to `depth` ahead of the one taken
/// (positional reads, so they may run at once), handed out in order. Its
/// owner takes them all or calls `drain`: no read outlives it.
struct ReadAhead {
    private let file: PooledFile
    private let end: UInt64
    private let chunk: UInt64
    private let depth: Int
    private var nextOffset: UInt64
    /// The reads under way, each with its offset and length.
    private var reads: [(read: Task<ByteBuffer, Error>, offset: UInt64, count: Int)] = []

    init(file: PooledFile, from offset: UInt64, to end: UInt64, chunk: UInt64, depth: Int) {
        self.file = file
        self.end = end
        self.chunk = chunk
        self.depth = depth
        nextOffset = offset
    }

    /// The next chunk, nil after `end`; throws `truncated` if the file ended
    /// early (the reads ahead were made at fixed offsets: nothing after a
    /// short read may be sent).
    mutating func next() async throws -> ByteBuffer? {
        while reads.count < depth, nextOffset < end {
            let (file, offset, count) = (file, nextOffset, Int(min(chunk, end - nextOffset)))
            // Awaited by `next` or `drain`.
            reads.append((Task { try await file.read(at: offset, count: count) }, offset, count))
            nextOffset += UInt64(count)
        }
        guard !reads.isEmpty else { return nil }
        let (read, offset, count) = reads.removeFirst()
        let piece = try await read.value
        guard piece.readableBytes == count else {
            throw FileTransferError.truncated(received: offset + UInt64(piece.readableBytes), expected: end)
        }
        return piece
    }

    /// Waits for the reads under way (after a failure).
    mutating func drain() async {
        for pending in reads { _ = try? await pending.read.value }
        reads = []
    }
}

/// Batches of a download hashed and appended to its file on the file pool,
/// one pool job per batch, strictly in order (each job waits for the one
/// before it, and fails if that failed: the file stays a prefix of the
/// download), at most `depth` pending. Its owner ends with `finish` or
/// `drain`: no job outlives it.
struct OrderedDiskWrites {
    private let file: PooledFile
    private let digest: RunningDigest
    private let depth: Int
    private var pending: [Task<Void, Error>] = []

    init(file: PooledFile, digest: RunningDigest, depth: Int) {
        self.file = file
        self.digest = digest
        self.depth = depth
    }

    /// Queues a batch; waits first while `depth` batches are pending. Throws
    /// the error of an earlier batch.
    mutating func submit(_ batch: [ByteBuffer]) async throws {
        if pending.count >= depth { try await pending.removeFirst().value }
        let (previous, file, digest) = (pending.last, file, digest)
        // Awaited by a later `submit`, `finish` or `drain`.
        pending.append(
            Task {
                try await previous?.value
                try await PooledFile.run {
                    // Each piece hashed, then written while it is still in the cache.
                    for buffer in batch {
                        digest.update(buffer)
                        try file.appendNow(buffer)
                    }
                }
            })
    }

    /// Waits until every batch is written; throws the first failure.
    mutating func finish() async throws {
        // The last job waits for all before it, and fails if any did.
        defer { pending = [] }
        try await pending.last?.value
    }

    /// Waits for the jobs under way, ignoring their failures.
    mutating func drain() async {
        for job in pending { _ = try? await job.value }
        pending = []
    }
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

    init(stream: MuxedStream, limit: Duration) {
        let progress = self.progress
        progress.lastNanos.store(Self.nowNanos, ordering: .relaxed)
        let limitNanos = limit.components.seconds * 1_000_000_000 + limit.components.attoseconds / 1_000_000_000
        let tick = min(.seconds(1), max(.milliseconds(10), limit / 4))
        // The watchdog's: `stop` and deinit cancel it.
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
