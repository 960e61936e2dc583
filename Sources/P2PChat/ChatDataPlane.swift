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

/// Files in the chat: offers seen on the topic (numbered for `/get N`), our
/// own offers (`/send PATH`), downloads with progress, resumed after a drop.
actor ChatFiles {
    let service: FileShareService
    let out: ChatOutput
    let directory: String
    /// `--accept-files`: offers up to this size are fetched without asking.
    let autoAcceptLimit: UInt64?
    private var offers: [(offer: SeenOffer, from: PeerID)] = []
    private var downloads: [Int: Task<Void, Never>] = [:]
    static let attempts = 4

    init(service: FileShareService, out: ChatOutput, directory: String, autoAcceptLimit: UInt64?) {
        self.service = service
        self.out = out
        self.directory = directory
        self.autoAcceptLimit = autoAcceptLimit
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

    /// An offer seen on the topic: printed with its number; fetched at once
    /// when its size is known and within the `--accept-files` limit.
    func received(_ offer: SeenOffer, from peer: PeerID) {
        if let index = offers.firstIndex(where: { $0.offer == offer && $0.from == peer }) {
            return announce(index + 1, offer, from: peer)
        }
        // A p2pchat sender announces both ways: one offer, the richer form kept.
        if let index = offers.firstIndex(where: { $0.from == peer && $0.offer.sameFile(as: offer) }) {
            guard case .announced = offer else { return }
            offers[index].offer = offer
            announce(index + 1, offer, from: peer)
            // Its size is known now: within --accept-files, fetched (if not already).
            if let limit = autoAcceptLimit, let size = offer.size, size <= limit, downloads[index + 1] == nil { get(index + 1) }
            return
        }
        offers.append((offer, peer))
        let number = offers.count
        announce(number, offer, from: peer)
        if let limit = autoAcceptLimit, let size = offer.size, size <= limit { get(number) }
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
        if offers.isEmpty { say("No files offered yet.") }
        for (index, entry) in offers.enumerated() { announce(index + 1, entry.offer, from: entry.from) }
    }

    /// Fetches offer `number` in the background (one download per offer at a time).
    func get(_ number: Int) {
        guard offers.indices.contains(number - 1) else {
            return out.error("no file offer \(number); /files lists them")
        }
        guard downloads[number] == nil else { return out.error("file \(number) is already being fetched") }
        let (offer, peer) = offers[number - 1]
        let service = self.service
        let out = self.out
        let directory = self.directory
        let name = offer.name
        downloads[number] = Task {
            defer { self.finished(number) }
            func failed(_ why: String) {
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

    private func finished(_ number: Int) { downloads[number] = nil }

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
        if out.json {
            out.emit(
                "file_progress",
                [
                    "n": .int(number), "name": .string(name), "bytes": .int(progress.received), "size": .int(progress.total),
                    "rate": .decimal(progress.bytesPerSecond, digits: 0), "eta": .decimal(remaining, digits: 1),
                ],
                human: "")
        } else if terminal {
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
                for message in result.new { printMessage(message, out: out, history: true) }
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
