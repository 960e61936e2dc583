import PubSub
import XCTest

final class PublishPacerTests: XCTestCase {
    func testABurstGoesAtOnceAndTheRestAtTheRate() {
        let start = ContinuousClock.now
        var pacer = PublishPacer(burst: 16, interval: .milliseconds(5), now: start)
        // 100 lines at the same instant: 16 at once, then one every 5 ms.
        let waits = (0..<100).map { _ in pacer.reserve(now: start) }
        XCTAssertEqual(Array(waits.prefix(16)), Array(repeating: Duration.zero, count: 16))
        XCTAssertEqual(waits[16], .milliseconds(5))
        XCTAssertEqual(waits[99], .milliseconds(5 * 84))
        // After a quiet spell the whole burst is free again.
        var later = PublishPacer(burst: 4, interval: .milliseconds(5), now: start)
        for _ in 0..<10 { _ = later.reserve(now: start) }
        XCTAssertEqual(later.reserve(now: start + .seconds(1)), .zero)
    }

    func testLinesTypedByAPersonNeverWait() {
        let start = ContinuousClock.now
        var pacer = PublishPacer(now: start)
        for second in 0..<100 {
            XCTAssertEqual(pacer.reserve(now: start + .milliseconds(200 * second)), .zero)
        }
    }
}
