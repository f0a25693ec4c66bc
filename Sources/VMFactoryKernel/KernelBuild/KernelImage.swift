import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Checks that a built image is what the target's boot path expects, by reading its bytes.
public enum KernelImage {
    public enum Kind: String, Sendable, Codable, Hashable {
        /// An x86_64 ELF `vmlinux` with the PVH entry note, booted uncompressed by QEMU `-kernel`.
        case elfPVH = "elf-pvh"
        /// An x86 bzImage with the `HdrS` real-mode boot header.
        case x86BzImage = "x86-bzimage"
        /// An s390x image without a decompressor: the `S390EP` entry marker at 0x10008.
        case s390Uncompressed = "s390-uncompressed"
    }

    /// What the check found, for the manifest and for messages.
    public struct Facts: Sendable, Codable, Hashable {
        public var kind: Kind
        /// The PVH 32-bit entry point (x86_64 vmlinux).
        public var pvhEntry: UInt64?
        /// The x86 boot protocol version, as `2.15`.
        public var bootProtocol: String?
    }

    /// `XEN_ELFNOTE_PHYS32_ENTRY`: the note QEMU and Firecracker look for to enter a PVH kernel.
    public static let pvhNoteType: UInt32 = 0x12
    static let s390MagicOffset = 0x10008

    public static func inspect(_ path: String, as kind: Kind) throws -> Facts {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path), options: .alwaysMapped)
        } catch {
            throw VMFactoryError(.notFound, "cannot read kernel image \(path)", cause: error as NSError)
        }
        let bytes = [UInt8](data)
        func fail(_ why: String) -> VMFactoryError {
            VMFactoryError(.processFailed, "\(FileStore.displayPath(path)) is not a usable \(kind.rawValue) image: \(why)", hint: "check the target's fragments (pvh, uncompressed) and build.log")
        }
        switch kind {
        case .elfPVH:
            guard let entry = try pvhEntry(in: bytes, fail: fail) else { throw fail("no Xen PHYS32_ENTRY (type 0x12) note; is CONFIG_PVH set?") }
            return Facts(kind: kind, pvhEntry: entry)
        case .x86BzImage:
            guard bytes.count > 0x208, Array(bytes[0x202..<0x206]) == Array("HdrS".utf8) else { throw fail("no HdrS boot header at 0x202") }
            let version = UInt16(bytes[0x206]) | UInt16(bytes[0x207]) << 8
            return Facts(kind: kind, bootProtocol: "\(version >> 8).\(String(format: "%02d", version & 0xff))")
        case .s390Uncompressed:
            let magic = Array("S390EP".utf8)
            guard bytes.count >= s390MagicOffset + magic.count, Array(bytes[s390MagicOffset..<s390MagicOffset + magic.count]) == magic else {
                throw fail("no S390EP marker at 0x10008; is CONFIG_KERNEL_UNCOMPRESSED set?")
            }
            return Facts(kind: kind)
        }
    }

    /// Walks the PT_NOTE segments of an ELF64 little-endian file for the PVH entry note.
    static func pvhEntry(in bytes: [UInt8], fail: (String) -> VMFactoryError) throws -> UInt64? {
        guard bytes.count >= 64, Array(bytes[0..<4]) == [0x7f, 0x45, 0x4c, 0x46] else { throw fail("not an ELF file") }
        guard bytes[4] == 2, bytes[5] == 1 else { throw fail("not a 64-bit little-endian ELF file") }
        func u16(_ offset: Int) -> Int { Int(bytes[offset]) | Int(bytes[offset + 1]) << 8 }
        func u32(_ offset: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(bytes[offset + $1]) << (8 * $1) } }
        func u64(_ offset: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) } }
        let machine = u16(18)
        guard machine == 62 else { throw fail("ELF machine \(machine) is not x86_64 (62)") }
        let phoff = Int(u64(32)), phentsize = u16(54), phnum = u16(56)
        for index in 0..<phnum {
            let header = phoff + index * phentsize
            guard header + 56 <= bytes.count, u32(header) == 4 else { continue }
            let offset = Int(u64(header + 8)), size = Int(u64(header + 32))
            var cursor = offset
            while cursor + 12 <= min(offset + size, bytes.count) {
                let nameSize = Int(u32(cursor)), descSize = Int(u32(cursor + 4)), type = u32(cursor + 8)
                let name = cursor + 12
                let desc = name + (nameSize + 3) & ~3
                guard desc + descSize <= bytes.count else { break }
                if type == pvhNoteType, nameSize == 4, Array(bytes[name..<name + 3]) == Array("Xen".utf8) {
                    return descSize >= 8 ? u64(desc) : UInt64(u32(desc))
                }
                cursor = desc + (descSize + 3) & ~3
            }
        }
        return nil
    }
}
