import Multiformats
import XCTest

/// Inputs the fuzzers (Fuzz/run.sh) found, kept as tests.
final class FuzzFindingsTests: XCTestCase {
    /// A binary /p2p whose multihash is neither identity nor SHA-256 decoded,
    /// but its text (base58, not starting with 1 or Qm) reads as a CID and was
    /// refused: an address we accepted could not be written back. Such a
    /// multihash is no peer id, and is refused in binary too.
    func testP2PMultihashMustBeAPeerID() throws {
        let peerMultihash: [UInt8] = [0x00, 0x24, 0x08, 0x01, 0x12, 0x20] + Array(0..<32)
        var bytes: [UInt8] = [0x36, 11] + Array("example.com".utf8) + [0x06, 0x0f, 0xa1]
        bytes += [0xa5, 0x03, 0x26, 0x40, 0x24] + peerMultihash.dropFirst(2) + [0, 0]
        XCTAssertThrowsError(try Multiaddr(bytes: bytes))
        // Identity and SHA-256 peer ids still round-trip.
        for multihash in [peerMultihash, [0x12, 0x20] + [UInt8](repeating: 7, count: 32)] {
            let address = try Multiaddr(bytes: [0x04, 127, 0, 0, 1, 0xa5, 0x03, UInt8(multihash.count)] + multihash)
            XCTAssertEqual(try Multiaddr(address.description), address)
        }
        // A short SHA-256 digest is no peer id either.
        XCTAssertThrowsError(try Multiaddr(bytes: [0xa5, 0x03, 4, 0x12, 0x02, 1, 2]))
    }
}
