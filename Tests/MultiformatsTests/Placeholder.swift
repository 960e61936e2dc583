import XCTest

final class MultiformatsTestsPlaceholder: XCTestCase {}
