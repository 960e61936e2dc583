import Host
import Identity
import Logging
import Multiformats
import NIOCore
import Transport

/// Inbound RPCs: one read loop per inbound stream, bounded in time and memory.
extension PubSubService {
    /// Reads length-prefixed RPCs from a peer's inbound stream until it ends.
    ///
    /// A peer has one inbound stream (a newer one replaces the older, as in go
    /// and rust). Between RPCs the stream may idle; once an RPC's first byte
    /// is here, the RPC must arrive whole within `rpcCompletionTimeout` and
    /// its announced length must fit the budget for RPCs in transit.
    func readLoop(_ stream: MuxedStream) async {
        let peer = stream.remotePeer
        guard let adopted = inbound.adopt(stream) else {
            stream.reset()
            return
        }
        let slot = adopted.slot
        if adopted.replaced { logger.debug("newer inbound pubsub stream replaces the older", metadata: ["peer": "\(peer)"]) }
        let maxSize = configuration.maxRPCSize
        let ip = Self.ipAddress(of: stream.connection.remoteAddress)
        var reader = StreamReader(stream)
        do {
            while true {
                if let first = try reader.takeBufferedLengthPrefixed(maxLength: maxSize) {
                    try await handle(first, &reader, from: peer, protocolID: stream.protocolID, ip: ip)
                    continue
                }
                if reader.bufferedBytes == 0 {
                    guard try await reader.readMore() else { break }
                    continue
                }
                // Part of an RPC is here: the rest must follow in time and fit the budget.
                inbound.rpcStarted(slot, peer: peer)
                var announced = try reader.bufferedLengthPrefix(maxLength: maxSize)
                while announced == nil {
                    guard try await reader.readMore() else {
                        throw StreamReader.ReadError.endOfStream(wanted: reader.bufferedBytes + 1, had: reader.bufferedBytes)
                    }
                    announced = try reader.bufferedLengthPrefix(maxLength: maxSize)
                }
                try inbound.reserve(announced ?? 0, slot, peer: peer)
                guard let first = try await reader.readLengthPrefixed(maxLength: maxSize) else { break }
                inbound.rpcFinished(slot, peer: peer)
                try await handle(first, &reader, from: peer, protocolID: stream.protocolID, ip: ip)
            }
            inbound.release(slot, peer: peer)
        } catch {
            // A stream replaced by the peer's newer one ends without blame.
            if inbound.release(slot, peer: peer) {
                logger.debug("pubsub stream ended", metadata: ["peer": "\(peer)", "error": "\(error)"])
                await core.malformed(from: peer)
            }
            stream.reset()
        }
    }

    /// Hands `first` and the RPCs buffered behind it (those that arrived
    /// together) to the router in one call.
    func handle(
        _ first: ByteBuffer, _ reader: inout StreamReader, from peer: PeerID, protocolID: String, ip: String?
    ) async throws {
        var frames = [first]
        while frames.count < 64, let more = try reader.takeBufferedLengthPrefixed(maxLength: configuration.maxRPCSize) {
            frames.append(more)
        }
        var rpcs: [PubSubRPC] = []
        var malformed = 0
        for frame in frames {
            if let rpc = try? PubSubCodec.decode(Array(frame.readableBytesView), limits: codecLimits) {
                rpcs.append(rpc)
            } else {
                // A malformed RPC closes nothing; it counts against the sender.
                malformed += 1
            }
        }
        await core.handle(rpcs, malformed: malformed, from: peer, protocolID: protocolID, ip: ip)
    }
}
