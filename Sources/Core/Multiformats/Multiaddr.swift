/// Errors parsing or decoding a multiaddr.
public enum MultiaddrError: Error, CustomStringConvertible, Sendable, Equatable {
    case mustStartWithSlash(String)
    case unknownProtocolName(String)
    case unknownProtocolCode(UInt64)
    case missingValue(protocol: String)
    case invalidValue(protocol: String, value: String)
    case truncated(protocol: String)
    case invalidLength(protocol: String, length: UInt64)
    case varint(VarintError)
    case empty

    public var description: String {
        switch self {
        case .empty: return "empty multiaddr"
        case .mustStartWithSlash(let t): return "multiaddr \"\(t)\" must start with /"
        case .unknownProtocolName(let n): return "unknown multiaddr protocol \"\(n)\""
        case .unknownProtocolCode(let c): return "unknown multiaddr protocol code \(c)"
        case .missingValue(let p): return "multiaddr protocol /\(p) needs a value"
        case .invalidValue(let p, let v): return "invalid value \"\(v)\" for /\(p)"
        case .truncated(let p): return "multiaddr truncated inside /\(p)"
        case .invalidLength(let p, let l): return "invalid length \(l) for /\(p)"
        case .varint(let e): return "multiaddr: \(e)"
        }
    }
}

/// One protocol of a multiaddr with its value.
public enum MultiaddrComponent: Hashable, Sendable {
    case ip4([UInt8])
    case ip6([UInt8])
    case ip6zone(String)
    case tcp(UInt16)
    case udp(UInt16)
    case dccp(UInt16)
    case sctp(UInt16)
    case dns(String)
    case dns4(String)
    case dns6(String)
    case dnsaddr(String)
    /// The peer id's multihash bytes.
    case p2p([UInt8])
    case p2pCircuit
    case quic
    case quicV1
    case ws
    case wss
    case tls
    case noise
    case http
    case https
    case webtransport
    case webrtc
    case webrtcDirect
    case sni(String)
    /// A multihash, written as multibase text.
    case certhash([UInt8])
    case unix(String)
    /// An in-process address (rust-libp2p's memory transport; code 777).
    case memory(UInt64)

    /// The spec's code, name and value size (nil: length-prefixed; 0: no value).
    struct Descriptor {
        let code: UInt64
        let name: String
        let size: Int?
    }

    static let descriptors: [Descriptor] = [
        .init(code: 4, name: "ip4", size: 4),
        .init(code: 6, name: "tcp", size: 2),
        .init(code: 33, name: "dccp", size: 2),
        .init(code: 41, name: "ip6", size: 16),
        .init(code: 42, name: "ip6zone", size: nil),
        .init(code: 53, name: "dns", size: nil),
        .init(code: 54, name: "dns4", size: nil),
        .init(code: 55, name: "dns6", size: nil),
        .init(code: 56, name: "dnsaddr", size: nil),
        .init(code: 132, name: "sctp", size: 2),
        .init(code: 273, name: "udp", size: 2),
        .init(code: 280, name: "webrtc-direct", size: 0),
        .init(code: 281, name: "webrtc", size: 0),
        .init(code: 290, name: "p2p-circuit", size: 0),
        .init(code: 400, name: "unix", size: nil),
        .init(code: 421, name: "p2p", size: nil),
        .init(code: 443, name: "https", size: 0),
        .init(code: 448, name: "tls", size: 0),
        .init(code: 449, name: "sni", size: nil),
        .init(code: 454, name: "noise", size: 0),
        .init(code: 460, name: "quic", size: 0),
        .init(code: 461, name: "quic-v1", size: 0),
        .init(code: 465, name: "webtransport", size: 0),
        .init(code: 466, name: "certhash", size: nil),
        .init(code: 477, name: "ws", size: 0),
        .init(code: 478, name: "wss", size: 0),
        .init(code: 480, name: "http", size: 0),
        .init(code: 777, name: "memory", size: 8),
    ]
    static let byCode: [UInt64: Descriptor] = Dictionary(uniqueKeysWithValues: descriptors.map { ($0.code, $0) })
    static let byName: [String: Descriptor] = {
        var table = Dictionary(uniqueKeysWithValues: descriptors.map { ($0.name, $0) })
        table["ipfs"] = table["p2p"]  // the old name of /p2p
        return table
    }()

    /// The protocol's name in text form (`tcp`, `p2p`, ...).
    public var name: String {
        switch self {
        case .ip4: "ip4"
        case .ip6: "ip6"
        case .ip6zone: "ip6zone"
        case .tcp: "tcp"
        case .udp: "udp"
        case .dccp: "dccp"
        case .sctp: "sctp"
        case .dns: "dns"
        case .dns4: "dns4"
        case .dns6: "dns6"
        case .dnsaddr: "dnsaddr"
        case .p2p: "p2p"
        case .p2pCircuit: "p2p-circuit"
        case .quic: "quic"
        case .quicV1: "quic-v1"
        case .ws: "ws"
        case .wss: "wss"
        case .tls: "tls"
        case .noise: "noise"
        case .http: "http"
        case .https: "https"
        case .webtransport: "webtransport"
        case .webrtc: "webrtc"
        case .webrtcDirect: "webrtc-direct"
        case .sni: "sni"
        case .certhash: "certhash"
        case .unix: "unix"
        case .memory: "memory"
        }
    }

    public var code: UInt64 { Self.byName[name]!.code }

    /// The value's binary form (without the length prefix).
    var valueBytes: [UInt8] {
        switch self {
        case .ip4(let b), .ip6(let b), .p2p(let b), .certhash(let b): return b
        case .tcp(let p), .udp(let p), .dccp(let p), .sctp(let p): return [UInt8(p >> 8), UInt8(p & 0xff)]
        case .memory(let n): return (0..<8).map { UInt8(truncatingIfNeeded: n >> (56 - 8 * $0)) }
        case .ip6zone(let s), .dns(let s), .dns4(let s), .dns6(let s), .dnsaddr(let s), .sni(let s), .unix(let s):
            return Array(s.utf8)
        default: return []
        }
    }

    /// The value's text form, nil for protocols without a value.
    var valueText: String? {
        switch self {
        case .ip4(let b): return IPAddressText.formatIPv4(b)
        case .ip6(let b): return IPAddressText.formatIPv6(b)
        case .tcp(let p), .udp(let p), .dccp(let p), .sctp(let p): return String(p)
        case .memory(let n): return String(n)
        case .ip6zone(let s), .dns(let s), .dns4(let s), .dns6(let s), .dnsaddr(let s), .sni(let s): return s
        case .unix(let s): return s.hasPrefix("/") ? String(s.dropFirst()) : s
        case .p2p(let b): return Base58.encode(b)
        case .certhash(let b): return Multibase.base64url.encode(b)
        default: return nil
        }
    }

    /// Builds a component from its descriptor and binary value.
    static func make(_ descriptor: Descriptor, value: [UInt8]) throws(MultiaddrError) -> MultiaddrComponent {
        func text() throws(MultiaddrError) -> String {
            guard !value.isEmpty, let string = String(validating: value, as: UTF8.self), !string.contains("/") || descriptor.name == "unix"
            else { throw .invalidValue(protocol: descriptor.name, value: "\(value)") }
            return string
        }
        func port() -> UInt16 { UInt16(value[0]) << 8 | UInt16(value[1]) }
        switch descriptor.name {
        case "ip4": return .ip4(value)
        case "ip6": return .ip6(value)
        case "ip6zone": return .ip6zone(try text())
        case "tcp": return .tcp(port())
        case "udp": return .udp(port())
        case "dccp": return .dccp(port())
        case "sctp": return .sctp(port())
        case "memory": return .memory(value.reduce(0) { $0 << 8 | UInt64($1) })
        case "dns": return .dns(try text())
        case "dns4": return .dns4(try text())
        case "dns6": return .dns6(try text())
        case "dnsaddr": return .dnsaddr(try text())
        case "sni": return .sni(try text())
        case "unix": return .unix(try text())
        case "p2p":
            // A peer id's multihash: identity, or SHA-256 of 32 bytes. Text names
            // these alone as bare base58 (`1...`, `Qm...`; anything else is read
            // as a CID), so any other multihash could not be written back as text.
            guard let multihash = try? Multihash(bytes: value),
                multihash.code == Multihash.identity
                    || (multihash.code == Multihash.sha2_256 && multihash.digest.count == 32)
            else {
                throw .invalidValue(protocol: "p2p", value: Base58.encode(value))
            }
            return .p2p(value)
        case "certhash":
            guard (try? Multihash(bytes: value)) != nil else {
                throw .invalidValue(protocol: "certhash", value: Multibase.base64url.encode(value))
            }
            return .certhash(value)
        case "p2p-circuit": return .p2pCircuit
        case "quic": return .quic
        case "quic-v1": return .quicV1
        case "ws": return .ws
        case "wss": return .wss
        case "tls": return .tls
        case "noise": return .noise
        case "http": return .http
        case "https": return .https
        case "webtransport": return .webtransport
        case "webrtc": return .webrtc
        case "webrtc-direct": return .webrtcDirect
        default: throw .unknownProtocolName(descriptor.name)
        }
    }

    /// Builds a component from its text value.
    static func parse(_ descriptor: Descriptor, text: Substring) throws(MultiaddrError) -> MultiaddrComponent {
        let name = descriptor.name
        let invalid = MultiaddrError.invalidValue(protocol: name, value: String(text))
        switch name {
        case "ip4":
            guard let bytes = IPAddressText.parseIPv4(text) else { throw invalid }
            return .ip4(bytes)
        case "ip6":
            guard let bytes = IPAddressText.parseIPv6(text) else { throw invalid }
            return .ip6(bytes)
        case "tcp", "udp", "dccp", "sctp":
            guard text.allSatisfy({ $0.isASCII && $0.isNumber }), let port = UInt16(text) else { throw invalid }
            return try make(descriptor, value: [UInt8(port >> 8), UInt8(port & 0xff)])
        case "memory":
            guard text.allSatisfy({ $0.isASCII && $0.isNumber }), let n = UInt64(text) else { throw invalid }
            return .memory(n)
        case "p2p":
            do {
                let bytes: [UInt8]
                if text.hasPrefix("Qm") || text.hasPrefix("1") {
                    bytes = try Base58.decode(text)
                } else {
                    bytes = try LibP2PKeyCID.decode(String(text)).bytes
                }
                return try make(descriptor, value: bytes)
            } catch {
                throw invalid
            }
        case "certhash":
            guard let (_, bytes) = try? Multibase.decode(String(text)) else { throw invalid }
            return try make(descriptor, value: bytes)
        default:
            guard !text.isEmpty else { throw invalid }
            return try make(descriptor, value: Array(text.utf8))
        }
    }
}

/// A multiaddr: a sequence of protocol components, in text (`/ip4/1.2.3.4/tcp/80`)
/// and binary forms.
public struct Multiaddr: Hashable, Sendable, CustomStringConvertible {
    public private(set) var components: [MultiaddrComponent]

    /// Longest text or binary form accepted (a peer must not make us parse megabytes).
    public static let maxLength = 1024

    public init(_ components: [MultiaddrComponent]) {
        self.components = components
    }

    /// Parses the text form.
    public init(_ text: String) throws(MultiaddrError) {
        guard text.utf8.count <= Self.maxLength else { throw .invalidLength(protocol: "multiaddr", length: UInt64(text.utf8.count)) }
        guard text.hasPrefix("/") else { throw .mustStartWithSlash(text) }
        guard text != "/" else { throw .empty }
        var parts = text.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        // A single trailing slash is tolerated.
        if parts.last == "" { parts = parts.dropLast() }
        var components: [MultiaddrComponent] = []
        while let name = parts.popFirst() {
            guard let descriptor = MultiaddrComponent.byName[String(name)] else {
                throw .unknownProtocolName(String(name))
            }
            if descriptor.size == 0 {
                components.append(try MultiaddrComponent.make(descriptor, value: []))
                continue
            }
            if descriptor.name == "unix" {
                // The rest of the address is the path.
                guard !parts.isEmpty else { throw .missingValue(protocol: "unix") }
                let path = "/" + parts.joined(separator: "/")
                parts.removeAll()
                components.append(.unix(path))
                continue
            }
            guard let value = parts.popFirst() else { throw .missingValue(protocol: descriptor.name) }
            components.append(try MultiaddrComponent.parse(descriptor, text: value))
        }
        self.components = components
    }

    /// Decodes the binary form.
    public init(bytes: some Collection<UInt8>) throws(MultiaddrError) {
        let input = Array(bytes)
        guard !input.isEmpty else { throw .empty }
        guard input.count <= Self.maxLength else { throw .invalidLength(protocol: "multiaddr", length: UInt64(input.count)) }
        var offset = 0
        var components: [MultiaddrComponent] = []
        while offset < input.count {
            let code: UInt64
            let codeSize: Int
            do { (code, codeSize) = try Varint.decode(input[offset...]) } catch { throw .varint(error) }
            offset += codeSize
            guard let descriptor = MultiaddrComponent.byCode[code] else { throw .unknownProtocolCode(code) }
            var length: Int
            if let size = descriptor.size {
                length = size
            } else {
                let declared: UInt64
                let prefixSize: Int
                do { (declared, prefixSize) = try Varint.decode(input[offset...]) } catch {
                    if error == .truncated { throw .truncated(protocol: descriptor.name) }
                    throw .varint(error)
                }
                guard declared <= UInt64(input.count - offset - prefixSize) else {
                    throw .truncated(protocol: descriptor.name)
                }
                offset += prefixSize
                length = Int(declared)
            }
            guard input.count - offset >= length else { throw .truncated(protocol: descriptor.name) }
            components.append(try MultiaddrComponent.make(descriptor, value: Array(input[offset..<(offset + length)])))
            offset += length
        }
        self.components = components
    }

    /// The binary form.
    public var bytes: [UInt8] {
        var out: [UInt8] = []
        for component in components {
            let descriptor = MultiaddrComponent.byName[component.name]!
            Varint.append(descriptor.code, to: &out)
            let value = component.valueBytes
            if descriptor.size == nil { Varint.append(UInt64(value.count), to: &out) }
            out.append(contentsOf: value)
        }
        return out
    }

    public var description: String {
        components.map { component in
            if let value = component.valueText { return "/\(component.name)/\(value)" }
            return "/\(component.name)"
        }.joined()
    }

    /// This address followed by `component`.
    public func encapsulating(_ component: MultiaddrComponent) -> Multiaddr {
        Multiaddr(components + [component])
    }

    /// This address followed by `other`.
    public func encapsulating(_ other: Multiaddr) -> Multiaddr {
        Multiaddr(components + other.components)
    }

    /// This address without a trailing `/p2p/<id>`.
    /// The text of the first `/ip4` or `/ip6` component (canonical form), nil if there is none.
    public var ipAddressText: String? {
        for component in components {
            switch component {
            case .ip4(let bytes): return IPAddressText.formatIPv4(bytes)
            case .ip6(let bytes): return IPAddressText.formatIPv6(bytes)
            default: continue
            }
        }
        return nil
    }

    public var withoutP2P: Multiaddr {
        guard case .p2p = components.last else { return self }
        return Multiaddr(Array(components.dropLast()))
    }

    /// `/ip4|ip6/<ip>/udp/<port>/quic-v1`, a trailing `/p2p/<id>` allowed:
    /// QUIC v1 at an IP address (what hole punches and AutoNAT dial back).
    public var isQUICv1AtIP: Bool {
        let parts = withoutP2P.components
        guard parts.count == 3, case .udp = parts[1], case .quicV1 = parts[2] else { return false }
        switch parts[0] {
        case .ip4, .ip6: return true
        default: return false
        }
    }

    /// The multihash of the trailing `/p2p/<id>`, if any.
    public var p2pMultihash: [UInt8]? {
        guard case .p2p(let bytes) = components.last else { return nil }
        return bytes
    }
}
