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
import Libp2p
import Logging
import MDNS
import Multiformats
import PubSub
import Relay
import ServiceLifecycle
import Synchronization
import Transport

/// A loop (an event printer, the chat's input) as a service: cancelled at
/// graceful shutdown if it has not ended by then.
struct LoopService: Service, CustomStringConvertible {
    let body: @Sendable () async -> Void
    var description: String { "event loop" }

    func run() async {
        await cancelWhenGracefulShutdown { await body() }
    }
}

/// Standard input lines; the sequence also ends on SIGINT or SIGTERM, so the
/// chat shuts down cleanly either way.
func inputLinesUntilSignal() -> AsyncStream<String> {
    let (stream, continuation) = AsyncStream.makeStream(of: String.self, bufferingPolicy: .bufferingOldest(1024))
    onTerminationSignal { continuation.finish() }
    ChatTerminal.shared.lines(into: continuation)
    return stream
}

/// SIGINT and SIGTERM as a service: caught from its creation on (make it
/// before listening: a signal that comes before the group runs is kept), its
/// `run()` returns at the first, and the group then shuts down gracefully.
struct TerminationSignalService: Service, CustomStringConvertible {
    let signals: AsyncStream<Void>
    var description: String { "SIGINT/SIGTERM" }

    init() {
        let (signals, continuation) = AsyncStream.makeStream(of: Void.self)
        onTerminationSignal { continuation.finish() }
        self.signals = signals
    }

    func run() async {
        await cancelWhenGracefulShutdown { [signals] in for await _ in signals {} }
    }
}

/// Runs `services` (the host first, what runs on it after) in a `ServiceGroup`
/// until `signals` reports SIGINT or SIGTERM; then shuts them down gracefully
/// in reverse order, each awaited before the one under it. `loops` (event
/// printers and the like) are cancelled first and may end by themselves
/// without ending the rest.
func runUntilTerminationSignal(
    _ signals: TerminationSignalService, _ services: [any Service], loops: [@Sendable () async -> Void] = []
) async {
    await runServices(services, loops: loops, until: signals)
}

/// Runs `services` (the host first, what runs on it after) in a `ServiceGroup`
/// until `ending` returns (SIGINT or SIGTERM, the end of input); then shuts
/// them down gracefully in reverse order, each awaited before the one under
/// it. `loops` are cancelled first and may end by themselves without ending
/// the rest.
func runServices(_ services: [any Service], loops: [@Sendable () async -> Void] = [], until ending: any Service) async {
    let group = ServiceGroup(
        configuration: ServiceGroupConfiguration(
            services: services.map { ServiceGroupConfiguration.ServiceConfiguration(service: $0) }
                + loops.map { loop in
                    ServiceGroupConfiguration.ServiceConfiguration(
                        service: LoopService(body: loop),
                        successTerminationBehavior: .ignore)
                }
                + [ServiceGroupConfiguration.ServiceConfiguration(service: ending, successTerminationBehavior: .gracefullyShutdownGroup)],
            logger: Logger(label: "p2pchat.services")))
    do {
        try await group.run()
    } catch {
        FileHandle.standardError.write(Data("error: \(error)\n".utf8))
    }
}

/// Tasks started beforehand (so that they run from then on, before the group
/// does) as a service, their owner: `run()` holds until graceful shutdown or
/// cancellation, then cancels them and returns once they have ended.
struct TaskService: Service, CustomStringConvertible {
    let description: String
    let tasks: [Task<Void, Never>]

    init(_ name: String, _ tasks: [Task<Void, Never>]) {
        self.description = name
        self.tasks = tasks
    }

    func run() async {
        try? await gracefulShutdown()
        for task in tasks { task.cancel() }
        for task in tasks { await task.value }
    }
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
