import Foundation

// Every run says how busy the machine was, before and after: on a shared
// machine a figure taken with the load average over 1 is not a quiet one.

/// The one-minute load average (from /proc/loadavg), nil where there is none.
func oneMinuteLoadAverage() -> Double? {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else { return nil }
    return text.split(separator: " ").first.flatMap { Double($0) }
}

/// Prints the load averages (1, 5, 15 minutes) and, when the one-minute one is
/// over 1, that the figures were taken on a busy machine.
func printLoadAverage(_ when: String) {
    guard let text = try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8) else {
        print("p2pbench: load average \(when): unknown (no /proc/loadavg)")
        return
    }
    let fields = text.split(separator: " ").prefix(3).joined(separator: " ")
    let busy = (oneMinuteLoadAverage() ?? 0) > 1
    print("p2pbench: load average \(when): \(fields)" + (busy ? " (over 1: a busy machine, not a quiet figure)" : ""))
}

/// Ends a run: the load average after it, then exit.
func finish() -> Never {
    printLoadAverage("after")
    exit(0)
}
