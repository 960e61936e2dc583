import ArgumentParser
import MetricsExporter
import Multiformats

/// `--metrics MULTIADDR`: serve Prometheus text at /metrics (commands that run a node).
struct MetricsOption: ParsableArguments {
    @Option(
        name: .long,
        help: ArgumentHelp(
            "Serve Prometheus metrics at http://ADDR/metrics, e.g. /ip4/127.0.0.1/tcp/9464.", valueName: "multiaddr"))
    var metrics: String?

    /// Makes Prometheus the metrics backend and serves it, if asked; exits on failure.
    /// Call before the host is made: metric handles bind to the backend when created.
    func start(report: (String) -> Void) async -> MetricsExporter? {
        guard let metrics else { return nil }
        do {
            let exporter = try await MetricsExporter.bootstrap(listeningOn: parseAddress(metrics))
            report("\(exporter.address)")
            return exporter
        } catch {
            exitWithError("--metrics \(metrics): \(error)")
        }
    }
}
