import DCUtR
import Identity
import KadDHT
import Multiformats
import NIOCore
import Relay
import Transport

/// The hostile bits of `p2pbench attack`, in one place: what an attacker
/// writes that an honest peer never would (issue 25's ways in). Everything
/// else an attack does goes through the library as any peer's would.
enum HostileFrames {
    /// The largest address a provider record may carry: `/dns4/<name>/tcp/<port>` of 246 bytes.
    static func largestAddress(_ index: Int) -> Multiaddr {
        let name = String(repeating: "a", count: 236) + String(index % 10_000).leftPadded(to: 4)
        return Multiaddr([.dns4(name), .tcp(UInt16(4000 + index % 1000))])
    }

    /// ADD_PROVIDER of `key` naming `peer` with 16 of the largest addresses
    /// (rows 3, 7, 8: a record as large as the store accepts), framed.
    static func largeProviderRecord(peer: PeerID, key: [UInt8]) -> [UInt8] {
        DHTMessage(type: .addProvider, key: key, providerPeers: [DHTPeer(id: peer, addresses: (0..<16).map(largestAddress))])
            .framed()
    }

    /// A DCUtR CONNECT naming `addresses` (row 5: sent on a direct connection,
    /// where an honest peer never starts DCUtR), length-prefixed.
    static func holePunchConnect(_ addresses: [Multiaddr]) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeLengthPrefixed(HolePunchMessage.connect(addresses).encoded())
        return out
    }

    /// A STOP CONNECT from a peer that is no relay of ours (row 6), length-prefixed.
    static func stopConnect(from peer: PeerID) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeLengthPrefixed(StopMessage.connect(peer, limit: nil).encoded())
        return out
    }

    /// The start of a pubsub RPC that announces `announced` bytes and brings
    /// only `sent` (an RPC held incomplete: its announced length is reserved
    /// until it arrives whole or its 30 s run out).
    static func incompleteRPC(announcing announced: Int, sending sent: Int) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeBytes(Varint.encode(UInt64(announced)))
        out.writeRepeatingByte(0, count: sent)
        return out
    }

    /// `count` metrics requests back to back (row 13: pipelined, never waiting for an answer).
    static func pipelinedMetricsRequests(_ count: Int) -> ByteBuffer {
        let one = "GET /metrics HTTP/1.1\r\nHost: target\r\n\r\n"
        var out = ByteBuffer()
        for _ in 0..<count { out.writeString(one) }
        return out
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
