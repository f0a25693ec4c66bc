import Foundation
import VMFactoryCore

/// A container's root as a host folder (`run --rootfs`, an OCI bundle's root): paths resolved
/// inside it as the guest will see them, and the architecture of the program it will run.
public struct RootFolder: Sendable {
    public let path: String

    public init(_ path: String) {
        self.path = path
    }

    /// The most symbolic links one lookup follows, as Linux's.
    static let linkLimit = 40

    /// The host path of `guestPath` inside the root, links followed as the guest would follow
    /// them: an absolute link starts again at the root, and `..` never climbs above it. nil when
    /// nothing is there or the links go round.
    public func resolve(_ guestPath: String) -> String? {
        var pending = guestPath.split(separator: "/").map(String.init).reversed() as [String]
        var resolved: [String] = []
        var links = 0
        while let name = pending.popLast() {
            switch name {
            case "", ".":
                continue
            case "..":
                _ = resolved.popLast()
                continue
            default:
                break
            }
            let candidate = path + "/" + (resolved + [name]).joined(separator: "/")
            var st = stat()
            guard lstat(candidate, &st) == 0 else { return nil }
            guard st.st_mode & S_IFMT == S_IFLNK else {
                resolved.append(name)
                continue
            }
            links += 1
            guard links <= Self.linkLimit, let target = try? FileManager.default.destinationOfSymbolicLink(atPath: candidate) else { return nil }
            if target.hasPrefix("/") { resolved = [] }
            pending += target.split(separator: "/").map(String.init).reversed()
        }
        return path + "/" + resolved.joined(separator: "/")
    }

    /// Makes the mount point `guestPath` where the root lacks it (a folder, or an empty file for
    /// a file's bind), its missing parents as folders, every step resolved as the guest resolves
    /// it, so that a link of the image's never leads outside the root. A read-only root cannot
    /// have them made in the guest; runc makes them too.
    public func makeMountPoint(_ guestPath: String, file: Bool) throws {
        var current = "/"
        let names = guestPath.split(separator: "/").map(String.init)
        for (index, name) in names.enumerated() {
            guard name != "." && name != ".." else {
                throw VMFactoryError(.invalidArgument, "the mount point \(guestPath) is not a plain path", hint: "give an absolute path without . or ..")
            }
            let next = (current == "/" ? "" : current) + "/" + name
            if resolve(next) == nil {
                guard let parent = resolve(current) else {
                    throw VMFactoryError(.io, "cannot make the mount point \(guestPath) in \(path)", hint: "check the container's root")
                }
                let target = parent + "/" + name
                let last = index == names.count - 1
                if last && file {
                    let fd = open(target, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o644)
                    guard fd >= 0 else { throw VMFactoryError.io("cannot make the mount point", path: target) }
                    close(fd)
                } else if mkdir(target, 0o755) != 0 && errno != EEXIST {
                    throw VMFactoryError.io("cannot make the mount point", path: target)
                }
            }
            current = next
        }
    }

    /// The program `name` names, as the guest's exec looks it up: a path when it has a slash,
    /// else the first executable file of that name in `PATH` (the environment's, else docker's
    /// default).
    public func program(_ name: String, environment: [String]) -> String? {
        if name.contains("/") { return resolve(name.hasPrefix("/") ? name : "/" + name) }
        let search = environment.last { $0.hasPrefix("PATH=") }.map { String($0.dropFirst(5)) } ?? ContainerProcess.defaultPath
        for folder in search.split(separator: ":") where folder.hasPrefix("/") {
            if let found = resolve(folder + "/" + name), FileStore.isRegularFile(found), access(found, X_OK) == 0 { return found }
        }
        return nil
    }

    /// The target whose kernel runs `program`: its ELF header's machine, or that of the
    /// interpreter a `#!` line names. nil when it is neither (or another architecture's).
    public func target(ofProgram program: String, environment: [String]) -> Target? {
        var path = self.program(program, environment: environment)
        for _ in 0..<4 {
            guard let file = path, let handle = FileHandle(forReadingAtPath: file) else { return nil }
            let head = (try? handle.read(upToCount: 256)) ?? Data()
            try? handle.close()
            if let target = Self.elfTarget(Array(head)) { return target }
            // A script: its interpreter's architecture.
            guard head.starts(with: Array("#!".utf8)) else { return nil }
            let line = String(decoding: head.dropFirst(2).prefix { $0 != 0x0a }, as: UTF8.self)
            guard let interpreter = line.split(separator: " ", omittingEmptySubsequences: true).first else { return nil }
            path = resolve(String(interpreter))
        }
        return nil
    }

    /// EM_X86_64 (62) in a 64-bit little-endian ELF file, or EM_S390 (22) in a 64-bit
    /// big-endian one.
    static func elfTarget(_ head: [UInt8]) -> Target? {
        guard head.count >= 20, head.starts(with: [0x7f, 0x45, 0x4c, 0x46]), head[4] == 2 else { return nil }
        switch head[5] {
        case 1 where UInt16(head[18]) | UInt16(head[19]) << 8 == 62: return .x86_64
        case 2 where UInt16(head[18]) << 8 | UInt16(head[19]) == 22: return .s390x
        default: return nil
        }
    }
}
