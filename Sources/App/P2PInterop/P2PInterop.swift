import Foundation
import Logging
import TransportInterop

/// `p2pchat-interop`: one side of libp2p's transport-interop ping test
/// (test-plans' transport-interop and unified-testing's transport), configured
/// by the environment the harness sets. Only the result goes to stdout; logs go
/// to stderr. Exit status: 0 when the dialer measured its ping, 1 on failure
/// (the listener only ever ends with 1, after its timeout, or by a signal),
/// 2 when the environment is wrong or asks for what we do not support.
@main
struct P2PInterop {
    static func main() async {
        let configuration: InteropConfiguration
        do {
            configuration = try InteropConfiguration(environment: ProcessInfo.processInfo.environment)
        } catch {
            writeStderr("p2pchat-interop: \(error)\n")
            exit(2)
        }
        let debug = configuration.debug
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            // Our own steps at info; the stack's chatter only when DEBUG=true.
            handler.logLevel = debug ? .debug : (label == "p2pchat.interop" ? .info : .warning)
            return handler
        }
        let logger = Logger(label: "p2pchat.interop")
        logger.info(
            "starting",
            metadata: [
                "role": "\(configuration.isDialer ? "dialer" : "listener")",
                "transport": "\(configuration.transport.rawValue)", "security": "\(configuration.security.rawValue)",
                "muxer": "\(configuration.muxer)", "redis": "\(configuration.redis)", "key": "\(configuration.redisKey)",
            ])
        let runner = InteropRunner(configuration: configuration, logger: logger)
        do {
            if configuration.isDialer {
                try await runner.runDialer { result in
                    // One write, at once: nothing else is ever written to stdout.
                    writeStdout(result.lines(for: configuration.harness).joined(separator: "\n") + "\n")
                }
                exit(0)
            } else {
                try await runner.runListener()
            }
        } catch {
            logger.error("\(error)")
            exit(1)
        }
        exit(1)
    }
}

func writeStdout(_ text: String) {
    FileHandle.standardOutput.write(Data(text.utf8))
}

func writeStderr(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}
