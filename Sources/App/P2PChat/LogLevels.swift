import Foundation
import Logging

/// Log levels per subsystem, from `-v`/`-vv` and `P2PCHAT_LOG`.
///
/// `P2PCHAT_LOG` is a comma-separated list of `LEVEL` (every subsystem) and
/// `SUBSYSTEM=LEVEL` entries, e.g. `pubsub=debug,transport=info` or
/// `info,mdns=trace`. A subsystem is a logger label without its `p2p.` prefix
/// (`host`, `transport`, `transport.ws`, `pubsub`, `identify`, `mdns`); an entry
/// also covers the subsystems below it (`transport` covers `transport.ws`).
struct LogLevels: Equatable {
    var defaultLevel: Logger.Level
    var subsystems: [String: Logger.Level] = [:]

    /// `-v` (debug), `-vv` (trace), else warnings only; `P2PCHAT_LOG` overrides.
    init(verbosity: Int, environment: String?) throws(LogLevelError) {
        defaultLevel = verbosity >= 2 ? .trace : verbosity == 1 ? .debug : .warning
        guard let environment else { return }
        for entry in environment.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) })
        where !entry.isEmpty {
            let parts = entry.split(separator: "=", maxSplits: 1).map(String.init)
            guard let level = Logger.Level(rawValue: parts.last!.lowercased()) else {
                throw LogLevelError(entry: entry)
            }
            if parts.count == 2 {
                subsystems[parts[0].lowercased()] = level
            } else {
                defaultLevel = level
            }
        }
    }

    /// The level of the logger labelled `label`: its most specific subsystem entry, else the default.
    func level(for label: String) -> Logger.Level {
        var name = label.hasPrefix("p2p.") ? String(label.dropFirst(4)) : label
        while true {
            if let level = subsystems[name] { return level }
            guard let dot = name.lastIndex(of: ".") else { return defaultLevel }
            name = String(name[..<dot])
        }
    }
}

struct LogLevelError: Error, CustomStringConvertible {
    let entry: String
    var description: String {
        "P2PCHAT_LOG: bad entry \"\(entry)\" (use LEVEL or SUBSYSTEM=LEVEL; levels: trace, debug, info, notice, warning, error, critical)"
    }
}

/// Starts logging to stderr at the levels of `-v`/`-vv` and `P2PCHAT_LOG`.
func bootstrapLogging(verbose verbosity: Int) {
    let levels: LogLevels
    do {
        levels = try LogLevels(verbosity: verbosity, environment: ProcessInfo.processInfo.environment["P2PCHAT_LOG"])
    } catch {
        exitWithError("\(error)")
    }
    LoggingSystem.bootstrap { label in
        var handler = StreamLogHandler.standardError(label: label)
        handler.logLevel = levels.level(for: label)
        return handler
    }
}
