import Foundation

/// A value of a `--json` output field.
enum JSONValue: Sendable, ExpressibleByStringInterpolation {
    case string(String)
    case strings([String])
    /// A number already formatted (an integer, or a decimal with the digits the field needs).
    case number(String)
    case bool(Bool)

    init(stringLiteral value: String) { self = .string(value) }

    static func int<I: BinaryInteger>(_ value: I) -> JSONValue { .number("\(value)") }

    /// A decimal with `digits` digits after the point.
    static func decimal(_ value: Double, digits: Int) -> JSONValue { .number(formatNumber(value, digits: digits)) }
}

/// One JSON object on one line: every command's `--json` output is made here.
/// Keys are sorted (stable output); strings are escaped as RFC 8259 requires
/// and no more (slashes stay `/`, so multiaddrs read as they print).
func jsonLine(_ fields: [String: JSONValue]) -> String {
    var out = "{"
    for (index, key) in fields.keys.sorted().enumerated() {
        if index > 0 { out += "," }
        appendJSONString(key, to: &out)
        out += ":"
        switch fields[key] {
        case .string(let text): appendJSONString(text, to: &out)
        case .strings(let texts):
            out += "["
            for (position, text) in texts.enumerated() {
                if position > 0 { out += "," }
                appendJSONString(text, to: &out)
            }
            out += "]"
        case .number(let number): out += number
        case .bool(let value): out += value ? "true" : "false"
        case nil: out += "null"
        }
    }
    return out + "}"
}

private func appendJSONString(_ text: String, to out: inout String) {
    out += "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
        default: out.unicodeScalars.append(scalar)
        }
    }
    out += "\""
}

func formatNumber(_ value: Double, digits: Int) -> String {
    String(format: "%.\(digits)f", value)
}

/// The time of an event, ISO 8601 in UTC with milliseconds (`2026-01-31T12:00:00.123Z`).
func isoTimestamp(_ date: Date = Date()) -> String {
    date.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
}
