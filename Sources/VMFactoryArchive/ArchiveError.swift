import CArchive
import Foundation
import VMFactoryCore

/// Turns a libarchive status into a thrown error carrying `archive_error_string`.
@discardableResult
func archiveCheck(_ status: Int32, _ handle: OpaquePointer?, _ what: @autoclosure () -> String) throws -> Int32 {
    if status >= ARCHIVE_WARN { return status }
    let detail = handle.flatMap { archive_error_string($0) }.map { String(cString: $0) } ?? "unknown libarchive error"
    throw VMFactoryError(.archiveFailed, "\(what()): \(detail)")
}

/// File type bits as stored in archive entries (the values of `AE_IF*`).
public enum EntryType: UInt32, Sendable {
    case regular = 0o100000
    case directory = 0o040000
    case symlink = 0o120000
    case characterDevice = 0o020000
    case blockDevice = 0o060000
    case fifo = 0o010000
    case socket = 0o140000
}
