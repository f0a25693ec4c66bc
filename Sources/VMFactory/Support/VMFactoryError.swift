import Foundation

/// The one error type vmfactory's library throws.
///
/// Every error carries a stable code (for scripts and `--format json`), a message that
/// says what went wrong, a hint that says what to do next, and the underlying cause.
public struct VMFactoryError: Error, Sendable, CustomStringConvertible {
    public enum Code: String, Sendable, Codable {
        case invalidRecipe = "invalid-recipe"
        case invalidArgument = "invalid-argument"
        case notFound = "not-found"
        case digestMismatch = "digest-mismatch"
        case fetchFailed = "fetch-failed"
        case hostileArchive = "hostile-archive"
        case archiveFailed = "archive-failed"
        case patchFailed = "patch-failed"
        case fragmentConflict = "fragment-conflict"
        case configNotVerified = "config-not-verified"
        case processFailed = "process-failed"
        case missingTool = "missing-tool"
        case interrupted = "interrupted"
        case bootFailed = "boot-failed"
        case bootTimedOut = "boot-timed-out"
        case io = "io"
    }

    public var code: Code
    public var message: String
    public var hint: String?
    public var cause: (any Error & Sendable)?
    /// Extra lines shown under the message: a log tail, a list of misses.
    public var details: [String]

    public init(
        _ code: Code,
        _ message: String,
        hint: String? = nil,
        details: [String] = [],
        cause: (any Error & Sendable)? = nil
    ) {
        self.code = code
        self.message = message
        self.hint = hint
        self.details = details
        self.cause = cause
    }

    public var description: String {
        var text = message
        for line in details { text += "\n  " + line }
        if let cause { text += "\n  cause: \(cause)" }
        if let hint { text += "\n  hint: " + hint }
        return text
    }
}

extension VMFactoryError {
    static func io(_ message: String, path: String, errno code: Int32 = errno) -> VMFactoryError {
        VMFactoryError(.io, "\(message) \(path): \(String(cString: strerror(code)))")
    }
}
