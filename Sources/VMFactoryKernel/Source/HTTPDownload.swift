import Foundation
import VMFactoryArchive
import VMFactoryCore
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// Streams an http(s) URL's body chunk by chunk, so the caller can hash and store it
/// while it arrives instead of after.
enum HTTPDownload {
    static func stream(
        _ url: URL,
        timeout: TimeInterval = 60,
        onChunk: @escaping @Sendable (Data) throws -> Void,
        onProgress: @escaping @Sendable (_ received: Int64, _ expected: Int64?) -> Void
    ) async throws {
        let delegate = Delegate(onChunk: onChunk, onProgress: onProgress)
        let configuration = URLSessionConfiguration.ephemeral
        configuration.timeoutIntervalForRequest = timeout
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 1
        let session = URLSession(configuration: configuration, delegate: delegate, delegateQueue: queue)
        defer { session.finishTasksAndInvalidate() }
        let task = session.dataTask(with: URLRequest(url: url))
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                delegate.setContinuation(continuation)
                task.resume()
            }
        } onCancel: {
            task.cancel()
        }
    }

    private final class Delegate: NSObject, URLSessionDataDelegate, @unchecked Sendable {
        let onChunk: @Sendable (Data) throws -> Void
        let onProgress: @Sendable (Int64, Int64?) -> Void
        // Touched only on the session's serial delegate queue, after setContinuation.
        private let lock = NSLock()
        private var continuation: CheckedContinuation<Void, any Error>?
        private var failure: (any Error)?
        private var received: Int64 = 0
        private var expected: Int64?

        init(onChunk: @escaping @Sendable (Data) throws -> Void, onProgress: @escaping @Sendable (Int64, Int64?) -> Void) {
            self.onChunk = onChunk
            self.onProgress = onProgress
        }

        func setContinuation(_ continuation: CheckedContinuation<Void, any Error>) {
            lock.withLock { self.continuation = continuation }
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse, completionHandler: @escaping (URLSession.ResponseDisposition) -> Void) {
            if let http = response as? HTTPURLResponse, !(200..<300).contains(http.statusCode) {
                failure = VMFactoryError(.fetchFailed, "HTTP \(http.statusCode) from \(response.url?.absoluteString ?? "server")")
                completionHandler(.cancel)
                return
            }
            expected = response.expectedContentLength > 0 ? response.expectedContentLength : nil
            completionHandler(.allow)
        }

        func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
            guard failure == nil else { return }
            do {
                try onChunk(data)
                received += Int64(data.count)
                onProgress(received, expected)
            } catch {
                failure = error
                dataTask.cancel()
            }
        }

        func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
            let continuation = lock.withLock { () -> CheckedContinuation<Void, any Error>? in
                defer { self.continuation = nil }
                return self.continuation
            }
            if let failure {
                continuation?.resume(throwing: failure)
            } else if let error {
                continuation?.resume(throwing: VMFactoryError(.fetchFailed, "download failed: \(error.localizedDescription)"))
            } else {
                continuation?.resume()
            }
        }
    }
}
