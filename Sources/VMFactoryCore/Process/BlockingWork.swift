import Foundation
import Synchronization

/// Runs blocking work (hashing, copying, decompressing, extracting) on a thread of its own,
/// never on the cooperative pool, which has only as many threads as cores. Cancelling the
/// calling task raises a flag that the work checks between chunks.
public enum BlockingWork {
    /// Set when the task that started the work is cancelled.
    public final class Cancellation: Sendable {
        private let cancelled = Atomic<Bool>(false)
        /// What the work is, for the message: "extracting linux-source-6.1.tar.xz".
        public let what: String

        init(what: String) { self.what = what }

        func cancel() { cancelled.store(true, ordering: .relaxed) }

        public var isCancelled: Bool { cancelled.load(ordering: .relaxed) }

        /// Throws the `interrupted` error once the task was cancelled.
        public func check() throws {
            if isCancelled { throw VMFactoryError(.interrupted, "interrupted while \(what)") }
        }

        /// `check()` whose message also says how far the work got: "(at entry 1234)".
        public func check(at position: @autoclosure () -> String) throws {
            if isCancelled { throw VMFactoryError(.interrupted, "interrupted while \(what) (at \(position()))") }
        }
    }

    public static func run<T: Sendable>(_ what: String, _ body: @escaping @Sendable (Cancellation) throws -> T) async throws -> T {
        let cancellation = Cancellation(what: what)
        try cancellation.check()
        let result: Result<T, any Error> = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let thread = Thread {
                    continuation.resume(returning: Result { try body(cancellation) })
                }
                thread.name = "vmfactory-work"
                thread.start()
            }
        } onCancel: {
            cancellation.cancel()
        }
        // The work's own word on where it stopped comes first.
        if case .failure(let error as VMFactoryError) = result, error.code == .interrupted { throw error }
        if Task.isCancelled { throw VMFactoryError(.interrupted, "interrupted while \(what)") }
        return try result.get()
    }
}

extension BlockingWork {
    /// Runs `body` on a thread of its own to the end, cancelled or not: clean-up that must
    /// finish (removing a half-made tree after Ctrl-C).
    public static func finish(_ body: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread.detachNewThread {
                body()
                continuation.resume()
            }
        }
    }
}

extension Duration {
    public var seconds: Double {
        let (whole, fraction) = components
        return Double(whole) + Double(fraction) / 1e18
    }

    /// For Dispatch deadlines.
    public var timeInterval: DispatchTimeInterval {
        .nanoseconds(Int(min(seconds * 1e9, Double(Int.max / 2))))
    }
}
