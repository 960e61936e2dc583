import ArgumentParser
import AutoNAT
import ChatHistory
import DCUtR
import Dispatch
import FileShare
import KadDHT
import Foundation
import Host
import Identify
import Identity
import MDNS
import Multiformats
import PubSub
import Relay
import Synchronization
import Transport

/// Standard input lines; the sequence also ends on SIGINT or SIGTERM, so the
/// chat shuts down cleanly either way.
func inputLinesUntilSignal() -> AsyncStream<String> {
    let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(1024))
    onTerminationSignal { continuation.finish() }
    ChatTerminal.shared.lines(into: continuation)
    return stream
}

/// Returns once SIGINT or SIGTERM arrives.
func waitForTerminationSignal() async {
    let (stream, continuation) = AsyncStream.makeStream(of: Void.self)
    onTerminationSignal { continuation.finish() }
    for await _ in stream {}
}

/// Runs `action` (instead of dying) on SIGINT and SIGTERM.
func onTerminationSignal(_ action: @escaping @Sendable () -> Void) {
    for signalNumber in [SIGINT, SIGTERM] {
        signal(signalNumber, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
        signalSources.append(source)
    }
}

/// Keeps the signal sources alive for the life of the process. Safe unsynchronised:
/// only `onTerminationSignal` writes it, once per process from the running
/// command's single task, and nothing ever reads it.
nonisolated(unsafe) var signalSources: [any DispatchSourceSignal] = []
