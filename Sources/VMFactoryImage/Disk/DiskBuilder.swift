import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Makes the ext4 root disk of a resolved image: an empty file system from mke2fs with fixed
/// identifiers and times, the layers written into it through libext2fs in one pass, then
/// qcow2 through qemu-img (or the sparse raw file as it is).
///
/// Why libext2fs and not a staging tree for `mke2fs -d`: a tree on the host needs root rights
/// (or fakeroot's emulation) to hold other users' files, device nodes and setuid bits, costs a
/// write and a read of every byte, and takes the host file system's limits (names, xattrs,
/// case). Written into inodes directly, owners and devices are data like any other, the same
/// for any user, and each file's bytes are written once, as they are decompressed.
public struct DiskBuilder: Sendable {
    public var runner: any ProcessRunner
    public var console: Console

    public init(runner: any ProcessRunner, console: Console) {
        self.runner = runner
        self.console = console
    }

    public struct Disk: Sendable {
        public var path: String
        public var format: DiskOptions.Format
        /// The file system's size, which is the raw disk's and the qcow2's virtual size.
        public var virtualSize: Int64
        public var sha256: SHA256Digest
        public var entries: Int
    }

    /// The features of every disk, named here rather than taken from the host's mke2fs.conf, so
    /// that disks do not change with the host; none newer than Linux 4.x can read. The file is
    /// new and sparse, so its journal reads as zeros without being written; mke2fs punches it
    /// (discards) and so knows that the inode tables are zero too.
    static let mke2fsConfig = """
        [defaults]
        \tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
        \tdefault_mntopts = acl,user_xattr
        \tenable_periodic_fsck = 0
        \tblocksize = 4096
        \tinode_size = 256
        \tinode_ratio = 8192
        \tlazy_itable_init = 0
        \tlazy_journal_init = 1
        [fs_types]
        \text4 = {
        \t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
        \t}
        \trootfs = {
        \t\tinode_ratio = 8192
        \t}

        """

    /// Builds the disk in `directory` (which the caller made and will rename into place).
    public func build(_ image: ResolvedImage, options: DiskOptions, in directory: String) async throws -> Disk {
        let time = Self.pinnedTime(image.config)
        let uuid = Self.uuid(from: image.manifestDigest)
        let content = try Self.estimatedContent(image)
        let raw = directory + "/disk.raw"
        try FileStore.writeAtomically(Self.mke2fsConfig, to: directory + "/mke2fs.conf")
        var contentBytes = content
        while true {
            let size = try Self.fileSystemSize(content: contentBytes, options: options.size)
            var clock = ContinuousClock.now
            func lap(_ what: String) {
                console.debug("rootfs: \(what) took \(String(format: "%.3f", (ContinuousClock.now - clock).seconds))s")
                clock = ContinuousClock.now
            }
            try await makeFileSystem(raw, size: size, uuid: uuid, time: time, config: directory + "/mke2fs.conf")
            lap("mke2fs (\(ByteCount.format(size)))")
            do {
                let entries = try await populate(raw, image: image, time: time)
                lap("writing \(entries) entries")
                try? FileManager.default.removeItem(atPath: directory + "/mke2fs.conf")
                let disk = try await finish(raw, options: options, size: size, entries: entries, in: directory)
                lap("\(options.format) and its sha256")
                return disk
            } catch let full as Ext4Image.Ext4Full {
                if case .absolute(let bytes) = options.size {
                    throw VMFactoryError(
                        .invalidArgument, "\(image.reference) does not fit in a disk of \(ByteCount.format(bytes)) (\(full.message))",
                        hint: "give a larger --size, or --size +SIZE for free space on top of what the image needs"
                    )
                }
                contentBytes *= 2
                console.note("rootfs: the content needs more room than estimated; making the file system again with \(ByteCount.format(contentBytes)) for it")
            }
        }
    }

    /// Files, directories and their metadata take more room in ext4 than in a tar (a block
    /// per small file): a quarter more, and some for the journal and the root's own blocks.
    static func fileSystemSize(content: Int64, options: DiskOptions.Size) throws -> Int64 {
        let mib: Int64 = 1 << 20
        let bytes: Int64
        switch options {
        case .absolute(let size):
            bytes = size
        case .headroom(let headroom):
            bytes = content + content / 4 + 32 * mib + headroom
        }
        return (bytes + mib - 1) / mib * mib
    }

    /// The bytes the layers hold once decompressed: what gzip's trailer and zstd's frame
    /// header say, or the file's size for a plain tar.
    static func estimatedContent(_ image: ResolvedImage) throws -> Int64 {
        try image.layers.reduce(0) { $0 + (try UncompressedSize.estimate(path: $1.path, mediaType: $1.descriptor.mediaType)) }
    }

    func makeFileSystem(_ path: String, size: Int64, uuid: String, time: Int64, config: String) async throws {
        try? FileManager.default.removeItem(atPath: path)
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw VMFactoryError.io("cannot create", path: path) }
        defer { close(fd) }
        guard ftruncate(fd, off_t(size)) == 0 else { throw VMFactoryError.io("cannot size", path: path) }
        let command = Command(
            "mke2fs",
            ["-q", "-F", "-t", "ext4", "-T", "rootfs", "-m", "0", "-U", uuid, "-E", "hash_seed=\(uuid),root_owner=0:0", path],
            environment: ["MKE2FS_CONFIG": config, "E2FSPROGS_FAKE_TIME": String(time)]
        )
        try await runner.runChecked(command, what: "mke2fs (making the empty file system)")
    }

    func populate(_ path: String, image: ResolvedImage, time: Int64) async throws -> Int {
        let console = self.console
        return try await BlockingWork.run("writing the root file system") { cancellation in
            let disk = try Ext4Image(path: path, now: time)
            let tree = LayerTree(disk: disk, time: time)
            for (index, layer) in image.layers.enumerated() {
                let name = "layer \(index + 1)/\(image.layers.count) \(layer.descriptor.digest)"
                let total = max(layer.descriptor.size, 1)
                let short = "layer \(index + 1)/\(image.layers.count) \(layer.digest.short)"
                console.progress("rootfs: \(short): starting", force: true)
                try tree.apply(layer: index, path: layer.path, name: name, progress: { read, entries in
                    let percent = min(100, read * 100 / total)
                    console.progress("rootfs: \(short): \(percent)% (\(ByteCount.format(read)) of \(ByteCount.format(total))), \(entries) entries")
                }, cancellation: cancellation)
                console.progress("rootfs: \(short): done, \(ByteCount.format(layer.descriptor.size))", force: true)
            }
            console.endProgress()
            try tree.write()
            try disk.close()
            return tree.entries
        }
    }

    /// qcow2 through qemu-img, whose writes in order (no -W) give the same bytes every time.
    func finish(_ raw: String, options: DiskOptions, size: Int64, entries: Int, in directory: String) async throws -> Disk {
        let format = options.format
        let path = directory + "/" + format.fileName
        if format == .qcow2 {
            if options.compression != .none { console.progress("rootfs: qemu-img convert to qcow2, \(options.compression)-compressed clusters", force: true) }
            let command = Command("qemu-img", ["convert", "-f", "raw", "-O", "qcow2"] + options.qemuImgOptions + [raw, path])
            try await runner.runChecked(command, what: "qemu-img convert (raw to qcow2)")
            try FileManager.default.removeItem(atPath: raw)
        }
        FileStore.makeReadOnly(path)
        let digest = try await SHA256Digest.ofFile(at: path)
        return Disk(path: path, format: format, virtualSize: size, sha256: digest, entries: entries)
    }

    /// The file system's UUID and hash seed, the same for the same image.
    static func uuid(from digest: SHA256Digest) -> String {
        var hex = Array(digest.hex.prefix(32))
        // A version 4 layout (random-looking bits), so that tools take it for what it is.
        hex[12] = "4"
        hex[16] = ["8", "9", "a", "b"][Int(String(hex[16]), radix: 16)! & 3]
        let text = String(hex)
        let parts = [0..<8, 8..<12, 12..<16, 16..<20, 20..<32].map { range in
            String(text[text.index(text.startIndex, offsetBy: range.lowerBound)..<text.index(text.startIndex, offsetBy: range.upperBound)])
        }
        return parts.joined(separator: "-")
    }

    /// What the file system stamps where no entry gives a time: the image's creation time, or
    /// the epoch for an image that does not say.
    static func pinnedTime(_ config: ImageConfig) -> Int64 {
        guard let created = config.created else { return 0 }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: created) { return max(0, Int64(date.timeIntervalSince1970)) }
        formatter.formatOptions = [.withInternetDateTime]
        if let date = formatter.date(from: created) { return max(0, Int64(date.timeIntervalSince1970)) }
        return 0
    }
}

/// The size of a layer once decompressed, as far as its format says without decompressing.
enum UncompressedSize {
    static func estimate(path: String, mediaType: String) throws -> Int64 {
        let size = FileStore.fileSize(path) ?? 0
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw VMFactoryError.io("cannot read", path: path) }
        defer { close(fd) }
        var head = [UInt8](repeating: 0, count: 18)
        let count = pread(fd, &head, head.count, 0)
        if count >= 2, head[0] == 0x1f, head[1] == 0x8b, size >= 18 {
            return gzip(fd: fd, size: size)
        }
        if count >= 6, head[0..<4] == [0x28, 0xb5, 0x2f, 0xfd], let frame = zstdContentSize(Array(head[4..<count])) {
            return max(frame, size)
        }
        if count >= 4, head[0..<4] == [0x28, 0xb5, 0x2f, 0xfd] {
            // A streamed zstd frame does not state its size: count it (zstd decompresses at
            // memory speed; no guess is good for a tar).
            return try decompressedSize(path)
        }
        return size
    }

    static func decompressedSize(_ path: String) throws -> Int64 {
        let reader = try ArchiveReader(path: path, formats: .raw, hashing: false)
        guard try reader.nextEntry() != nil else { return 0 }
        var total: Int64 = 0
        try reader.readData { total += Int64($0.count) }
        return total
    }

    /// gzip's trailer holds the input size modulo 2^32; gzip never shrinks below a thousandth,
    /// so the wraps are counted back from the compressed size.
    static func gzip(fd: Int32, size: Int64) -> Int64 {
        var trailer = [UInt8](repeating: 0, count: 4)
        guard pread(fd, &trailer, 4, off_t(size - 4)) == 4 else { return size * 5 }
        var value = Int64(trailer[0]) | Int64(trailer[1]) << 8 | Int64(trailer[2]) << 16 | Int64(trailer[3]) << 24
        while value < size - size / 1000 - 64 { value += 1 << 32 }
        return value
    }

    /// The Frame_Content_Size of a zstd frame header (RFC 8878, 3.1.1.1), when present.
    static func zstdContentSize(_ header: [UInt8]) -> Int64? {
        guard let descriptor = header.first else { return nil }
        let sizeFlag = Int(descriptor >> 6)
        let singleSegment = descriptor & 0x20 != 0
        let dictionaryBytes = [0, 1, 2, 4][Int(descriptor & 3)]
        let sizeBytes = [singleSegment ? 1 : 0, 2, 4, 8][sizeFlag]
        guard sizeBytes > 0 else { return nil }
        let start = 1 + (singleSegment ? 0 : 1) + dictionaryBytes
        guard header.count >= start + sizeBytes else { return nil }
        var value: UInt64 = 0
        for (shift, byte) in header[start..<start + sizeBytes].enumerated() { value |= UInt64(byte) << (8 * UInt64(shift)) }
        if sizeBytes == 2 { value += 256 }
        return Int64(clamping: value)
    }
}
