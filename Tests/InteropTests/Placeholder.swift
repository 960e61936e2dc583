import XCTest

final class InteropTestsPlaceholder: XCTestCase {}
