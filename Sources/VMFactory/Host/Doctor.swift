import Foundation

/// Checks the host tools and libraries the targets need, and the Debian packages that add them.
public enum Doctor {
    public struct Check: Sendable, Codable {
        public var name: String
        public var purpose: String
        public var package: String
        public var found: Bool
        public var detail: String?
    }

    public struct Report: Sendable, Codable {
        public var checks: [Check]
        public var missingPackages: [String]
        /// The one command that installs everything missing; nil when nothing is.
        public var installCommand: String?
        public var ok: Bool { missingPackages.isEmpty }
    }

    enum Probe {
        case executable(String)
        case file([String])
        case header(String)
    }

    struct Requirement {
        var name: String
        var purpose: String
        var package: String
        var probe: Probe
    }

    static func requirements(for targets: [Target], host: String = Target.hostMachine) -> [Requirement] {
        var list: [Requirement] = [
            Requirement(name: "make", purpose: "kernel build", package: "make", probe: .executable("make")),
            Requirement(name: "gcc", purpose: "host tools of the kernel build", package: "gcc", probe: .executable("gcc")),
            Requirement(name: "flex", purpose: "Kconfig and dtc lexers", package: "flex", probe: .executable("flex")),
            Requirement(name: "bison", purpose: "Kconfig and dtc parsers", package: "bison", probe: .executable("bison")),
            Requirement(name: "bc", purpose: "kernel build (timeconst)", package: "bc", probe: .executable("bc")),
            Requirement(name: "patch", purpose: "applying the patch series", package: "patch", probe: .executable("patch")),
            Requirement(name: "pkg-config", purpose: "finding libarchive when building vmfactory", package: "pkg-config", probe: .executable("pkg-config")),
            Requirement(name: "libelf", purpose: "objtool and resolve_btfids", package: "libelf-dev", probe: .header("/usr/include/libelf.h")),
            Requirement(name: "libssl", purpose: "kernel certificate tools", package: "libssl-dev", probe: .header("/usr/include/openssl/ssl.h")),
            Requirement(name: "libarchive", purpose: "extraction and initrd writing", package: "libarchive-dev", probe: .header("/usr/include/archive.h")),
            Requirement(name: "liblz4", purpose: "lz4-compressed initrds", package: "liblz4-dev", probe: .header("/usr/include/lz4hc.h")),
            Requirement(name: "cpio", purpose: "inspecting initrds", package: "cpio", probe: .executable("cpio")),
            Requirement(name: "qemu-img", purpose: "disk images", package: "qemu-utils", probe: .executable("qemu-img")),
        ]
        for target in targets {
            if let prefix = target.crossCompilePrefix(host: host) {
                list.append(Requirement(name: "\(prefix)gcc", purpose: "\(target) kernel and init", package: "gcc-\(target.gnuTriple)", probe: .executable("\(prefix)gcc")))
                list.append(Requirement(
                    name: "\(target) static libc", purpose: "static init for \(target)", package: "libc6-dev-\(debianArch(target))-cross",
                    probe: .file(["/usr/\(target.gnuTriple)/lib/libc.a"])
                ))
            } else {
                list.append(Requirement(
                    name: "\(target) static libc", purpose: "static init for \(target)", package: "libc6-dev",
                    probe: .file(["/usr/lib/\(target.gnuTriple)/libc.a"])
                ))
            }
            list.append(Requirement(name: target.qemuSystem, purpose: "booting \(target) guests", package: qemuPackage(target), probe: .executable(target.qemuSystem)))
        }
        return list
    }

    static func debianArch(_ target: Target) -> String {
        switch target {
        case .x86_64: return "amd64"
        case .s390x: return "s390x"
        }
    }

    static func qemuPackage(_ target: Target) -> String {
        switch target {
        case .x86_64: return "qemu-system-x86"
        case .s390x: return "qemu-system-misc"
        }
    }

    public static func check(targets: [Target], environment: [String: String] = ProcessInfo.processInfo.environment) -> Report {
        let path = (environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)
        let checks = requirements(for: targets).map { requirement -> Check in
            let (found, detail) = probe(requirement.probe, path: path)
            return Check(name: requirement.name, purpose: requirement.purpose, package: requirement.package, found: found, detail: detail)
        }
        var missing: [String] = []
        for check in checks where !check.found && !missing.contains(check.package) { missing.append(check.package) }
        let sudo = getuid() == 0 ? "" : "sudo "
        return Report(
            checks: checks, missingPackages: missing,
            installCommand: missing.isEmpty ? nil : "\(sudo)apt-get install -y --no-install-recommends \(missing.joined(separator: " "))"
        )
    }

    static func probe(_ probe: Probe, path: [String]) -> (Bool, String?) {
        switch probe {
        case .executable(let name):
            let found = findExecutable(name, path: path)
            return (found != nil, found)
        case .file(let candidates):
            let found = candidates.first(where: FileStore.isRegularFile)
            return (found != nil, found)
        case .header(let header):
            return (FileStore.isRegularFile(header), FileStore.isRegularFile(header) ? header : nil)
        }
    }

    public static func findExecutable(_ name: String, path: [String] = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":").map(String.init)) -> String? {
        for folder in path {
            let candidate = folder + "/" + name
            if access(candidate, X_OK) == 0, FileStore.isRegularFile(candidate) { return candidate }
        }
        return nil
    }
}
