import ChatHistory
import FileShare
import Foundation
import Host
import Identity
import PubSub
import Synchronization

/// A file offered on the topic.
enum SeenOffer: Equatable, Sendable {
    /// Announced with a `/file <cid> <size> <name>` line (ours, `/p2pchat/file/1.0.0`).
    case announced(FileOffer)
    /// Announced on `<topic>-file` with its id only, as libp2p's
    /// universal-connectivity chat does (`/universal-connectivity-file/1`).
    case universal(fileID: String)

    var name: String {
        switch self {
        case .announced(let offer): return offer.name
        case .universal(let id): return FileName.safe(id) ?? "file"
        }
    }

    var size: UInt64? {
        if case .announced(let offer) = self { return offer.size }
        return nil
    }

    /// The id the file goes by on both protocols (the CID's text for ours).
    var fileID: String {
        switch self {
        case .announced(let offer): return offer.cid.text()
        case .universal(let id): return id
        }
    }

    func sameFile(as other: SeenOffer) -> Bool { fileID == other.fileID }
}

/// Files in the chat: offers seen on the topic (numbered for `/get N`,
/// bounded in all and per peer), our own offers (`/send PATH`), downloads with
/// progress, resumed after a drop; with `--accept-files`, fetched without
/// asking within the `AutoAccept` policy's limits.
actor ChatFiles {
    let service: FileShareService
    let out: ChatOutput
    let directory: String
    /// `--accept-files`: what is fetched without asking.
    private var autoAccept: AutoAccept<AutoDownload>?
    private var offers = OfferBook<SeenOffer>()
    private var downloads: [Int: Task<Void, Never>] = [:]
    static let attempts = 4

    /// An offer the policy accepted: its number and the size it was charged.
    struct AutoDownload: Sendable {
        let number: Int
        let size: UInt64
    }

    init(service: FileShareService, out: ChatOutput, directory: String, autoAccept: AutoAcceptLimits?) {
        self.service = service
        self.out = out
        self.directory = directory
        self.autoAccept = autoAccept.map { AutoAccept(limits: $0) }
    }

    /// The topic where universal-connectivity chats announce files of `topic`.
    static func fileTopic(of topic: String) -> String { topic + "-file" }

    /// Offers the file at `path`: the announcement line to publish, or nil (the error is printed).
    func offer(path: String) async -> FileOffer? {
        do {
            return try await service.offer(path: (path as NSString).expandingTildeInPath)
        } catch {
            out.error("cannot offer \(path): \(error)")
            return nil
        }
    }

    /// An offer seen on the topic: printed with its number; with
    /// `--accept-files`, fetched when the policy takes it.
    func received(_ offer: SeenOffer, from peer: PeerID) {
        if let number = offers.number(of: offer.fileID, from: peer), let known = offers[number] {
            // A p2pchat sender announces both ways: one offer, the richer form kept.
            guard known.offer != offer else { return announce(number, offer, from: peer) }
            guard case .announced = offer else { return }
            offers.update(number, to: offer)
            announce(number, offer, from: peer)
            // Its size is known now: considered for --accept-files (if not being fetched).
            if downloads[number] == nil { considerAutomatically(number, offer, from: peer) }
            return
        }
        let number = offers.add(offer, fileID: offer.fileID, from: peer)
        announce(number, offer, from: peer)
        considerAutomatically(number, offer, from: peer)
    }

    /// `--accept-files`: fetches the offer now, queues it, or says why not.
    private func considerAutomatically(_ number: Int, _ offer: SeenOffer, from peer: PeerID) {
        // Without a size (a universal-connectivity offer), only /get fetches it.
        guard var policy = autoAccept, let size = offer.size else { return }
        let decision = policy.offer(AutoDownload(number: number, size: size), size: size, from: peer, freeBytes: freeBytes())
        autoAccept = policy
        switch decision {
        case .start: get(number, automatic: size)
        case .queued: break
        case .refused(let why):
            out.emit(
                "file_not_accepted", ["n": .int(number), "name": .string(offer.name), "reason": .string("\(why)")],
                human: "file \(offer.name) not fetched without asking: \(why); /get \(number) fetches it")
        }
    }

    /// Bytes available on the download directory's file system (that of its nearest existing parent).
    private func freeBytes() -> UInt64? {
        var path = directory
        while !FileManager.default.fileExists(atPath: path), path != "/", !path.isEmpty {
            path = (path as NSString).deletingLastPathComponent
        }
        var status = statvfs()
        guard statvfs(path.isEmpty ? "." : path, &status) == 0 else { return nil }
        return UInt64(status.f_bavail) * UInt64(status.f_frsize)
    }

    /// An automatic download ended: the next one accepted takes its turn.
    private func automaticFinished(size: UInt64) {
        guard var policy = autoAccept else { return }
        let next = policy.finished(size: size)
        autoAccept = policy
        guard let next else { return }
        // Gone from the list, or fetched by /get meanwhile: its turn passes.
        guard offers[next.number] != nil, downloads[next.number] == nil else { return automaticFinished(size: next.size) }
        get(next.number, automatic: next.size)
    }

    private func announce(_ number: Int, _ offer: SeenOffer, from peer: PeerID) {
        var fields: [String: JSONValue] = ["n": .int(number), "from": .string("\(peer)"), "name": .string(offer.name)]
        let human: String
        switch offer {
        case .announced(let announced):
            fields["size"] = .int(announced.size)
            fields["cid"] = .string(announced.cid.text())
            human = "\(out.name(peer)) offers \(announced.name) (\(byteCount(announced.size))): /get \(number)"
        case .universal(let id):
            fields["file_id"] = .string(id)
            human = "\(out.name(peer)) offers \(id) (universal-connectivity): /get \(number)"
        }
        out.emit("file_offer", fields, human: human)
    }

    /// Lists the offers seen.
    func list() {
        if offers.count == 0 { say("No files offered yet.") }
        for entry in offers.all { announce(entry.number, entry.offer, from: entry.from) }
    }

    /// Fetches offer `number` in the background (one download per offer at a
    /// time); `automatic`: started by `--accept-files`, charged this size.
    /// A download given up removes its partial file.
    func get(_ number: Int, automatic: UInt64? = nil) {
        guard let entry = offers[number] else {
            if let automatic { automaticFinished(size: automatic) }
            return out.error("no file offer \(number); /files lists them")
        }
        guard downloads[number] == nil else { return out.error("file \(number) is already being fetched") }
        let (offer, peer) = (entry.offer, entry.from)
        let service = self.service
        let out = self.out
        let directory = self.directory
        let name = offer.name
        downloads[number] = Task {
            defer { self.finished(number, automatic: automatic) }
            func failed(_ why: String) {
                service.discardPartial(fileID: offer.fileID, in: directory)
                out.emit(
                    "file_failed", ["n": .int(number), "name": .string(name), "error": .string(why)],
                    human: "file \(name) failed: \(why)")
            }
            do {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            } catch {
                return failed("cannot create \(directory): \(error)")
            }
            let bar = ProgressPrinter(out: out, number: number, name: name)
            var attempt = 1
            while true {
                do {
                    let path: String
                    switch offer {
                    case .announced(let announced):
                        path = try await service.fetch(announced, from: peer, into: directory) { bar.update($0) }
                    case .universal(let id):
                        path = try await service.fetchUniversalConnectivity(fileID: id, from: peer, into: directory) {
                            bar.update($0)
                        }
                    }
                    bar.finish()
                    let size = ((try? FileManager.default.attributesOfItem(atPath: path))?[.size] as? NSNumber)?.uint64Value ?? 0
                    return out.emit(
                        "file_done", ["n": .int(number), "name": .string(name), "path": .string(path), "size": .int(size)],
                        human: "file \(name) saved as \(path)")
                } catch let error as FileTransferError {
                    // A dropped connection or a stalled sender: resume from the partial file, a few times.
                    let retry: Bool
                    switch error {
                    case .transport, .truncated, .busy: retry = attempt < Self.attempts && !Task.isCancelled
                    default: retry = false
                    }
                    guard retry else {
                        bar.finish()
                        return failed("\(error)")
                    }
                    try? await Task.sleep(for: .seconds(1 << attempt))
                    attempt += 1
                } catch {
                    bar.finish()
                    return failed("\(error)")
                }
            }
        }
    }

    private func finished(_ number: Int, automatic: UInt64?) {
        downloads[number] = nil
        if let automatic { automaticFinished(size: automatic) }
    }

    func cancelAll() {
        for download in downloads.values { download.cancel() }
        downloads = [:]
    }
}

/// Progress of one download: a bar on stderr in a terminal, `file_progress`
/// events with --json (at most one a second), nothing otherwise.
final class ProgressPrinter: Sendable {
    let out: ChatOutput
    let number: Int
    let name: String
    private let last = Mutex<ContinuousClock.Instant?>(nil)
    private let terminal = isatty(2) == 1

    init(out: ChatOutput, number: Int, name: String) {
        self.out = out
        self.number = number
        self.name = name
    }

    func update(_ progress: FileProgress) {
        let now = ContinuousClock.now
        let due = last.withLock { last -> Bool in
            if let previous = last, now - previous < (out.json ? .seconds(1) : .milliseconds(200)),
                progress.received < progress.total
            { return false }
            last = now
            return true
        }
        guard due else { return }
        let fraction = progress.total == 0 ? 1 : Double(progress.received) / Double(progress.total)
        let remaining = progress.bytesPerSecond > 0 ? Double(progress.total - progress.received) / progress.bytesPerSecond : 0
        let fields: [String: JSONValue] = [
            "n": .int(number), "name": .string(name), "bytes": .int(progress.received), "size": .int(progress.total),
            "rate": .decimal(progress.bytesPerSecond, digits: 0), "eta": .decimal(remaining, digits: 1),
        ]
        if out.json {
            out.emit("file_progress", fields, human: "")
            return
        }
        // The web page draws its own bar.
        out.tap.send("file_progress", fields)
        if terminal {
            let width = 24
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled)
            let line = String(
                format: "\r%@ [%@] %3d%% %@ %@/s ETA %ds", name, bar, Int(fraction * 100),
                byteCount(progress.received), byteCount(UInt64(progress.bytesPerSecond)), Int(remaining))
            FileHandle.standardError.write(Data(line.utf8))
        }
    }

    func finish() {
        if terminal && !out.json { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}

/// Bytes as a person reads them (binary units).
func byteCount(_ bytes: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var value = Double(bytes)
    var unit = 0
    while value >= 1024 && unit < units.count - 1 {
        value /= 1024
        unit += 1
    }
    return unit == 0 ? "\(bytes) B" : String(format: "%.1f %@", value, units[unit])
}

/// History after a partition in the chat: syncs with peers of the topic as
/// they appear, one sync at a time so lines print in their original order.
actor ChatHistorySync {
    let history: HistoryService
    let out: ChatOutput
    private var running = false
    private var queue: [(topic: String, peer: PeerID)] = []

    init(history: HistoryService, out: ChatOutput) {
        self.history = history
        self.out = out
    }

    /// Asks `peer` for what we missed on `topic` (after those already queued).
    func request(_ topic: String, from peer: PeerID) async {
        queue.append((topic, peer))
        guard !running else { return }
        running = true
        while !queue.isEmpty {
            let (topic, peer) = queue.removeFirst()
            do {
                let result = try await history.sync(topic: topic, with: peer)
                for message in result.new { printMessage(message, out: out, history: history.lineTime(of: message)) }
                if result.rejected > 0 {
                    out.error("history from \(peer): \(result.rejected) message(s) with bad signatures dropped")
                }
            } catch {
                // A peer that does not keep history (another chat) just has none to give.
                if case .request(let failure) = error, case .unsupportedProtocols = failure { continue }
                out.error("\(error)")
            }
        }
        running = false
    }
}
