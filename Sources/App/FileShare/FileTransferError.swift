import Multiformats

/// Why a file was not sent or received.
public enum FileTransferError: Error, CustomStringConvertible, Sendable {
    /// The sender has no file with this CID on offer.
    case notOffered(String)
    /// The sender refused the offset asked for (beyond its file's end).
    case badOffset(UInt64)
    /// The sender has too many transfers to us going.
    case busy
    /// The file is larger than we accept.
    case tooLarge(size: UInt64, limit: UInt64)
    /// The sender's file is not the size its offer said.
    case sizeMismatch(offered: UInt64, sent: UInt64)
    /// The bytes received do not hash to the offer's CID (the partial file was removed).
    case hashMismatch(expected: String)
    /// The name cannot be used for a file here.
    case unsafeName(String)
    /// The transfer stopped early (the partial file is kept for a resume).
    case truncated(received: UInt64, expected: UInt64)
    /// A local file could not be read or written.
    case file(path: String, underlying: any Error)
    /// The peer could not be reached, does not speak the protocol, or the stream failed.
    case transport(underlying: any Error)
    /// The sender answered with something that is not the protocol.
    case malformed(String)

    public var description: String {
        switch self {
        case .notOffered(let cid): return "the sender has no file \(cid) on offer"
        case .badOffset(let offset): return "the sender refused to resume at byte \(offset)"
        case .busy: return "the sender has too many transfers going; try again later"
        case .tooLarge(let size, let limit): return "the file has \(size) bytes, over the limit of \(limit)"
        case .sizeMismatch(let offered, let sent): return "the file was offered with \(offered) bytes but the sender has \(sent)"
        case .hashMismatch(let cid): return "the bytes received do not match \(cid); the partial file was removed"
        case .unsafeName(let name): return "unsafe file name \(name.debugDescription)"
        case .truncated(let received, let expected): return "the transfer stopped after \(received) of \(expected) bytes"
        case .file(let path, let error): return "\(path): \(error)"
        case .transport(let error): return "transfer failed: \(error)"
        case .malformed(let why): return "malformed answer from the sender: \(why)"
        }
    }
}
