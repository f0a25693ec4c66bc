import Foundation
import VMFactoryBoot
import VMFactoryCore
import VMFactoryImage
import VMFactoryKernel
import VMFactoryLifecycle
import VMFactoryPublish
import VMFactoryRun

/// An OCI bundle as a run: the container's root folder as the guest's root, its process, its
/// mounts and resources in the VM's terms. What the VM does not honour is logged with --debug.
public struct BundleRun: Sendable {
    public var config: OCIConfig
    public var root: String
    public var bundle: String
    public var log: RuntimeLog

    public init(bundle: String, log: RuntimeLog) throws {
        (config, root) = try OCIConfig.load(bundle: bundle)
        self.bundle = bundle
        self.log = log
    }

    /// The annotation that names the target, for a root whose program says nothing.
    public static let targetAnnotation = "dev.vmfactory.target"
    /// The annotation that names a published kernel image for this container.
    public static let kernelAnnotation = "dev.vmfactory.kernel-image"

    /// Mounts the init makes itself, as a container engine asks for them.
    static let ownMounts: Set<String> = ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"]

    /// The request: the process as the config says it, the root folder, the resources.
    public func request(configuration: RuntimeConfiguration, interactive: Bool) throws -> BundleRequest {
        let process = config.process!
        var request = BundleRequest(run: RunRequest(image: bundle))
        request.run.rootFolder = root
        request.run.process.command = process.args ?? []
        request.run.process.entrypoint = nil
        request.run.process.environment = (process.env ?? []).filter { $0.contains("=") }
        request.run.process.user = try Self.user(process.user, root: root)
        request.run.process.workdir = process.cwd.isEmpty ? "/" : process.cwd
        request.run.hostname = config.hostname.flatMap { $0.isEmpty ? nil : $0 }
        request.run.options.tty = process.terminal ?? false
        request.run.options.interactive = interactive || request.run.options.tty
        request.run.options.readOnly = config.root?.readonly ?? false
        request.run.options.network = .none
        request.run.options.memoryMiB = configuration.memoryMiB ?? 512
        request.run.accelerator = .auto
        if let annotated = config.annotations?[Self.targetAnnotation] {
            guard let target = Target(rawValue: annotated) else {
                throw VMFactoryError(.invalidArgument, "the annotation \(Self.targetAnnotation)=\(annotated) names no target", hint: "use x86_64 or s390x")
            }
            request.run.platform = Platform.of(target)
        }
        if let resources = config.linux?.resources {
            if let limit = resources.memory?.limit, limit > 0 {
                // The VM's memory is the limit: the guest's kernel and init live in it too.
                request.run.options.memoryMiB = max(Int((limit + (1 << 20) - 1) >> 20), 128)
            }
            if let quota = resources.cpu?.quota, quota > 0, let period = resources.cpu?.period, period > 0 {
                request.run.options.cpus = max(1, min(64, Int((UInt64(quota) + period - 1) / period)))
            } else if let cpus = resources.cpu?.cpus, let count = Self.cpuCount(cpus) {
                request.run.options.cpus = max(1, min(64, count))
            }
            if let pids = resources.pids?.limit, pids > 0 { request.run.options.pidsLimit = Int(pids) }
        }
        for mount in config.mounts ?? [] {
            if Self.ownMounts.contains(mount.destination) {
                log.debug("mount \(mount.destination) (\(mount.type ?? "")): made by the guest's init itself")
                continue
            }
            let options = mount.options ?? []
            switch mount.type {
            case "tmpfs":
                let (tmpfs, dropped) = TmpfsMount.engine(guest: mount.destination, options: options)
                request.run.options.tmpfs.append(tmpfs)
                if !dropped.isEmpty { log.debug("tmpfs \(mount.destination): options \(dropped.joined(separator: ",")) not applied in the guest") }
            case "bind", nil, "none":
                try bind(mount, into: &request.run)
            default:
                log.debug("mount \(mount.destination) (\(mount.type ?? "")): not made in the VM; skipped")
            }
        }
        request.networkNamespace = config.linux?.namespaces?.first { $0.type == "network" }?.path.flatMap { $0.isEmpty ? nil : $0 }
        request.run.process.privileges = Self.privileges(process, log: log)
        if request.run.options.readOnly {
            // The guest cannot make them on a read-only root: made here, as runc makes them.
            let folder = RootFolder(root)
            for own in ["/dev", "/proc", "/sys"] { try folder.makeMountPoint(own, file: false) }
            for tmpfs in request.run.options.tmpfs { try folder.makeMountPoint(tmpfs.guest, file: false) }
            for volume in request.run.options.volumes { try folder.makeMountPoint(volume.guest, file: false) }
            for file in request.run.options.files { try folder.makeMountPoint(file.guest, file: true) }
        }
        return request
    }

    /// The process's groups, limits, capabilities, no_new_privs and umask, as the init takes
    /// them; what it cannot take (an unknown capability or limit) is said with --debug.
    public static func privileges(_ process: OCIConfig.Process, log: RuntimeLog) -> ProcessPrivileges {
        var privileges = ProcessPrivileges()
        // As runc: the groups are the config's, not the image's /etc/group (the engine read it).
        privileges.groups = Array((process.user.additionalGids ?? []).prefix(64))
        for limit in process.rlimits ?? [] {
            let name = limit.type.uppercased().replacingOccurrences(of: "RLIMIT_", with: "")
            guard ProcessPrivileges.rlimitNames.contains(name), limit.soft <= limit.hard else {
                log.debug("process.rlimits: \(limit.type) \(limit.soft)/\(limit.hard) is not a limit the guest takes; skipped")
                continue
            }
            privileges.rlimits.append(.init(name: name, soft: limit.soft, hard: limit.hard))
        }
        if let given = process.capabilities {
            var sets = ProcessPrivileges.Capabilities()
            var unknown: [String] = []
            func mask(_ names: [String]?) -> UInt64 {
                let (mask, missing) = ProcessPrivileges.mask(names ?? [])
                unknown += missing
                return mask
            }
            sets.bounding = mask(given.bounding)
            sets.effective = mask(given.effective)
            sets.permitted = mask(given.permitted)
            sets.inheritable = mask(given.inheritable)
            sets.ambient = mask(given.ambient)
            privileges.capabilities = sets
            if !unknown.isEmpty { log.debug("process.capabilities: \(Set(unknown).sorted().joined(separator: ", ")) unknown to the guest's kernel; skipped") }
        }
        privileges.noNewPrivileges = process.noNewPrivileges ?? false
        privileges.umask = process.user.umask
        return privileges
    }

    /// A bind mount: a folder shared with the guest (virtio-fs, or 9p through the proxy helper
    /// for a guest of the other byte order), a small file's text bound over the image's; what
    /// else there is (devices, sockets, large files) is said and skipped.
    func bind(_ mount: OCIConfig.Mount, into request: inout RunRequest) throws {
        guard let source = mount.source, source.hasPrefix("/") else {
            log.debug("mount \(mount.destination): a bind mount with no absolute source; skipped")
            return
        }
        let readOnly = (mount.options ?? []).contains("ro")
        var st = stat()
        guard stat(source, &st) == 0 else {
            throw VMFactoryError(.notFound, "the bind mount's source \(source) (for \(mount.destination)) does not exist", hint: "create it, or drop the mount")
        }
        switch st.st_mode & S_IFMT {
        case S_IFDIR:
            request.options.volumes.append(Volume(host: source, guest: mount.destination, readOnly: readOnly, kind: .virtiofs))
        case S_IFREG where st.st_size <= GuestFile.largest:
            guard let data = FileManager.default.contents(atPath: source), !data.contains(0), let text = String(data: data, encoding: .utf8) else {
                log.debug("mount \(mount.destination) from \(source): not a text file; skipped")
                return
            }
            request.options.files.append(GuestFile(guest: mount.destination, content: text, readOnly: readOnly))
        default:
            log.debug("mount \(mount.destination) from \(source): only folders and text files of up to \(GuestFile.largest >> 10) KiB reach the VM; skipped")
        }
    }

    /// The process's `uid:gid`: the config's numbers, or those of the user it names, from the
    /// image's /etc/passwd (read inside the root, as the guest reads it).
    static func user(_ user: OCIConfig.User, root: String) throws -> String {
        guard let name = user.username, !name.isEmpty else { return "\(user.uid):\(user.gid)" }
        let passwd = RootFolder(root).resolve("/etc/passwd").flatMap { try? FileStore.readText($0) } ?? ""
        for line in passwd.split(separator: "\n") {
            let fields = line.split(separator: ":", omittingEmptySubsequences: false)
            if fields.count >= 4, fields[0] == name, let uid = UInt32(fields[2]), let gid = UInt32(fields[3]) { return "\(uid):\(gid)" }
        }
        throw VMFactoryError(
            .invalidArgument, "the process's user \(name) is not in the image's /etc/passwd",
            hint: "give a user the image has, or numbers (process.user.uid and gid)"
        )
    }

    /// The number of CPUs in a cpuset list such as `0-3,6`.
    static func cpuCount(_ list: String) -> Int? {
        var count = 0
        for part in list.split(separator: ",") {
            let bounds = part.split(separator: "-").compactMap { Int($0.trimmingCharacters(in: .whitespaces)) }
            switch bounds.count {
            case 1: count += 1
            case 2 where bounds[1] >= bounds[0]: count += bounds[1] - bounds[0] + 1
            default: return nil
            }
        }
        return count > 0 ? count : nil
    }
}

/// A bundle's run request, and the network namespace it names (inspected by the supervisor,
/// as root, once the VM is to be made).
public struct BundleRequest: Sendable {
    public var run: RunRequest
    public var networkNamespace: String?
}

/// The kernels a runtime call finds: the recipe's built ones in the output folder, or a
/// published kernel image's. Never a build: a create that would compile for minutes is an
/// error that says which command builds it.
struct BuiltKernels: RunKernelProvider {
    let factory: Factory
    let recipe: Recipe
    let kernelImage: String?

    func kernel(for target: Target) async throws -> RunKernel {
        let booter = Booter(factory)
        var options = BootOptions()
        if let kernelImage {
            let reference = try ImageReference(parsing: kernelImage, currentDirectory: factory.workspace.currentDirectory)
            let cache = factory.workspace.cacheDirectory
            let skopeo = Skopeo(registry: RegistryOptions(), environment: factory.workspace.hostEnvironment, runner: factory.runner)
            let puller = Puller(skopeo: skopeo, console: factory.console, temporaryDirectory: cache + "/tmp")
            options.imagesDirectory = try await PulledKernels(puller: puller, cacheDirectory: cache).directory(for: reference, target: target)
        }
        let found: (kernel: String, initrd: String?, manifest: BuildManifest?)
        do {
            found = try booter.images(recipe, target: target, options: options)
        } catch {
            throw VMFactoryError(
                .notFound, "no \(recipe.name) kernel for \(target) in \(factory.workspace.outputDirectory(recipe: recipe.name, target: target))",
                hint: "build it once: vmfactory build --recipe \(recipe.name) --target \(target)"
            )
        }
        guard let initrd = found.initrd else {
            throw VMFactoryError(.notFound, "no initrd for \(recipe.name)/\(target)", hint: "build it once: vmfactory build --recipe \(recipe.name) --target \(target)")
        }
        return RunKernel(
            kernel: found.kernel, initrd: initrd, cmdline: try found.manifest?.kernel?.cmdline ?? recipe.requireTarget(target).cmdline,
            runProtocol: found.manifest?.initrd?.runProtocol,
            rebuildHint: "rebuild it with this vmfactory: vmfactory build --recipe \(recipe.name) --target \(target)"
        )
    }
}

/// A folder root has no image to convert.
struct NoImages: RunImageProvider {
    func image(_ reference: String, platform: Platform?) async throws -> RunImage {
        throw VMFactoryError(.invalidArgument, "an OCI bundle's run has no image", hint: "this is vmfactory-runtime's error; please report it")
    }
}
