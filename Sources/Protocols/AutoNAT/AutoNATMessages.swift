import Foundation
import Identity
import Multiformats
import SwiftProtobuf

/// The response statuses of AutoNAT v1.
public enum AutoNATStatus: Int, Sendable, Equatable, CustomStringConvertible {
    case ok = 0
    case dialError = 100
    case dialRefused = 101
    case badRequest = 200
    case internalError = 300

    public var description: String {
        switch self {
        case .ok: "OK"
        case .dialError: "E_DIAL_ERROR"
        case .dialRefused: "E_DIAL_REFUSED"
        case .badRequest: "E_BAD_REQUEST"
        case .internalError: "E_INTERNAL_ERROR"
        }
    }
}

/// Errors of AutoNAT.
public enum AutoNATError: Error, CustomStringConvertible, Sendable {
    case malformed(String)
    case unexpected(String)
    /// Asking a server failed (stream, time-out); keeps the cause.
    case requestFailed(server: PeerID, underlying: any Error)

    public var description: String {
        switch self {
        case .malformed(let why): "autonat: malformed message: \(why)"
        case .unexpected(let why): "autonat: unexpected message: \(why)"
        case .requestFailed(let server, let underlying): "autonat: asking \(server) failed: \(underlying)"
        }
    }
}

/// A message of `/libp2p/autonat/1.0.0`.
public enum AutoNATMessage: Sendable, Equatable {
    /// Please dial me back at these addresses.
    case dial(peer: PeerID, addresses: [Multiaddr])
    /// The outcome; on OK the address that worked.
    case dialResponse(AutoNATStatus, text: String?, address: Multiaddr?)

    public static let maxSize = 4096
    /// Addresses we read from a request (the rest are ignored).
    static let maxAddresses = 32

    public init(bytes: some Collection<UInt8>) throws(AutoNATError) {
        let message: Autonat_Pb_Message
        do {
            message = try Autonat_Pb_Message(serializedBytes: Array(bytes))
        } catch {
            throw .malformed("\(error)")
        }
        guard message.hasType else { throw .malformed("no type") }
        switch message.type {
        case .dial:
            guard message.hasDial, message.dial.hasPeer, message.dial.peer.hasID,
                let peer = try? PeerID(bytes: Array(message.dial.peer.id))
            else { throw .malformed("DIAL without a valid peer id") }
            let addresses = message.dial.peer.addrs.prefix(Self.maxAddresses).compactMap { try? Multiaddr(bytes: Array($0)) }
            self = .dial(peer: peer, addresses: addresses)
        case .dialResponse:
            guard message.hasDialResponse, message.dialResponse.hasStatus else {
                throw .malformed("DIAL_RESPONSE without a status")
            }
            let response = message.dialResponse
            guard let status = AutoNATStatus(rawValue: response.status.rawValue) else {
                throw .malformed("unknown status \(response.status.rawValue)")
            }
            let address = response.hasAddr ? try? Multiaddr(bytes: Array(response.addr)) : nil
            self = .dialResponse(status, text: response.hasStatusText ? response.statusText : nil, address: address)
        }
    }

    public func encoded() -> [UInt8] {
        var message = Autonat_Pb_Message()
        switch self {
        case .dial(let peer, let addresses):
            message.type = .dial
            var info = Autonat_Pb_Message.PeerInfo()
            info.id = Data(peer.bytes)
            info.addrs = addresses.map { Data($0.bytes) }
            message.dial.peer = info
        case .dialResponse(let status, let text, let address):
            message.type = .dialResponse
            var response = Autonat_Pb_Message.DialResponse()
            response.status = Autonat_Pb_Message.ResponseStatus(rawValue: status.rawValue) ?? .eInternalError
            if let text { response.statusText = text }
            if let address { response.addr = Data(address.bytes) }
            message.dialResponse = response
        }
        return (try? message.serializedBytes()) ?? []
    }
}
