import ArgumentParser
import AutoNAT
import ChatHistory
import DCUtR
import Dispatch
import FileShare
import KadDHT
import Foundation
import Host
import Identify
import Identity
import MDNS
import Multiformats
import PubSub
import Relay
import Synchronization
import Transport

/// Dials `address` and redials with exponential backoff (1 s to 30 s) whenever
/// the connection is missing, until cancelled.
func keepConnected(_ address: Multiaddr, host: Libp2pHost, out: ChatOutput) async {
    guard let peer = address.peerID else { return }
    var delay = Duration.seconds(1)
    while !Task.isCancelled {
        if let connection = host.connection(to: peer) {
            delay = .seconds(1)
            await waitUntilClosed(connection)
            continue
        }
        do {
            _ = try await host.connect(address)
            delay = .seconds(1)
        } catch {
            // Cancelled: the chat is shutting down, nothing to report.
            guard !Task.isCancelled else { return }
            out.error("\(dialFailure("\(address)", error)); retrying in \(delay.components.seconds) s")
            try? await Task.sleep(for: delay)
            delay = min(delay * 2, .seconds(30))
        }
    }
}

/// Returns when `connection` closes, or at once when the task is cancelled
/// (waiting on the close future itself would ignore cancellation).
func waitUntilClosed(_ connection: Connection) async {
    let (closed, signal) = AsyncStream.makeStream(of: Void.self)
    connection.closeFuture.whenComplete { _ in signal.finish() }
    for await _ in closed {}
}

/// Peers found by mDNS stay connected: one that drops while mDNS still sees
/// it (a link that flapped for less than the records' TTL reports nothing new)
/// is redialled with backoff, until connected or no longer seen.
func keepLocalPeersConnected(_ events: AsyncStream<HostEvent>, host: Libp2pHost, mdns: MDNSService) async {
    await withTaskGroup(of: Void.self) { group in
        for await event in events {
            guard case .peerDisconnected(let peer) = event else { continue }
            group.addTask { await redialWhileSeen(peer, host: host, mdns: mdns) }
        }
        group.cancelAll()
    }
}

/// Dials `peer` until connected, waiting before each attempt (1 s, doubling
/// to 30 s), for as long as mDNS still sees it and no connection exists.
func redialWhileSeen(_ peer: PeerID, host: Libp2pHost, mdns: MDNSService) async {
    var delay = Duration.seconds(1)
    while !Task.isCancelled {
        try? await Task.sleep(for: delay)
        guard !Task.isCancelled, host.connection(to: peer) == nil, await mdns.knows(peer) else { return }
        if (try? await host.connect(to: peer)) != nil { return }
        delay = min(delay * 2, .seconds(30))
    }
}

/// Prints mDNS discoveries and dials each newly discovered peer; a dial that
/// fails is tried again while mDNS still sees the peer (mDNS reports a peer
/// once, not at every announcement).
func handleDiscoveries(
    _ events: AsyncStream<MDNSEvent>, host: Libp2pHost, mdns: MDNSService, out: ChatOutput, sightings: OwnPeerSightings
) async {
    // The dials run beside the loop, and are cancelled with it.
    await withDiscardingTaskGroup { group in
        for await event in events {
            switch event {
            case .discovered(let peer, let addresses):
                for address in addresses {
                    out.emit(
                        "discovered", ["peer": "\(peer)", "addr": "\(address.withoutP2P)"],
                        human: "Got peer: \(peer) with addr \(address.withoutP2P)")
                }
                host.peerStore.addAddresses(addresses.map(\.withoutP2P), for: peer)
                guard host.connection(to: peer) == nil else { continue }
                group.addTask {
                    do {
                        _ = try await host.connect(to: peer)
                    } catch {
                        // Cancelled: the chat is shutting down, nothing to report.
                        guard !Task.isCancelled else { return }
                        out.error(dialFailure("\(peer)", error))
                        await redialWhileSeen(peer, host: host, mdns: mdns)
                    }
                }
            case .expired(let peer, let addresses):
                for address in addresses {
                    out.emit(
                        "expired", ["peer": "\(peer)", "addr": "\(address.withoutP2P)"],
                        human: "Removed peer: \(peer) with addr \(address.withoutP2P)")
                }
            case .ownPeerElsewhere(let addresses):
                sightings.saw(addresses, via: "mDNS")
            }
        }
    }
}

/// Our peer id seen at addresses that are not ours (in a DHT provider
/// record, or announced on mDNS): another process runs with our identity (a
/// copy of our key file), and peers may reach it instead of us. Never dialled;
/// said once per run, in one line (`identity_elsewhere` event).
final class OwnPeerSightings: Sendable {
    let host: Libp2pHost
    let identify: IdentifyService
    let out: ChatOutput
    private let reported = Mutex(false)

    init(host: Libp2pHost, identify: IdentifyService, out: ChatOutput) {
        self.host = host
        self.identify = identify
        self.out = out
    }

    func saw(_ addresses: [Multiaddr], via source: String) {
        // Ours: what we listen on and what identify advertises (observed addresses included).
        let ours = Set((host.listenAddresses + identify.advertisedAddresses).map(\.withoutP2P))
        let elsewhere = addresses.map(\.withoutP2P).filter { !ours.contains($0) }
        guard !elsewhere.isEmpty, reported.withLock({ done in defer { done = true }; return !done }) else { return }
        let list = elsewhere.map(\.description)
        out.emit(
            "identity_elsewhere", ["peer": "\(host.localPeer)", "addrs": .strings(list), "via": .string(source)],
            human: "Another process uses our peer id \(host.localPeer) at \(list.joined(separator: " ")) (seen in \(source)): "
                + "peers may reach it instead of us; start one of them with another --identity")
    }
}
