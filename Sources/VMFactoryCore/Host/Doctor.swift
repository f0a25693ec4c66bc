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

    static func tool(_ name: String, _ purpose: String, package: String? = nil) -> Requirement {
        Requirement(name: name, purpose: purpose, package: package ?? name, probe: .executable(name))
    }

    static func header(_ name: String, _ purpose: String, package: String, path: String) -> Requirement {
        Requirement(name: name, purpose: purpose, package: package, probe: .header(path))
    }

    /// What vmfactory needs on the host to build, boot and inspect `targets`. The Debian
    /// packages listed here are the one list `scripts/setup` installs from; what building
    /// vmfactory itself needs (Swift, pkg-config, libarchive-dev, liblz4-dev, libext2fs-dev) is not here,
    /// since a vmfactory that runs has it.
    static func requirements(for targets: [Target], host: String = Target.hostMachine) -> [Requirement] {
        var list: [Requirement] = [
            tool("make", "kernel build"),
            tool("gcc", "host tools of the kernel build"),
            tool("flex", "Kconfig and dtc lexers"),
            tool("bison", "Kconfig and dtc parsers"),
            tool("bc", "kernel build (timeconst)"),
            tool("patch", "applying the patch series"),
            header("libelf", "objtool and resolve_btfids", package: "libelf-dev", path: "/usr/include/libelf.h"),
            header("libssl", "kernel certificate tools", package: "libssl-dev", path: "/usr/include/openssl/ssl.h"),
            tool("cpio", "inspecting initrds"),
            tool("qemu-img", "disk images", package: "qemu-utils"),
            tool("mke2fs", "root disks (vmfactory rootfs)", package: "e2fsprogs"),
            tool("skopeo", "images from registries (docker://)"),
            tool("passt", "vmfactory run's network (--network user, host-loopback)"),
            tool("tc", "vmfactory-runtime's VMs on an engine's network namespace", package: "iproute2"),
            tool("nsenter", "vmfactory-runtime's VMs on an engine's network namespace", package: "util-linux"),
        ]
        for target in targets {
            if let prefix = target.crossCompilePrefix(host: host) {
                list.append(tool("\(prefix)gcc", "\(target) kernel and init", package: "gcc-\(target.gnuTriple)"))
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
            list.append(tool(target.qemuSystem, "booting \(target) guests", package: qemuPackage(target)))
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

    public static func check(targets: [Target], environment: [String: String]) -> Report {
        let checks = requirements(for: targets).map { requirement -> Check in
            let (found, detail) = probe(requirement.probe, environment: environment)
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

    static func probe(_ probe: Probe, environment: [String: String]) -> (Bool, String?) {
        switch probe {
        case .executable(let name):
            let found = findExecutable(name, environment: environment)
            return (found != nil, found)
        case .file(let candidates):
            let found = candidates.first(where: FileStore.isRegularFile)
            return (found != nil, found)
        case .header(let header):
            return (FileStore.isRegularFile(header), FileStore.isRegularFile(header) ? header : nil)
        }
    }

    /// The first executable `name` on the `PATH` of `environment`.
    public static func findExecutable(_ name: String, environment: [String: String]) -> String? {
        try? ChildProcess.resolveExecutable(name, path: environment["PATH"] ?? "/usr/bin:/bin")
    }
}
