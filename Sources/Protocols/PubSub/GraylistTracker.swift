/// Which peers have stayed graylisted long enough to be disconnected.
///
/// A graylisted peer's RPCs are ignored, so its penalties decay and its score
/// crosses back over the threshold for a moment before its next offence. A
/// clock that restarted at every such crossing would never reach `after` for a
/// peer that keeps misbehaving (GRAFT spam, IHAVEs it never answers), so a
/// peer's graylisting ends only once its score has stayed above the threshold
/// for `after` as well.
struct GraylistTracker<Peer: Hashable> {
    let after: Duration
    private var graylistedSince: [Peer: ContinuousClock.Instant] = [:]
    private var recoveredSince: [Peer: ContinuousClock.Instant] = [:]

    init(after: Duration) {
        self.after = after
    }

    /// One check of every peer we still have: `isGraylisted` tells whether its
    /// score is below the threshold now. Returns the peers to disconnect (they
    /// are forgotten here).
    mutating func check(
        _ peers: some Sequence<Peer>, now: ContinuousClock.Instant, isGraylisted: (Peer) -> Bool
    ) -> [Peer] {
        var disconnect: [Peer] = []
        var seen = Set<Peer>()
        for peer in peers {
            seen.insert(peer)
            if isGraylisted(peer) {
                recoveredSince[peer] = nil
                let since = graylistedSince[peer] ?? now
                if now - since >= after {
                    disconnect.append(peer)
                    graylistedSince[peer] = nil
                } else {
                    graylistedSince[peer] = since
                }
            } else if graylistedSince[peer] != nil {
                let recovered = recoveredSince[peer] ?? now
                if now - recovered >= after {
                    graylistedSince[peer] = nil
                    recoveredSince[peer] = nil
                } else {
                    recoveredSince[peer] = recovered
                }
            }
        }
        // Peers gone since the last check.
        graylistedSince = graylistedSince.filter { seen.contains($0.key) }
        recoveredSince = recoveredSince.filter { seen.contains($0.key) }
        return disconnect
    }

    /// Peers being timed (for tests).
    var trackedCount: Int { graylistedSince.count }
}
