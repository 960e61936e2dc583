import Foundation

/// A plain TCP socket to 127.0.0.1:`port`, for talking to a server byte by
/// byte (reads time out after `readTimeout` seconds); closed when released.
public final class LoopbackTCPClient {
    public let descriptor: Int32

    public init(port: UInt16, readTimeout: Int = 1, receiveBuffer: Int32? = nil) throws {
        descriptor = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard descriptor >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EMFILE) }
        var timeout = timeval(tv_sec: readTimeout, tv_usec: 0)
        setsockopt(descriptor, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        if var size = receiveBuffer { setsockopt(descriptor, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(descriptor, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let error = POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECONNREFUSED)
            close(descriptor)
            throw error
        }
    }

    deinit { close(descriptor) }

    /// Sends `bytes` (blocking: all of them; else what the socket takes now); returns the bytes sent.
    @discardableResult
    public func send(_ bytes: [UInt8], blocking: Bool = true) -> Int {
        bytes.withUnsafeBytes { Glibc.send(descriptor, $0.baseAddress, $0.count, blocking ? Int32(MSG_NOSIGNAL) : Int32(MSG_NOSIGNAL) | Int32(MSG_DONTWAIT)) }
    }

    /// Everything until the server closes (or the read timeout passes without a byte).
    public func readAll() -> [UInt8] {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, 0) }
            guard count > 0 else { return out }
            out += buffer[..<count]
        }
    }

    /// Whether the server closed the connection within `seconds`: what it
    /// sent is read and dropped until the end of the stream (or a reset).
    public func isClosedByServer(within seconds: Double) -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        var buffer = [UInt8](repeating: 0, count: 65536)
        repeat {
            var poller = pollfd(fd: descriptor, events: Int16(POLLIN), revents: 0)
            let wait = Int32(max(0, deadline.timeIntervalSinceNow) * 1000)
            guard poll(&poller, 1, wait) == 1 else { return false }
            let count = buffer.withUnsafeMutableBytes { recv(descriptor, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if count == 0 || (count < 0 && errno == ECONNRESET) { return true }
        } while Date() < deadline
        return false
    }

    /// Sends `request` to 127.0.0.1:`port` and reads until the server closes (at most `readTimeout` s of silence).
    public static func exchange(port: UInt16, request: String, readTimeout: Int = 10) throws -> String {
        let client = try LoopbackTCPClient(port: port, readTimeout: readTimeout)
        let bytes = Array(request.utf8)
        guard client.send(bytes) == bytes.count else { throw POSIXError(.EIO) }
        return String(decoding: client.readAll(), as: UTF8.self)
    }
}
