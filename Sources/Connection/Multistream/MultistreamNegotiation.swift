import Multiformats
import NIOCore

/// Errors of multistream-select negotiation.
public enum MultistreamError: Error, CustomStringConvertible, Sendable, Equatable {
    case wrongHeader(String)
    case messageTooLong(length: UInt64, limit: Int)
    case badLengthPrefix(String)
    case missingNewline
    case invalidUTF8
    case unexpectedMessage(String)
    case protocolsNotSupported([String])
    case tooManyRounds(Int)
    case alreadyFinished

    public var description: String {
        switch self {
        case .wrongHeader(let h): return "expected /multistream/1.0.0, got \"\(h)\""
        case .messageTooLong(let length, let limit): return "message of \(length) bytes exceeds the limit of \(limit)"
        case .badLengthPrefix(let why): return "bad length prefix: \(why)"
        case .missingNewline: return "message does not end in a newline"
        case .invalidUTF8: return "message is not UTF-8"
        case .unexpectedMessage(let m): return "unexpected message \"\(m)\""
        case .protocolsNotSupported(let p): return "remote supports none of \(p.joined(separator: ", "))"
        case .tooManyRounds(let n): return "remote made more than \(n) proposals"
        case .alreadyFinished: return "negotiation already finished"
        }
    }
}

/// Bounds on what a peer can make a negotiation allocate or loop through.
public struct MultistreamLimits: Sendable {
    /// Longest message (protocol id + newline) accepted.
    public var maxMessageLength: Int = 1024
    /// Most proposals a remote initiator may make before we give up.
    public var maxRounds: Int = 32

    public init(maxMessageLength: Int = 1024, maxRounds: Int = 32) {
        self.maxMessageLength = maxMessageLength
        self.maxRounds = maxRounds
    }
}

/// One `/multistream/1.0.0` negotiation, sans-IO: feed it the bytes that
/// arrive, write out the bytes it produces; it reports the agreed protocol.
///
/// The initiator pipelines its header with its first proposal; the responder
/// sends its header at once and answers each proposal with it or `na`.
public struct MultistreamNegotiation: Sendable {
    public static let protocolID = "/multistream/1.0.0"

    public static let simultaneousOpenID = "/libp2p/simultaneous-connect"
    static let tieBreakerPrefix = "select:"

    enum Role: Sendable {
        case initiator(proposals: [String], next: Int)
        case responder(supports: @Sendable (String) -> Bool, rounds: Int)
        /// A dialler that proposed the simultaneous-open extension: until the
        /// remote's answer says whether it is a listener (`na`) or a dialler too.
        case simultaneousOpen(proposals: [String], nonce: UInt64, phase: SimultaneousOpenPhase)
    }

    /// The steps of the multistream simultaneous-open extension (the one
    /// go-libp2p before v0.33 used for every dial, and hole punches of go-libp2p
    /// before v0.41 need): both ends send `select:<nonce>` and the larger
    /// nonce takes the listener's part.
    enum SimultaneousOpenPhase: Sendable {
        /// Header received; the answer to our extension proposal is next.
        case awaitingAnswer
        /// The remote is a listener: its answer to our pipelined proposal is next.
        case awaitingFirstAnswer
        /// The remote is a dialler too: its pipelined proposal is skipped...
        case skippingProposal
        /// ...then comes its nonce.
        case awaitingNonce
        /// We won the listener's part: the remote's `initiator` is next.
        case awaitingInitiator
        /// We are the dialler: the remote's `responder` is next.
        case awaitingResponder
    }

    private var role: Role
    /// Whether this end ended up in the listener's part (always true for a
    /// responder; for a simultaneous open, what the nonces decided).
    public private(set) var actsAsResponder: Bool
    private let limits: MultistreamLimits
    private var receivedHeader = false
    private var finished = false
    /// Bytes of an incomplete message (bounded by the message limit).
    private var pending = ByteBuffer()

    /// Proposes `protocols` in order of preference.
    public static func initiator(protocols: [String], limits: MultistreamLimits = .init()) -> Self {
        Self(role: .initiator(proposals: protocols, next: 0), limits: limits)
    }

    /// Accepts proposals for which `supports` is true.
    public static func responder(
        limits: MultistreamLimits = .init(), supports: @escaping @Sendable (String) -> Bool
    ) -> Self {
        Self(role: .responder(supports: supports, rounds: 0), limits: limits)
    }

    /// Proposes `protocols` after the simultaneous-open extension: with a
    /// listener this is an ordinary initiator's negotiation (one `na` more);
    /// with a remote that dialled us at the same moment, `nonce` against the
    /// remote's decides who is the listener.
    public static func simultaneousOpen(protocols: [String], nonce: UInt64, limits: MultistreamLimits = .init()) -> Self {
        Self(role: .simultaneousOpen(proposals: protocols, nonce: nonce, phase: .awaitingAnswer), limits: limits)
    }

    private init(role: Role, limits: MultistreamLimits) {
        self.role = role
        self.limits = limits
        if case .responder = role { actsAsResponder = true } else { actsAsResponder = false }
    }

    /// The first bytes to send: the header (and the initiator's first proposal).
    public mutating func start(into output: inout ByteBuffer) {
        Self.writeMessage(Self.protocolID, into: &output)
        switch role {
        case .initiator(let proposals, let next) where next < proposals.count:
            Self.writeMessage(proposals[next], into: &output)
        case .simultaneousOpen(let proposals, _, _):
            Self.writeMessage(Self.simultaneousOpenID, into: &output)
            if let first = proposals.first { Self.writeMessage(first, into: &output) }
        default:
            break
        }
    }

    /// Consumes arriving bytes and writes replies to `output`. Returns the agreed
    /// protocol once negotiated; `input` then holds the bytes that followed the
    /// final message (they belong to the next protocol), otherwise it is emptied.
    public mutating func receive(_ input: inout ByteBuffer, output: inout ByteBuffer) throws(MultistreamError) -> String? {
        guard !finished else { throw .alreadyFinished }
        if pending.readableBytes == 0 {
            swap(&pending, &input)
        } else {
            pending.writeBuffer(&input)
        }
        input.clear()
        while let message = try nextMessage() {
            if let agreed = try handle(message, output: &output) {
                finished = true
                input = pending
                pending = ByteBuffer()
                return agreed
            }
        }
        return nil
    }

    private mutating func handle(_ message: String, output: inout ByteBuffer) throws(MultistreamError) -> String? {
        if !receivedHeader {
            guard message == Self.protocolID else { throw .wrongHeader(message) }
            receivedHeader = true
            switch role {
            case .initiator(let proposals, _) where proposals.isEmpty,
                .simultaneousOpen(let proposals, _, _) where proposals.isEmpty:
                throw .protocolsNotSupported([])
            default:
                return nil
            }
        }
        switch role {
        case .simultaneousOpen(let proposals, let nonce, let phase):
            return try handleSimultaneousOpen(message, proposals: proposals, nonce: nonce, phase: phase, output: &output)
        case .initiator(let proposals, let next):
            if message == proposals[next] { return message }
            guard message == "na" else { throw .unexpectedMessage(message) }
            guard next + 1 < proposals.count else { throw .protocolsNotSupported(proposals) }
            role = .initiator(proposals: proposals, next: next + 1)
            Self.writeMessage(proposals[next + 1], into: &output)
            return nil
        case .responder(let supports, let rounds):
            guard rounds < limits.maxRounds else { throw .tooManyRounds(limits.maxRounds) }
            role = .responder(supports: supports, rounds: rounds + 1)
            if message != "na", message != "ls", supports(message) {
                Self.writeMessage(message, into: &output)
                return message
            }
            Self.writeMessage("na", into: &output)
            return nil
        }
    }

    private mutating func handleSimultaneousOpen(
        _ message: String, proposals: [String], nonce: UInt64, phase: SimultaneousOpenPhase, output: inout ByteBuffer
    ) throws(MultistreamError) -> String? {
        func next(_ phase: SimultaneousOpenPhase) {
            role = .simultaneousOpen(proposals: proposals, nonce: nonce, phase: phase)
        }
        switch phase {
        case .awaitingAnswer:
            if message == "na" {
                next(.awaitingFirstAnswer)
            } else if message == Self.simultaneousOpenID {
                Self.writeMessage(Self.tieBreakerPrefix + String(nonce), into: &output)
                next(.skippingProposal)
            } else {
                // A plain dialler's proposal: both ends dialled and only one knows the extension.
                throw .unexpectedMessage(message)
            }
        case .awaitingFirstAnswer:
            // From here on an ordinary initiator whose first proposal is on its way.
            role = .initiator(proposals: proposals, next: 0)
            return try handle(message, output: &output)
        case .skippingProposal:
            next(.awaitingNonce)
        case .awaitingNonce:
            guard message.hasPrefix(Self.tieBreakerPrefix),
                let theirs = UInt64(message.dropFirst(Self.tieBreakerPrefix.count))
            else { throw .unexpectedMessage(message) }
            guard theirs != nonce else { throw .unexpectedMessage("\(message): the same nonce as ours") }
            if theirs > nonce {
                actsAsResponder = true
                Self.writeMessage("responder", into: &output)
                next(.awaitingInitiator)
            } else {
                Self.writeMessage("initiator", into: &output)
                next(.awaitingResponder)
            }
        case .awaitingInitiator:
            guard message == "initiator" else { throw .unexpectedMessage(message) }
            role = .responder(supports: { proposals.contains($0) }, rounds: 0)
        case .awaitingResponder:
            guard message == "responder" else { throw .unexpectedMessage(message) }
            role = .initiator(proposals: proposals, next: 0)
            Self.writeMessage(proposals[0], into: &output)
        }
        return nil
    }

    /// The next complete message in `pending`, nil if more bytes are needed.
    private mutating func nextMessage() throws(MultistreamError) -> String? {
        guard pending.readableBytes > 0 else { return nil }
        let length: UInt64
        let prefixSize: Int
        do {
            (length, prefixSize) = try Varint.decode(pending.readableBytesView)
        } catch {
            if error == .truncated {
                // A length prefix of a message within limits is at most 2 bytes.
                if pending.readableBytes >= Varint.encodedSize(UInt64(limits.maxMessageLength)) {
                    throw .messageTooLong(length: UInt64.max, limit: limits.maxMessageLength)
                }
                return nil
            }
            throw .badLengthPrefix("\(error)")
        }
        guard length <= UInt64(limits.maxMessageLength) else {
            throw .messageTooLong(length: length, limit: limits.maxMessageLength)
        }
        guard pending.readableBytes >= prefixSize + Int(length) else { return nil }
        pending.moveReaderIndex(forwardBy: prefixSize)
        let body = pending.readSlice(length: Int(length))!
        guard body.readableBytes > 0, body.getInteger(at: body.writerIndex - 1, as: UInt8.self) == UInt8(ascii: "\n")
        else { throw .missingNewline }
        guard let text = String(validating: body.readableBytesView.dropLast(), as: UTF8.self) else {
            throw .invalidUTF8
        }
        return text
    }

    /// `varint(len + 1) text '\n'`.
    public static func writeMessage(_ text: String, into output: inout ByteBuffer) {
        let utf8 = text.utf8
        output.writeBytes(Varint.encode(UInt64(utf8.count + 1)))
        output.writeBytes(utf8)
        output.writeInteger(UInt8(ascii: "\n"))
    }
}
