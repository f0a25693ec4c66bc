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
        /// QEMU's accelerator (KVM) stopped the guest: the host cannot run it that way.
        case acceleratorFailed = "accelerator-failed"
        /// An image made for another platform than the one asked for (the detail names it).
        case wrongPlatform = "wrong-platform"
        case io = "io"
        /// Something vmfactory itself got wrong (a result it could not encode, say).
        case internalError = "internal"
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
    /// Any error as vmfactory's own, at the command boundary: cancellation becomes
    /// `interrupted`, Foundation's file errors `io`, and anything else says it is a fault.
    public init(_ error: any Error) {
        switch error {
        case let error as VMFactoryError:
            self = error
        case is CancellationError:
            self.init(.interrupted, "interrupted; every process vmfactory started was stopped")
        case let error as EncodingError:
            self.init(.internalError, "cannot encode the result: \(error)", hint: "this is a fault in vmfactory; run again without --format json, and report the command line")
        case let error as DecodingError:
            self.init(.io, "cannot read a file vmfactory wrote earlier: \(error)", hint: "remove the file named above (or run `vmfactory clean`) and try again")
        case let error as CocoaError:
            let path = (error.userInfo[NSFilePathErrorKey] as? String).map { " (\($0))" } ?? ""
            self.init(.io, "\(error.localizedDescription)\(path)", hint: "check that the file exists and that its folder is writable")
        default:
            let bridged = error as NSError
            self.init(.internalError, "\(bridged.localizedDescription) (\(bridged.domain) \(bridged.code))", hint: "this is a fault in vmfactory; report the command line and this message")
        }
    }

    package static func io(_ message: String, path: String, errno code: Int32 = errno) -> VMFactoryError {
        VMFactoryError(.io, "\(message) \(path): \(String(cString: strerror(code)))")
    }
}
