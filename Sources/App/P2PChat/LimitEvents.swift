import Foundation
import Host
import Synchronization
import Transport

/// What the host's limits refused or closed, as `limits` events at most once
/// a second per reason: the first refusal of a reason is reported at once,
/// later ones within the second are counted and reported together when it
/// ends, so a flood of refusals cannot flood the output. Sans-IO (time is an input).
struct LimitEventThrottle {
    struct Report: Equatable {
        let reason: String
        /// The latest refusal's peer and address, when known.
        let peer: String?
        let address: String?
        /// Refusals of this reason since the last report, this one's included.
        let count: Int
    }

    let interval: Duration
    /// Reasons kept apart at most; further ones are reported as "other".
    static let maxReasons = 64
    private var lastReported: [String: ContinuousClock.Instant] = [:]
    private var pending: [String: Report] = [:]

    init(interval: Duration = .seconds(1)) {
        self.interval = interval
    }

    /// A refusal at `now`: its report if one may go out now, else nil (counted for later).
    mutating func record(_ refusal: LimitRefusal, now: ContinuousClock.Instant) -> Report? {
        var reason = refusal.reason
        if lastReported[reason] == nil && lastReported.count >= Self.maxReasons { reason = "other" }
        let count = (pending.removeValue(forKey: reason)?.count ?? 0) + 1
        let report = Report(
            reason: reason, peer: refusal.peer.map { "\($0)" }, address: refusal.address.map { "\($0)" }, count: count)
        if let last = lastReported[reason], now - last < interval {
            pending[reason] = report
            return nil
        }
        lastReported[reason] = now
        return report
    }

    /// The counted refusals whose second is over at `now`; reasons quiet for
    /// a whole interval are forgotten.
    mutating func due(now: ContinuousClock.Instant) -> [Report] {
        var reports: [Report] = []
        for (reason, report) in pending where now - (lastReported[reason] ?? now) >= interval {
            reports.append(report)
            pending[reason] = nil
            lastReported[reason] = now
        }
        for (reason, last) in lastReported where pending[reason] == nil && now - last >= interval * 2 {
            lastReported[reason] = nil
        }
        return reports.sorted { $0.reason < $1.reason }
    }
}

/// Prints the host's `limitReached` events through a `LimitEventThrottle`.
final class LimitEventPrinter: Sendable {
    private let throttle = Mutex(LimitEventThrottle())
    private let out: ChatOutput

    init(out: ChatOutput) {
        self.out = out
    }

    func record(_ refusal: LimitRefusal) {
        if let report = throttle.withLock({ $0.record(refusal, now: .now) }) { print(report) }
    }

    /// Reports what was counted, each second, until cancelled.
    func run() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            for report in throttle.withLock({ $0.due(now: .now) }) { print(report) }
        }
    }

    private func print(_ report: LimitEventThrottle.Report) {
        var fields: [String: JSONValue] = ["reason": .string(report.reason), "count": .int(report.count)]
        if let peer = report.peer { fields["peer"] = .string(peer) }
        if let address = report.address { fields["addr"] = .string(address) }
        let whose = report.peer.map { " (latest: \($0))" } ?? report.address.map { " (latest: \($0))" } ?? ""
        out.emit("limits", fields, human: "Refused or closed by a limit: \(report.reason), \(report.count) time(s)\(whose)")
    }
}
