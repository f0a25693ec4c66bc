import CLinux
import Foundation
import Testing
@testable import VMFactoryCore

/// What one path of a file tree is, as both readers below report it.
struct TreeNode: Equatable, CustomStringConvertible {
    var type: Character
    var permissions: UInt32
    var uid: UInt32
    var gid: UInt32
    var size: Int64?
    var mtime: Int64?
    var target: String?
    var device: String?
    var xattrs: [String: String]
    var sha256: String?

    var description: String {
        var parts = ["\(type) \(String(permissions, radix: 8)) \(uid):\(gid)"]
        if let size { parts.append("size \(size)") }
        if let mtime { parts.append("mtime \(mtime)") }
        if let target { parts.append("-> \(target)") }
        if let device { parts.append("dev \(device)") }
        if !xattrs.isEmpty { parts.append("xattrs \(xattrs)") }
        if let sha256 { parts.append("sha256 \(sha256.prefix(12))") }
        return parts.joined(separator: ", ")
    }
}

/// A tree read back: every path and, for hard links, which paths share an inode.
struct Tree {
    var nodes: [String: TreeNode]
    var linkGroups: Set<Set<String>>
}

/// Reads an ext4 disk with e2fsprogs' debugfs and e2fsck, not with vmfactory's code.
struct DiskInspector {
    let raw: String

    /// A raw copy of `disk` (qcow2 through qemu-img convert).
    static func open(_ disk: String, scratch: String) async throws -> DiskInspector {
        if disk.hasSuffix(".raw") { return DiskInspector(raw: disk) }
        let raw = scratch + "/inspect-\(UUID().uuidString.prefix(8)).raw"
        try await ImageFixtures.run("qemu-img", ["convert", "-f", "qcow2", "-O", "raw", disk, raw])
        return DiskInspector(raw: raw)
    }

    /// `e2fsck -fn`: its status (0 when clean) and what it said.
    func fsck() async throws -> (status: Int32, output: String) {
        let result = try await TestSupport.runner.run(Command("e2fsck", ["-fn", raw]), output: .capture)
        guard case .exited(let status) = result.termination else { return (-1, result.output) }
        return (status, result.output)
    }

    /// Runs debugfs commands in one go; the output of each, in order.
    func debugfs(_ commands: [String]) async throws -> [String] {
        guard !commands.isEmpty else { return [] }
        let script = FileManager.default.temporaryDirectory.appendingPathComponent("debugfs-\(UUID().uuidString).txt").path
        try TestSupport.write(commands.joined(separator: "\n") + "\n", to: script)
        defer { unlink(script) }
        let result = try await TestSupport.runner.run(Command("debugfs", ["-f", script, raw]), output: .stdoutApart)
        // debugfs echoes each command as "debugfs: COMMAND" before its output.
        var outputs: [String] = []
        var current: [Substring]? = nil
        for line in result.output.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("debugfs: ") {
                if let current { outputs.append(current.joined(separator: "\n")) }
                current = []
            } else {
                current?.append(line)
            }
        }
        if let current { outputs.append(current.joined(separator: "\n")) }
        return outputs
    }

    static func quoted(_ path: String) -> String { "\"\(path)\"" }

    /// `debugfs stat PATH`, parsed: type, mode, owner, size, links, mtime, device, link
    /// target, xattrs.
    struct Stat {
        var type: String
        var mode: UInt32
        var uid: UInt32
        var gid: UInt32
        var size: Int64
        var links: Int
        var mtime: Int64
        var device: String?
        var target: String?
        var xattrs: [String: String]
    }

    static func parseStat(_ text: String) -> Stat? {
        func field(_ name: String) -> String? {
            guard let range = text.range(of: name + ":") else { return nil }
            return text[range.upperBound...].split(whereSeparator: { $0 == " " || $0 == "\n" }).first.map(String.init)
        }
        guard let typeRange = text.range(of: "Type: "), let mode = field("Mode").flatMap({ UInt32($0, radix: 8) }) else { return nil }
        let type = text[typeRange.upperBound...].prefix { $0 != " " }
        var stat = Stat(
            type: String(type), mode: mode, uid: UInt32(field("User") ?? "") ?? 0, gid: UInt32(field("Group") ?? "") ?? 0,
            size: Int64(field("Size") ?? "") ?? 0, links: Int(field("Links") ?? "") ?? 0, mtime: 0, device: nil, target: nil, xattrs: [:]
        )
        if let range = text.range(of: " mtime: 0x") {
            stat.mtime = Int64(text[range.upperBound...].prefix(8), radix: 16) ?? 0
        }
        if let range = text.range(of: "Device major/minor number: ") {
            stat.device = String(text[range.upperBound...].prefix { $0 != " " })
        }
        if let range = text.range(of: "Fast link dest: \"") {
            stat.target = String(text[range.upperBound...].prefix { $0 != "\"" })
        }
        if let range = text.range(of: "Extended attributes:\n") {
            for line in text[range.upperBound...].split(separator: "\n") {
                guard line.hasPrefix("  "), let equals = line.range(of: " = ") else { break }
                let name = line.dropFirst(2).prefix { $0 != " " }
                // Printable values come quoted, others as spaced hex: both to plain hex.
                let value = line[equals.upperBound...]
                if value.hasPrefix("\""), value.hasSuffix("\"") {
                    stat.xattrs[String(name)] = value.dropFirst().dropLast().utf8.map { String(format: "%02x", $0) }.joined()
                } else {
                    stat.xattrs[String(name)] = value.replacingOccurrences(of: " ", with: "").lowercased()
                }
            }
        }
        return stat
    }

    func stat(_ path: String) async throws -> Stat? {
        Self.parseStat(try await debugfs(["stat " + Self.quoted(path)]).first ?? "")
    }

    /// The whole tree: names from `ls -p` level by level, then `stat` and `dump` of each.
    func tree(scratch: String, ignoring ignored: Set<String> = ["/lost+found"]) async throws -> Tree {
        var kinds: [String: (ino: Int, mode: UInt32)] = ["/": (2, 0o040000)]
        var level = ["/"]
        while !level.isEmpty {
            let outputs = try await debugfs(level.map { "ls -p " + Self.quoted($0) })
            var next: [String] = []
            for (folder, output) in zip(level, outputs) {
                for line in output.split(separator: "\n") {
                    // /INODE/MODE/UID/GID/NAME/SIZE/
                    let fields = line.split(separator: "/", omittingEmptySubsequences: false)
                    guard fields.count >= 7, let ino = Int(fields[1]), let mode = UInt32(fields[2], radix: 8) else { continue }
                    let name = fields[5...(fields.count - 3)].joined(separator: "/")
                    guard name != ".", name != ".." else { continue }
                    let path = (folder == "/" ? "" : folder) + "/" + name
                    guard !ignored.contains(path) else { continue }
                    kinds[path] = (ino, mode)
                    if mode & 0o170000 == 0o040000 { next.append(path) }
                }
            }
            level = next
        }
        let paths = kinds.keys.sorted()
        let stats = try await debugfs(paths.map { "stat " + Self.quoted($0) })
        let files = paths.filter { kinds[$0]!.mode & 0o170000 == 0o100000 }
        let dumped = files.enumerated().map { (scratch + "/dump-\($0.offset)", $0.element) }
        _ = try await debugfs(dumped.map { "dump " + Self.quoted($0.1) + " " + $0.0 })
        var nodes: [String: TreeNode] = [:]
        for (path, text) in zip(paths, stats) {
            guard let stat = Self.parseStat(text) else { throw VMFactoryError(.internalError, "debugfs stat \(path): \(text)") }
            let type = Self.typeLetter(kinds[path]!.mode)
            nodes[path] = TreeNode(
                type: type, permissions: stat.mode & 0o7777, uid: stat.uid, gid: stat.gid,
                size: type == "-" ? stat.size : nil, mtime: stat.mtime, target: type == "l" ? (stat.target ?? "") : nil,
                device: (type == "c" || type == "b") ? stat.device : nil, xattrs: stat.xattrs, sha256: nil
            )
        }
        for (file, path) in dumped {
            nodes[path]?.sha256 = try SHA256Digest.ofFile(at: file, cancellation: nil).hex
        }
        var byInode: [Int: Set<String>] = [:]
        for path in files { byInode[kinds[path]!.ino, default: []].insert(path) }
        return Tree(nodes: nodes, linkGroups: Set(byInode.values.filter { $0.count > 1 }))
    }

    static func typeLetter(_ mode: UInt32) -> Character {
        switch mode & 0o170000 {
        case 0o040000: return "d"
        case 0o100000: return "-"
        case 0o120000: return "l"
        case 0o020000: return "c"
        case 0o060000: return "b"
        case 0o010000: return "p"
        case 0o140000: return "s"
        default: return "?"
        }
    }
}

/// A folder read with lstat and the xattr calls: what `umoci unpack` made of an image.
enum HostTree {
    static func read(_ root: String) throws -> Tree {
        var nodes: [String: TreeNode] = [:]
        var byInode: [UInt64: Set<String>] = [:]
        func visit(_ path: String, _ relative: String) throws {
            var st = stat()
            guard lstat(path, &st) == 0 else { throw VMFactoryError.io("cannot stat", path: path) }
            let type = DiskInspector.typeLetter(UInt32(st.st_mode))
            var node = TreeNode(
                type: type, permissions: UInt32(st.st_mode) & 0o7777, uid: st.st_uid, gid: st.st_gid,
                size: type == "-" ? Int64(st.st_size) : nil, mtime: Int64(st.st_mtim.tv_sec), target: nil, device: nil,
                xattrs: xattrs(path), sha256: nil
            )
            switch type {
            case "-":
                node.sha256 = try SHA256Digest.ofFile(at: path, cancellation: nil).hex
                byInode[UInt64(st.st_ino), default: []].insert(relative)
            case "l":
                node.target = try FileManager.default.destinationOfSymbolicLink(atPath: path)
            case "c", "b":
                node.device = String(format: "%02x:%02x", major(st.st_rdev), minor(st.st_rdev))
            default: break
            }
            nodes[relative] = node
            if type == "d" {
                for name in try FileManager.default.contentsOfDirectory(atPath: path) {
                    try visit(path + "/" + name, (relative == "/" ? "" : relative) + "/" + name)
                }
            }
        }
        try visit(root, "/")
        return Tree(nodes: nodes, linkGroups: Set(byInode.values.filter { $0.count > 1 }))
    }

    static func major(_ device: UInt) -> UInt { (device >> 8) & 0xfff | (device >> 32) & ~0xfff }
    static func minor(_ device: UInt) -> UInt { device & 0xff | (device >> 12) & ~0xff }

    /// Extended attributes as debugfs prints them: hex without spaces.
    static func xattrs(_ path: String) -> [String: String] {
        let size = llistxattr(path, nil, 0)
        guard size > 0 else { return [:] }
        var names = [CChar](repeating: 0, count: size)
        guard llistxattr(path, &names, size) == size else { return [:] }
        var result: [String: String] = [:]
        for name in names.split(separator: 0).map({ String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }) {
            let length = lgetxattr(path, name, nil, 0)
            guard length >= 0 else { continue }
            var value = [UInt8](repeating: 0, count: length)
            _ = lgetxattr(path, name, &value, length)
            result[name] = value.map { String(format: "%02x", $0) }.joined()
        }
        return result
    }
}
