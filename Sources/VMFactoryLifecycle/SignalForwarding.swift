import CLinux
import Foundation
import Synchronization
import VMFactoryCore

/// Signal handlers for the length of a run; the defaults come back with `cancel`. The
/// handlers only write the signal's number into a pipe, which a thread reads and hands to the
/// current `handler`; until there is one, signals wait in a queue (a stop that arrives while
/// the VM starts is delivered once the init listens).
public final class SignalForwarding: Sendable {
    private let signals: [Int32]
    private let pipe: (read: Int32, write: Int32)
    private let state = Mutex<(handler: (@Sendable (Int32) -> Void)?, queued: [Int32])>((nil, []))

    public init(signals: [Int32] = [SIGINT, SIGTERM, SIGHUP, SIGWINCH]) {
        self.signals = signals
        var ends: [Int32] = [-1, -1]
        _ = vmf_pipe_cloexec(&ends)
        pipe = (ends[0], ends[1])
        _ = fcntl(ends[1], F_SETFL, O_NONBLOCK)
        _ = signals.withUnsafeBufferPointer { vmf_signals_to_pipe($0.baseAddress, Int32($0.count), ends[1]) }
        let reader = ends[0]
        Thread.detachNewThread { [self] in
            PipeReader.forEachChunk(reader) { bytes in
                for byte in bytes { deliver(Int32(byte)) }
                return true
            }
            close(reader)
        }
    }

    private func deliver(_ number: Int32) {
        let handler = state.withLock { state -> (@Sendable (Int32) -> Void)? in
            if state.handler == nil { state.queued.append(number) }
            return state.handler
        }
        handler?(number)
    }

    /// Hands signals to `handler` from now on, first those that waited.
    public func handle(_ handler: (@Sendable (Int32) -> Void)?) {
        let queued = state.withLock { state -> [Int32] in
            state.handler = handler
            defer { state.queued = [] }
            return handler == nil ? [] : state.queued
        }
        for number in queued { handler?(number) }
    }

    public func cancel() {
        signals.withUnsafeBufferPointer { vmf_signals_default($0.baseAddress, Int32($0.count)) }
        close(pipe.write)
    }
}
