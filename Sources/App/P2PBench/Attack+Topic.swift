import FileShare
import Foundation
import Host
import Multiformats
import NIOCore
import PubSub

/// Attacks through pubsub and the chat topic: incomplete RPCs, large lines, file offers.
extension Attack {
    // MARK: Pubsub: RPCs held incomplete

    /// 64 peer ids from 4 addresses each open a pubsub stream and send half of
    /// an RPC announcing the largest size taken, then nothing; when the target
    /// resets one (its 30 s, or the shared 64 MiB), the peer starts another.
    func holdIncompleteRPCs() async throws -> String {
        let (address, peer, _, _) = try target()
        let identities = 64
        let announced = PubSubConfiguration().maxRPCSize
        let started = AttackCounter()
        let dropped = AttackCounter()
        let end = self.end
        await withIdentities(identities, from: 4) { _, host in
            while ContinuousClock.now < end {
                guard (try? await host.connect(address)) != nil,
                    let stream = try? await host.newStream(to: peer, protocols: [PubSubProtocol.meshsub11])
                else {
                    try? await Task.sleep(for: .seconds(1))
                    continue
                }
                do {
                    try await stream.write(HostileFrames.incompleteRPC(announcing: announced, sending: announced / 2))
                    started.add()
                    // Held until the target ends it (a read ends or fails) or the attack does.
                    _ = try await readMessage(stream, within: end - ContinuousClock.now)
                    if ContinuousClock.now < end { dropped.add() }
                } catch {
                    dropped.add()
                }
                stream.reset()
            }
            await host.close()
        }
        return "\(identities) peer ids from 4 addresses started \(started.value) RPCs of \(announced) bytes, sending half; "
            + "\(dropped.value) dropped by the target"
    }

    // MARK: Row 4: large lines into history

    /// 16 peer ids from 2 addresses each publish on the topic a line of
    /// 256 KiB every 2 s: the chats show them, and the target's history keeps
    /// them up to its caps (8 MiB per author, 64 MiB in all).
    func publishLargeLines() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 16
        let line = [UInt8](repeating: UInt8(ascii: "x"), count: 256 * 1024)
        let published = AttackCounter()
        let reachedNobody = AttackCounter()
        let topic = options.topic
        let end = self.end
        await withIdentities(identities, from: 2) { _, host in
            await onTopic(host, connectingTo: address) { pubsub in
                while ContinuousClock.now < end {
                    let sentTo = (try? await pubsub.publish(topic, data: line)) ?? 0
                    if sentTo > 0 { published.add() } else { reachedNobody.add() }
                    try? await Task.sleep(for: .seconds(2))
                }
            }
        }
        return "\(identities) peer ids from 2 addresses published \(published.value) lines of 256 KiB on \(topic) "
            + "(\(reachedNobody.value) reached nobody)"
    }

    // MARK: Row 11: file offers to --accept-files

    /// 16 peer ids from 2 addresses each offer 40 distinct files of 256 KiB
    /// (a line `/file CID SIZE NAME` on the topic, as `/send` does) and serve
    /// them: a chat with --accept-files fetches within its shares (25 files a
    /// peer, 100 a session), and lists the rest.
    func offerFiles() async throws -> String {
        let (address, _, _, _) = try target()
        let identities = 16
        let filesEach = 40
        let size = 256 * 1024
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("p2pbench-attack-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let offered = AttackCounter()
        let topic = options.topic
        let end = self.end
        await withIdentities(identities, from: 2) { index, host in
            let files = FileShareService(host: host)
            files.start()
            await onTopic(host, connectingTo: address) { pubsub in
                for number in 0..<filesEach where ContinuousClock.now < end {
                    // Distinct bytes, so distinct CIDs: each is an offer of its own.
                    var bytes = [UInt8](repeating: 0, count: size)
                    withUnsafeBytes(of: (index, number)) { bytes.replaceSubrange(0..<$0.count, with: $0) }
                    let path = directory.appendingPathComponent("\(index)-\(number).bin").path
                    guard FileManager.default.createFile(atPath: path, contents: Data(bytes)),
                        let offer = try? await files.offer(path: path)
                    else { continue }
                    if ((try? await pubsub.publish(topic, data: Array(offer.announcement.utf8))) ?? 0) > 0 { offered.add() }
                }
                // Served until the attack ends.
                while ContinuousClock.now < end { try? await Task.sleep(for: .milliseconds(500)) }
            }
        }
        return "\(identities) peer ids from 2 addresses offered \(offered.value) files of 256 KiB on \(topic) and served them"
    }

    /// Runs `body` with pubsub on `host` (on no topic: what it publishes goes
    /// through fanout to the peers on the topic, and it receives nothing),
    /// once `host` is connected to the target and the subscriptions had time
    /// to be exchanged; then stops pubsub and closes `host`.
    func onTopic(_ host: Libp2pHost, connectingTo address: Multiaddr, _ body: (PubSubService) async -> Void) async {
        if let pubsub = try? PubSubService(host: host) {
            pubsub.start()
            _ = try? await host.connect(address)
            try? await Task.sleep(for: .seconds(2))  // the subscription exchange
            await body(pubsub)
            await pubsub.stop()
        }
        await host.close()
    }
}
