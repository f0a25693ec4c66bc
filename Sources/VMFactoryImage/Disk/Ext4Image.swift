import CExt4
import Foundation
import VMFactoryCore

/// An ext4 file system image that mke2fs made, written through libext2fs: inodes get exactly
/// the owners, modes and device numbers they are given, whoever runs vmfactory, and no host
/// file is created for any of them.
final class Ext4Image {
    struct Attributes: Equatable {
        /// File type and permission bits, as in st_mode.
        var mode: UInt32
        var uid: UInt32
        var gid: UInt32
        var mtime: Int64

        var c: vmf_ext4_attributes { vmf_ext4_attributes(mode: mode, uid: uid, gid: gid, mtime: mtime) }
    }

    static let root: UInt32 = VMF_EXT4_ROOT
    private var handle: OpaquePointer?
    let path: String

    /// Opens `path`; `now` is what libext2fs stamps as the current time.
    init(path: String, now: Int64) throws {
        self.path = path
        var opened: OpaquePointer?
        try Self.check(vmf_ext4_open(path, now, &opened), "cannot open the new file system \(path)")
        handle = opened
    }

    deinit {
        if let handle { vmf_ext4_abandon(handle) }
    }

    static func check(_ code: Int, _ what: @autoclosure () -> String) throws {
        guard code != 0 else { return }
        let message = String(cString: vmf_ext4_message(code))
        // Out of room: the caller sizes the disk again.
        if vmf_ext4_is_full(code) != 0 { throw Ext4Full(message: "\(what()): \(message)") }
        throw VMFactoryError(.io, "\(what()): \(message)")
    }

    /// The file system ran out of blocks or inodes.
    struct Ext4Full: Error {
        var message: String
    }

    func close() throws {
        guard let handle else { return }
        self.handle = nil
        try Self.check(vmf_ext4_close(handle), "cannot finish the file system \(path)")
    }

    func createFile(_ attributes: Attributes, write: ((UnsafeRawBufferPointer) throws -> Void) throws -> Void) throws -> UInt32 {
        var a = attributes.c
        var ino: UInt32 = 0
        try Self.check(vmf_ext4_file_create(handle, &a, &ino), "cannot create a file")
        var file: OpaquePointer?
        try Self.check(vmf_ext4_file_open(handle, ino, &file), "cannot open inode \(ino)")
        var failure: (any Error)?
        do {
            try write { bytes in
                guard bytes.count > 0 else { return }
                try Self.check(vmf_ext4_file_write(file, bytes.baseAddress, bytes.count), "cannot write inode \(ino)")
            }
        } catch {
            failure = error
        }
        try Self.check(vmf_ext4_file_close(file), "cannot finish inode \(ino)")
        if let failure { throw failure }
        return ino
    }

    func release(_ ino: UInt32) throws {
        try Self.check(vmf_ext4_release(handle, ino), "cannot free inode \(ino)")
    }

    func mkdir(_ parent: UInt32, _ name: String) throws -> UInt32 {
        var ino: UInt32 = 0
        try Self.check(vmf_ext4_mkdir(handle, parent, name, &ino), "cannot create the directory \(name)")
        return ino
    }

    func link(_ parent: UInt32, _ name: String, ino: UInt32, mode: UInt32) throws {
        try Self.check(vmf_ext4_link(handle, parent, name, ino, mode), "cannot link \(name)")
    }

    func symlink(_ parent: UInt32, _ name: String, target: String) throws -> UInt32 {
        var ino: UInt32 = 0
        try Self.check(vmf_ext4_symlink(handle, parent, name, target, &ino), "cannot create the symlink \(name)")
        return ino
    }

    func special(_ attributes: Attributes, major: UInt32, minor: UInt32) throws -> UInt32 {
        var a = attributes.c
        var ino: UInt32 = 0
        try Self.check(vmf_ext4_special(handle, &a, major, minor, &ino), "cannot create a device node")
        return ino
    }

    func setAttributes(_ ino: UInt32, _ attributes: Attributes, links: UInt32 = 0) throws {
        var a = attributes.c
        try Self.check(vmf_ext4_set_attributes(handle, ino, &a, links), "cannot set the attributes of inode \(ino)")
    }

    func setXattr(_ ino: UInt32, name: String, value: [UInt8]) throws {
        try value.withUnsafeBytes { bytes in
            try Self.check(vmf_ext4_set_xattr(handle, ino, name, bytes.baseAddress, bytes.count), "cannot set \(name) on inode \(ino)")
        }
    }

    func lookup(_ parent: UInt32, _ name: String) -> UInt32? {
        var ino: UInt32 = 0
        return vmf_ext4_lookup(handle, parent, name, &ino) == 0 ? ino : nil
    }

    func removeLostAndFound() throws {
        try Self.check(vmf_ext4_remove_lost_found(handle), "cannot remove lost+found")
    }

    /// Free blocks and inodes, and the block size.
    var free: (blocks: UInt64, inodes: UInt64, blockSize: UInt32) {
        var blocks: UInt64 = 0, inodes: UInt64 = 0, size: UInt32 = 0
        vmf_ext4_free(handle, &blocks, &inodes, &size)
        return (blocks, inodes, size)
    }
}
