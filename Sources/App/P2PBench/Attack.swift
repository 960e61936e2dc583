import Foundation
import Host
import Identity
import Multiformats
import NIOCore
import Noise
import Transport

/// Attackers hold many sockets: take the hard descriptor limit.
struct Attack {
    let options: AttackOptions
    let group: any EventLoopGroup
    let clock = ContinuousClock()

    var end: ContinuousClock.Instant { startedAt + .milliseconds(Int(options.seconds * 1000)) }
    private let startedAt = ContinuousClock.now

    init(options: AttackOptions, group: any EventLoopGroup) {
        self.options = options
        self.group = group
    }

    var running: Bool { clock.now < end }

    /// The target's p2p address, IP and port.
    func target() throws -> (address: Multiaddr, peer: PeerID, ip: String, port: Int) {
        let address: Multiaddr
        do { address = try Multiaddr(options.target) } catch { throw AttackError.target("\(options.target): \(error)") }
        var ip: String?
        var port: Int?
        var peer: PeerID?
        for component in address.components {
            switch component {
            case .ip4(let bytes): ip = bytes.map(String.init).joined(separator: ".")
            case .tcp(let value): port = Int(value)
            case .p2p(let bytes): peer = try? PeerID(bytes: bytes)
            default: break
            }
        }
        guard let ip, let port, let peer else { throw AttackError.target("\(options.target) is no /ip4/.../tcp/.../p2p/... address") }
        return (address, peer, ip, port)
    }

    /// A fresh identity whose connections leave from `ip` (its listener's
    /// address, dialled from with SO_REUSEPORT as the chat does).
    func attacker(from ip: String) async throws -> Libp2pHost {
        let host = try Libp2pHost(
            key: .generateEd25519(), group: group, transports: [TCPTransport(group: group, reusePort: true)],
            security: [NoiseSecurity()])
        _ = try await host.listen(on: [Multiaddr("/ip4/\(ip)/tcp/0")])
        return host
    }

    /// Waits until the attack's end (or `step`), for loops that refill what the target closed.
    func pause(_ step: Duration = .milliseconds(200)) async {
        let left = end - clock.now
        try? await Task.sleep(for: min(step, max(left, .zero)))
    }

    /// Runs `body` at once for each of `identities` fresh identities (their
    /// connections leave from the first `addresses` source addresses in turn)
    /// and returns what each returned; an identity that cannot listen is left out.
    @discardableResult
    func withIdentities<Result: Sendable>(
        _ identities: Int, from addresses: Int, _ body: @escaping @Sendable (_ index: Int, _ host: Libp2pHost) async -> Result
    ) async -> [Result] {
        await withTaskGroup(of: Result?.self) { tasks in
            for index in 0..<identities {
                let source = options.source(index % addresses)
                tasks.addTask {
                    guard let host = try? await attacker(from: source) else { return nil }
                    return await body(index, host)
                }
            }
            var results: [Result] = []
            for await result in tasks { if let result { results.append(result) } }
            return results
        }
    }

    /// One length-prefixed message of `stream`, or nil after `limit`.
    func readMessage(_ stream: MuxedStream, within limit: Duration) async throws -> ByteBuffer? {
        try await withThrowingTaskGroup(of: ByteBuffer?.self) { race in
            race.addTask {
                var reader = StreamReader(stream)
                return try await reader.readLengthPrefixed(maxLength: 4096)
            }
            race.addTask {
                try await Task.sleep(for: limit)
                return nil
            }
            defer { race.cancelAll() }
            return try await race.next() ?? nil
        }
    }
}
