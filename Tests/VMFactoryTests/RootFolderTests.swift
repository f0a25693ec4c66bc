import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryRun

/// A root folder's paths as the guest resolves them, and the architecture of the program a
/// folder root will run (what picks the kernel for `run --rootfs` and the OCI runtime).
@Suite("a root folder: paths resolved as the guest resolves them, never above the root; the program's architecture from its ELF header", .tags(.unit), .scoped)
struct RootFolderTests {
    /// A 64-byte ELF header for `machine`, little- or big-endian.
    static func elf(machine: UInt16, bigEndian: Bool) -> Data {
        var header = [UInt8](repeating: 0, count: 64)
        header[0...3] = [0x7f, 0x45, 0x4c, 0x46]
        header[4] = 2
        header[5] = bigEndian ? 2 : 1
        header[18] = UInt8(bigEndian ? machine >> 8 : machine & 0xff)
        header[19] = UInt8(bigEndian ? machine & 0xff : machine >> 8)
        return Data(header)
    }

    @Test("links inside the root are followed as in the guest: absolute ones start at the root, .. stops there, loops end")
    func resolve() throws {
        let root = try TestSupport.temporaryDirectory("rootfolder")
        let outside = try TestSupport.temporaryDirectory("outside")
        try FileStore.createDirectory(root + "/usr/bin")
        try TestSupport.write("inside", to: root + "/usr/bin/tool")
        try TestSupport.write("outside", to: outside + "/tool")
        try FileManager.default.createSymbolicLink(atPath: root + "/bin", withDestinationPath: "usr/bin")
        try FileManager.default.createSymbolicLink(atPath: root + "/usr/bin/abs", withDestinationPath: "/usr/bin/tool")
        try FileManager.default.createSymbolicLink(atPath: root + "/usr/bin/climb", withDestinationPath: "../../../../../../usr/bin/tool")
        try FileManager.default.createSymbolicLink(atPath: root + "/usr/bin/out", withDestinationPath: outside + "/tool")
        try FileManager.default.createSymbolicLink(atPath: root + "/loop", withDestinationPath: "/loop")
        let folder = RootFolder(root)
        #expect(folder.resolve("/bin/tool") == root + "/usr/bin/tool")
        #expect(folder.resolve("/bin/abs") == root + "/usr/bin/tool", "an absolute link starts again at the root")
        #expect(folder.resolve("/bin/climb") == root + "/usr/bin/tool", ".. never climbs above the root")
        #expect(folder.resolve("/bin/out") == nil, "a link to a host path is that path inside the root, where nothing is")
        #expect(folder.resolve("/loop") == nil)
        #expect(folder.resolve("/missing") == nil)
    }

    @Test("the program's target: x86_64 and s390x ELF files, a script's interpreter, through PATH and links; anything else none")
    func targets() throws {
        let root = try TestSupport.temporaryDirectory("rootfolder")
        try FileStore.createDirectory(root + "/bin")
        try FileStore.createDirectory(root + "/opt/s390")
        try Self.elf(machine: 62, bigEndian: false).write(to: URL(fileURLWithPath: root + "/bin/busybox"))
        try Self.elf(machine: 22, bigEndian: true).write(to: URL(fileURLWithPath: root + "/opt/s390/tool"))
        try Self.elf(machine: 183, bigEndian: false).write(to: URL(fileURLWithPath: root + "/bin/arm"))
        try TestSupport.write("#!/bin/sh -e\necho\n", to: root + "/bin/script")
        try TestSupport.write("not a program\n", to: root + "/bin/text")
        for name in ["busybox", "arm", "script", "text"] { chmod(root + "/bin/" + name, 0o755) }
        chmod(root + "/opt/s390/tool", 0o755)
        try FileManager.default.createSymbolicLink(atPath: root + "/bin/sh", withDestinationPath: "busybox")
        let folder = RootFolder(root)
        #expect(folder.target(ofProgram: "sh", environment: []) == .x86_64, "through docker's default PATH and a link")
        #expect(folder.target(ofProgram: "/bin/sh", environment: []) == .x86_64)
        #expect(folder.target(ofProgram: "tool", environment: ["PATH=/opt/s390"]) == .s390x, "the environment's PATH")
        #expect(folder.target(ofProgram: "tool", environment: []) == nil, "not in the default PATH")
        #expect(folder.target(ofProgram: "script", environment: []) == .x86_64, "a script: its interpreter's")
        #expect(folder.target(ofProgram: "arm", environment: []) == nil)
        #expect(folder.target(ofProgram: "text", environment: []) == nil)
        // The host's own busybox, an independent ELF file.
        if FileStore.exists("/bin/busybox") {
            try FileManager.default.removeItem(atPath: root + "/bin/busybox")
            try FileManager.default.copyItem(atPath: "/bin/busybox", toPath: root + "/bin/busybox")
            #expect(folder.target(ofProgram: "sh", environment: []) == Target(rawValue: Target.hostMachine))
        }
    }
}
