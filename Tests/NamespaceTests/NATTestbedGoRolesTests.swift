import ChildProcess
import Foundation
import XCTest

/// Hole punches with one end playing an older go-libp2p's roles
/// (`--dcutr-roles`), across real NAT where both dials meet in one TCP
/// connection: the roles decide whether its handshake works.
final class NATTestbedGoRolesTests: NATTestbedCase {
    /// go v0.33-v0.40 as B dials as a plain client on every attempt: our A
    /// dials with the simultaneous-open extension twice (both fail: two
    /// diallers, one without the extension), then listens, and the third works.
    func testOurAnswerMeetsGoBefore041AtTheThirdAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.41", listen: "/tcp/4011")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// go before v0.33 as B dials with the extension too: the nonces pick the roles at once.
    func testOurAnswerMeetsGoBefore033AtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "go-before-0.33", listen: "/tcp/4012")
        XCTAssertEqual(outcome["attempt"], "1")
    }

    /// go before v0.41 as A listens: our B listens too at first (both wait),
    /// and on its last attempt dials with the extension, which a listener answers.
    func testOurHolePunchMeetsAnOldGoAnswerAtTheLastAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "go-before-0.41", home2Roles: "adaptive", listen: "/tcp/4013")
        XCTAssertEqual(outcome["attempt"], "3")
    }

    /// Two of ours: the spec's roles work at once.
    func testOursMeetAtTheFirstAttempt() async throws {
        let outcome = try await holePunch(home1Roles: "adaptive", home2Roles: "adaptive", listen: "/tcp/4014")
        XCTAssertEqual(outcome["attempt"], "1")
    }
}
