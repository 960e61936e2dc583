import Identity
import Multiformats

/// A file offered to a topic: what the chat line announcing it carries.
public struct FileOffer: Sendable, Hashable {
    /// The file's CIDv1 (raw, sha2-256): its name on the wire and its checksum.
    public let cid: CID
    public let name: String
    public let size: UInt64

    public init(cid: CID, name: String, size: UInt64) {
        self.cid = cid
        self.name = name
        self.size = size
    }

    /// The announcement: a chat line other chats show as it is and ours parse,
    /// `/file <cid> <size> <name>`.
    public var announcement: String { "\(Self.prefix)\(cid) \(size) \(name)" }

    static let prefix = "/file "

    /// Parses an announcement; nil if the line is not one (or a malformed one:
    /// a bad CID, a size that is not a number, a name that is not safe).
    public init?(announcement line: String) {
        guard line.hasPrefix(Self.prefix), line.utf8.count <= 1024 else { return nil }
        let fields = line.dropFirst(Self.prefix.count).split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard fields.count == 3, let cid = try? CID(String(fields[0])), cid.sha256Digest != nil,
            let size = UInt64(fields[1]), let name = FileName.safe(String(fields[2]))
        else { return nil }
        self.init(cid: cid, name: name, size: size)
    }
}

/// Names that are safe to create in a download directory.
public enum FileName {
    /// The name made safe: only its last path component, without control
    /// characters (NUL included), not `.` or `..`, not hidden, at most 255
    /// bytes; nil if nothing usable is left.
    public static func safe(_ proposed: String) -> String? {
        let last = proposed.split(whereSeparator: { $0 == "/" || $0 == "\\" }).last.map(String.init) ?? ""
        var cleaned = String(String.UnicodeScalarView(last.unicodeScalars.filter { !$0.properties.generalCategory.isControl }))
        cleaned = cleaned.trimmingCharacters(in: " .")
        guard !cleaned.isEmpty else { return nil }
        while cleaned.utf8.count > 255 { cleaned.removeLast() }
        return cleaned
    }
}

extension Unicode.GeneralCategory {
    fileprivate var isControl: Bool {
        switch self {
        case .control, .format, .lineSeparator, .paragraphSeparator, .surrogate, .privateUse, .unassigned: return true
        default: return false
        }
    }
}

extension String {
    fileprivate func trimmingCharacters(in characters: String) -> String {
        let set = Set(characters)
        var text = Substring(self)
        while let first = text.first, set.contains(first) { text = text.dropFirst() }
        while let last = text.last, set.contains(last) { text = text.dropLast() }
        return String(text)
    }
}
