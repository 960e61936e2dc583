import XCTest

final class MDNSTestsPlaceholder: XCTestCase {}
