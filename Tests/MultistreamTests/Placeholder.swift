import XCTest

final class MultistreamTestsPlaceholder: XCTestCase {}
