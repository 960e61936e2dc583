/// Errors decoding a DNS message; each names what was wrong and where.
public enum DNSError: Error, CustomStringConvertible, Sendable, Equatable {
    case truncated(at: Int)
    case packetTooLarge(Int)
    case labelTooLong(Int)
    case nameTooLong
    case pointerLoop(at: Int)
    case badPointer(at: Int)
    case countBeyondPacket(String, Int)
    case badRecordData(type: UInt16, length: Int)
    case badLabelType(at: Int)

    public var description: String {
        switch self {
        case .truncated(let offset): return "DNS packet truncated at byte \(offset)"
        case .packetTooLarge(let size): return "DNS packet of \(size) bytes is too large"
        case .labelTooLong(let length): return "DNS label of \(length) bytes exceeds 63"
        case .nameTooLong: return "DNS name exceeds 255 bytes"
        case .pointerLoop(let offset): return "DNS name compression loops at byte \(offset)"
        case .badPointer(let offset): return "DNS compression pointer at byte \(offset) does not point backwards"
        case .countBeyondPacket(let section, let count): return "DNS \(section) count \(count) exceeds what the packet holds"
        case .badRecordData(let type, let length): return "DNS record of type \(type) has \(length) data bytes"
        case .badLabelType(let offset): return "DNS label type at byte \(offset) is reserved"
        }
    }
}

/// A domain name as labels (`["_p2p", "_udp", "local"]`); compared case-insensitively.
public struct DNSName: Hashable, Sendable, CustomStringConvertible {
    public let labels: [String]

    public init(_ labels: [String]) {
        self.labels = labels
    }

    public init(_ dotted: String) {
        labels = dotted.split(separator: ".").map(String.init)
    }

    public var description: String { labels.joined(separator: ".") }

    public static func == (lhs: DNSName, rhs: DNSName) -> Bool {
        lhs.labels.map { $0.lowercased() } == rhs.labels.map { $0.lowercased() }
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(labels.map { $0.lowercased() })
    }
}

/// The DNS record types mDNS discovery uses (RFC 1035, RFC 3596, RFC 6763).
public enum DNSType {
    public static let a: UInt16 = 1
    public static let ptr: UInt16 = 12
    public static let txt: UInt16 = 16
    public static let aaaa: UInt16 = 28
    public static let srv: UInt16 = 33
}

/// The data of a resource record.
public enum DNSRecordData: Hashable, Sendable {
    case ptr(DNSName)
    /// Character strings, each at most 255 bytes.
    case txt([[UInt8]])
    case a([UInt8])
    case aaaa([UInt8])
    case srv(priority: UInt16, weight: UInt16, port: UInt16, target: DNSName)
    case other(type: UInt16, data: [UInt8])

    public var type: UInt16 {
        switch self {
        case .ptr: DNSType.ptr
        case .txt: DNSType.txt
        case .a: DNSType.a
        case .aaaa: DNSType.aaaa
        case .srv: DNSType.srv
        case .other(let type, _): type
        }
    }
}

/// A question of a DNS message: a name and a record type.
public struct DNSQuestion: Hashable, Sendable {
    public var name: DNSName
    public var type: UInt16
    /// mDNS: the asker would take a unicast answer (top bit of the class).
    public var unicastResponse: Bool

    public init(name: DNSName, type: UInt16, unicastResponse: Bool = false) {
        self.name = name
        self.type = type
        self.unicastResponse = unicastResponse
    }
}

/// A resource record of a DNS message (answer, authority or additional section).
public struct DNSRecord: Hashable, Sendable {
    public var name: DNSName
    public var ttl: UInt32
    /// mDNS: this record replaces cached ones (top bit of the class).
    public var cacheFlush: Bool
    public var data: DNSRecordData

    public init(name: DNSName, ttl: UInt32, cacheFlush: Bool = false, data: DNSRecordData) {
        self.name = name
        self.ttl = ttl
        self.cacheFlush = cacheFlush
        self.data = data
    }
}

/// A DNS message (RFC 1035) as mDNS uses it.
public struct DNSMessage: Hashable, Sendable {
    /// Largest packet we decode or build (mDNS allows up to 9000 bytes).
    public static let maxSize = 9000
    static let maxPointerJumps = 64

    public var id: UInt16 = 0
    public var flags: UInt16 = 0
    public var questions: [DNSQuestion] = []
    public var answers: [DNSRecord] = []
    public var authorities: [DNSRecord] = []
    public var additionals: [DNSRecord] = []

    public var isResponse: Bool {
        get { flags & 0x8000 != 0 }
        set { flags = newValue ? flags | 0x8400 : flags & ~0x8400 }  // QR and AA
    }

    public init() {}

    // MARK: Encoding

    /// The wire form, with name compression.
    public func encoded() -> [UInt8] {
        var writer = Writer()
        writer.u16(id)
        writer.u16(flags)
        writer.u16(UInt16(questions.count))
        writer.u16(UInt16(answers.count))
        writer.u16(UInt16(authorities.count))
        writer.u16(UInt16(additionals.count))
        for question in questions {
            writer.name(question.name)
            writer.u16(question.type)
            writer.u16(1 | (question.unicastResponse ? 0x8000 : 0))
        }
        for record in answers + authorities + additionals {
            writer.name(record.name)
            writer.u16(record.data.type)
            writer.u16(1 | (record.cacheFlush ? 0x8000 : 0))
            writer.u32(record.ttl)
            let lengthAt = writer.bytes.count
            writer.u16(0)
            switch record.data {
            case .ptr(let target): writer.name(target)
            case .txt(let strings):
                for string in strings {
                    let clipped = string.prefix(255)
                    writer.bytes.append(UInt8(clipped.count))
                    writer.bytes += clipped
                }
                if strings.isEmpty { writer.bytes.append(0) }
            case .a(let bytes), .aaaa(let bytes): writer.bytes += bytes
            case .srv(let priority, let weight, let port, let target):
                writer.u16(priority)
                writer.u16(weight)
                writer.u16(port)
                writer.name(target, compress: false)
            case .other(_, let data): writer.bytes += data
            }
            let length = writer.bytes.count - lengthAt - 2
            writer.bytes[lengthAt] = UInt8(length >> 8)
            writer.bytes[lengthAt + 1] = UInt8(length & 0xff)
        }
        return writer.bytes
    }

    struct Writer {
        var bytes: [UInt8] = []
        /// Where each name suffix was written, for compression pointers.
        var suffixes: [[String]: Int] = [:]

        mutating func u16(_ value: UInt16) {
            bytes.append(UInt8(value >> 8))
            bytes.append(UInt8(value & 0xff))
        }

        mutating func u32(_ value: UInt32) {
            u16(UInt16(value >> 16))
            u16(UInt16(value & 0xffff))
        }

        mutating func name(_ name: DNSName, compress: Bool = true) {
            var labels = name.labels
            while !labels.isEmpty {
                let key = labels.map { $0.lowercased() }
                if compress, let offset = suffixes[key], offset < 0x3fff {
                    u16(0xc000 | UInt16(offset))
                    return
                }
                if bytes.count < 0x3fff { suffixes[key] = bytes.count }
                let label = Array(labels.removeFirst().utf8.prefix(63))
                bytes.append(UInt8(label.count))
                bytes += label
            }
            bytes.append(0)
        }
    }

    // MARK: Decoding

    /// Decodes a packet, refusing anything malformed or oversized.
    public init(bytes: [UInt8]) throws(DNSError) {
        guard bytes.count <= Self.maxSize else { throw .packetTooLarge(bytes.count) }
        var reader = Reader(bytes: bytes)
        id = try reader.u16()
        flags = try reader.u16()
        let counts = [try reader.u16(), try reader.u16(), try reader.u16(), try reader.u16()]
        // A question takes at least 5 bytes, a record at least 11: refuse counts
        // the packet cannot hold before allocating anything for them.
        let remaining = bytes.count - reader.offset
        guard Int(counts[0]) * 5 <= remaining else { throw .countBeyondPacket("question", Int(counts[0])) }
        let records = Int(counts[1]) + Int(counts[2]) + Int(counts[3])
        guard records * 11 <= remaining else { throw .countBeyondPacket("record", records) }
        for _ in 0..<counts[0] {
            let name = try reader.readName()
            let type = try reader.u16()
            let klass = try reader.u16()
            questions.append(DNSQuestion(name: name, type: type, unicastResponse: klass & 0x8000 != 0))
        }
        answers = try (0..<Int(counts[1])).map { _ throws(DNSError) in try reader.record() }
        authorities = try (0..<Int(counts[2])).map { _ throws(DNSError) in try reader.record() }
        additionals = try (0..<Int(counts[3])).map { _ throws(DNSError) in try reader.record() }
    }

    struct Reader {
        let bytes: [UInt8]
        var offset = 0

        mutating func u8() throws(DNSError) -> UInt8 {
            guard offset < bytes.count else { throw .truncated(at: offset) }
            defer { offset += 1 }
            return bytes[offset]
        }

        mutating func u16() throws(DNSError) -> UInt16 {
            UInt16(try u8()) << 8 | UInt16(try u8())
        }

        mutating func u32() throws(DNSError) -> UInt32 {
            UInt32(try u16()) << 16 | UInt32(try u16())
        }

        mutating func take(_ count: Int) throws(DNSError) -> [UInt8] {
            guard count <= bytes.count - offset else { throw .truncated(at: bytes.count) }
            defer { offset += count }
            return Array(bytes[offset..<(offset + count)])
        }

        /// A name at the current offset, following compression pointers backwards only.
        mutating func readName() throws(DNSError) -> DNSName {
            var labels: [String] = []
            var length = 0
            var position = offset
            var jumped = false
            var jumps = 0
            while true {
                guard position < bytes.count else { throw .truncated(at: position) }
                let byte = bytes[position]
                switch byte & 0xc0 {
                case 0xc0:
                    guard position + 1 < bytes.count else { throw .truncated(at: position + 1) }
                    let target = Int(byte & 0x3f) << 8 | Int(bytes[position + 1])
                    // Only earlier bytes: this alone rules out loops.
                    guard target < position else { throw .badPointer(at: position) }
                    jumps += 1
                    guard jumps <= DNSMessage.maxPointerJumps else { throw .pointerLoop(at: position) }
                    if !jumped { offset = position + 2 }
                    jumped = true
                    position = target
                case 0x00:
                    let count = Int(byte)
                    if count == 0 {
                        if !jumped { offset = position + 1 }
                        return DNSName(labels)
                    }
                    guard position + 1 + count <= bytes.count else { throw .truncated(at: bytes.count) }
                    length += count + 1
                    guard length <= 255 else { throw .nameTooLong }
                    let label = bytes[(position + 1)...(position + count)]
                    labels.append(String(decoding: label, as: UTF8.self))
                    position += 1 + count
                case 0x40:
                    // A "length" of 64-127: a label over 63 bytes (or the reserved extended type).
                    throw .labelTooLong(Int(byte))
                default:
                    throw .badLabelType(at: position)
                }
            }
        }

        mutating func record() throws(DNSError) -> DNSRecord {
            let name = try readName()
            let type = try u16()
            let klass = try u16()
            let ttl = try u32()
            let length = Int(try u16())
            guard length <= bytes.count - offset else { throw .truncated(at: bytes.count) }
            let end = offset + length
            let data: DNSRecordData
            switch type {
            case DNSType.ptr:
                data = .ptr(try readName())
            case DNSType.txt:
                var strings: [[UInt8]] = []
                while offset < end {
                    let count = Int(try u8())
                    guard offset + count <= end else { throw .badRecordData(type: type, length: length) }
                    strings.append(try take(count))
                }
                data = .txt(strings)
            case DNSType.a:
                guard length == 4 else { throw .badRecordData(type: type, length: length) }
                data = .a(try take(4))
            case DNSType.aaaa:
                guard length == 16 else { throw .badRecordData(type: type, length: length) }
                data = .aaaa(try take(16))
            case DNSType.srv:
                guard length >= 7 else { throw .badRecordData(type: type, length: length) }
                let priority = try u16()
                let weight = try u16()
                let port = try u16()
                data = .srv(priority: priority, weight: weight, port: port, target: try readName())
            default:
                data = .other(type: type, data: try take(length))
            }
            guard offset == end else { throw .badRecordData(type: type, length: length) }
            return DNSRecord(name: name, ttl: ttl, cacheFlush: klass & 0x8000 != 0, data: data)
        }
    }
}
