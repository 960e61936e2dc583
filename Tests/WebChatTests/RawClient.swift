import Foundation
import Glibc
import TestSupport

/// Runs blocking socket work on a thread of its own, not on the cooperative pool
/// (whose few threads the server's tasks need meanwhile).
func onThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread { continuation.resume(with: Result { try work() }) }.start()
    }
}

struct RawClientError: Error, CustomStringConvertible {
    let description: String
}

/// A blocking HTTP/WebSocket client over one TCP connection to 127.0.0.1, with a
/// read timeout: enough to send what a browser (or an attacker) would, byte for byte.
final class RawClient: Sendable {
    let fd: Int32

    init(port: Int, timeoutSeconds: Int = 10) throws {
        fd = rawConnect(port: port)
        guard fd >= 0 else { throw RawClientError(description: "cannot connect to port \(port)") }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func write(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw RawClientError(description: "write failed: errno \(errno)") }
            offset += n
        }
    }

    func read(count: Int) throws -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: count)
        while out.count < count {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, count - out.count) }
            guard n > 0 else { throw RawClientError(description: n == 0 ? "closed by the server" : "read failed: errno \(errno)") }
            out += buffer[0..<n]
        }
        return out
    }

    /// Reads an HTTP response head (to the blank line): its status and headers' text.
    func readHead() throws -> (status: Int, head: String) {
        var bytes: [UInt8] = []
        while !bytes.suffix(4).elementsEqual([13, 10, 13, 10]) {
            bytes += try read(count: 1)
            guard bytes.count < 16 * 1024 else { throw RawClientError(description: "response head too long") }
        }
        let head = String(decoding: bytes, as: UTF8.self)
        let status = head.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
        return (status, head)
    }

    /// The whole answer to a one-request connection (the server closes it): status and body.
    func readResponse() throws -> (status: Int, body: String) {
        let (status, head) = try readHead()
        let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
            .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
        return (status, String(decoding: try read(count: length), as: UTF8.self))
    }

    func request(_ method: String, _ target: String, host: String, headers: [String] = [], body: [UInt8] = []) throws {
        var text = "\(method) \(target) HTTP/1.1\r\nHost: \(host)\r\n"
        for header in headers { text += header + "\r\n" }
        if !body.isEmpty || method == "POST" { text += "Content-Length: \(body.count)\r\n" }
        try write(Array((text + "\r\n").utf8) + body)
    }

    /// Asks for the WebSocket upgrade; the response's status (101 when upgraded).
    func upgrade(_ target: String, host: String, origin: String?) throws -> Int {
        var headers = [
            "Upgrade: websocket", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        ]
        if let origin { headers.append("Origin: \(origin)") }
        try request("GET", target, host: host, headers: headers)
        return try readHead().status
    }

    /// Sends one frame as a browser does (masked).
    func sendFrame(opcode: UInt8, _ payload: [UInt8], fin: Bool = true) throws {
        var frame: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        if payload.count < 126 {
            frame.append(0x80 | UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            frame += [0x80 | 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)]
        } else {
            frame.append(0x80 | 127)
            frame += (0..<8).reversed().map { UInt8((UInt64(payload.count) >> (UInt64($0) * 8)) & 0xFF) }
        }
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        frame += mask
        frame += payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
        try write(frame)
    }

    func sendText(_ text: String) throws { try sendFrame(opcode: 1, Array(text.utf8)) }

    /// Reads one frame from the server (unmasked): its opcode and payload.
    func readFrame() throws -> (opcode: UInt8, payload: [UInt8]) {
        let head = try read(count: 2)
        var length = Int(head[1] & 0x7F)
        if length == 126 {
            let bytes = try read(count: 2)
            length = Int(bytes[0]) << 8 | Int(bytes[1])
        } else if length == 127 {
            length = try read(count: 8).reduce(0) { $0 << 8 | Int($1) }
        }
        return (head[0] & 0x0F, try read(count: length))
    }

    /// Reads text frames until an event named `name`; its JSON text. Throws on a close or timeout.
    func readEvent(_ name: String) throws -> String {
        while true {
            let (opcode, payload) = try readFrame()
            if opcode == 8 { throw RawClientError(description: "closed: \(String(decoding: payload.dropFirst(2), as: UTF8.self))") }
            guard opcode == 1, json(String(decoding: payload, as: UTF8.self))["event"] as? String == name else { continue }
            return String(decoding: payload, as: UTF8.self)
        }
    }

    /// Reads until the server's close frame: its code and reason.
    func readClose() throws -> (code: Int, reason: String) {
        while true {
            let (opcode, payload) = try readFrame()
            guard opcode == 8 else { continue }
            let code = payload.count >= 2 ? Int(payload[0]) << 8 | Int(payload[1]) : 0
            return (code, String(decoding: payload.dropFirst(2), as: UTF8.self))
        }
    }
}

/// A JSON object's fields (empty if the text is no object).
func json(_ text: String) -> [String: Any] {
    (try? JSONSerialization.jsonObject(with: Data(text.utf8))) as? [String: Any] ?? [:]
}
