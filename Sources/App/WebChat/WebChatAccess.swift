import Foundation

/// Who may use the web chat: requests must carry the run's random token
/// (`?token=`, as Jupyter prints it), and a request a browser sends from a
/// page (it then names its `Origin`) must come from the chat's own page.
/// Without this, any web site the user visits could drive the chat through
/// the browser (a cross-site WebSocket or POST), or a site that makes its name
/// resolve to 127.0.0.1 could read it (DNS rebinding).
public struct WebChatAccess: Sendable, Equatable {
    public let token: String
    /// The `host:port` names the page may be reached at (the `Host` header a
    /// browser sends); nil: any (the chat listens on every interface, whose
    /// addresses we cannot all name).
    public let hosts: Set<String>?

    public init(token: String, hosts: Set<String>?) {
        self.token = token
        self.hosts = hosts
    }

    /// The access for a server bound to `host`:`port`: on loopback or a named
    /// address, that address (and the loopback names on loopback); on a
    /// wildcard address, any host name (the token still guards it).
    public static func forServer(host: String, port: Int, token: String) -> WebChatAccess {
        let bare = host.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
        if bare == "0.0.0.0" || bare == "::" { return WebChatAccess(token: token, hosts: nil) }
        var names: Set<String> = [Self.hostPort(bare, port)]
        if bare == "127.0.0.1" || bare == "::1" || bare == "localhost" {
            names.formUnion(["127.0.0.1", "::1", "localhost"].map { Self.hostPort($0, port) })
        }
        return WebChatAccess(token: token, hosts: names)
    }

    /// `host:port` as a Host header and a URL write it (IPv6 in brackets).
    public static func hostPort(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// A fresh token: 24 random bytes, hex (what the user copies with the URL).
    public static func randomToken() -> String {
        var generator = SystemRandomNumberGenerator()
        return (0..<24).map { _ in String(format: "%02x", UInt8.random(in: .min ... .max, using: &generator)) }.joined()
    }

    /// Why a request is refused.
    public enum Refusal: Error, Equatable, CustomStringConvertible, Sendable {
        case missingToken
        case wrongToken
        case unknownHost(String)
        case foreignOrigin(String)

        public var description: String {
            switch self {
            case .missingToken: "no token: open the URL the chat printed (it ends in ?token=...)"
            case .wrongToken: "wrong token: open the URL the chat printed at this run's start"
            case .unknownHost(let host): "not served to host \(host)"
            case .foreignOrigin(let origin): "requests from \(origin) are refused: only the chat's own page may use it"
            }
        }
    }

    /// Checks one request: its target (`/path?query`), and its `Host` and `Origin` headers.
    public func check(target: String, host: String?, origin: String?) -> Refusal? {
        guard let given = Self.queryValue("token", in: target) else { return .missingToken }
        guard Self.constantTimeEqual(given, token) else { return .wrongToken }
        let hostName = (host ?? "").lowercased()
        if let hosts, !hosts.contains(hostName) { return .unknownHost(hostName) }
        // Browsers send Origin with every WebSocket and POST from a page; a
        // program (curl, a test) may send none. "null" (a sandboxed or file page) is another origin.
        if let origin, origin.lowercased() != "http://\(hostName)" { return .foreignOrigin(origin) }
        return nil
    }

    /// The value of `name` in the target's query, percent-decoded.
    public static func queryValue(_ name: String, in target: String) -> String? {
        guard let mark = target.firstIndex(of: "?") else { return nil }
        for pair in target[target.index(after: mark)...].split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            guard parts.count == 2, parts[0] == name else { continue }
            return String(parts[1]).replacingOccurrences(of: "+", with: " ").removingPercentEncoding
        }
        return nil
    }

    /// The target's path, without its query.
    public static func path(of target: String) -> Substring {
        target.prefix { $0 != "?" }
    }

    /// Compares without stopping at the first difference, so timing says nothing of the token.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8)
        let y = Array(b.utf8)
        guard x.count == y.count else { return false }
        var difference: UInt8 = 0
        for index in x.indices { difference |= x[index] ^ y[index] }
        return difference == 0
    }
}
