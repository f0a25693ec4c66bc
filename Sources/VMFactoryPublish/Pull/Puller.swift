import CArchive
import Foundation
import VMFactoryArchive
import VMFactoryCore
import VMFactoryImage
import VMFactoryKernel

/// `vmfactory pull`: a published image back to files, trusting nothing on the way. Every
/// blob is checked against its descriptor (digest and size), the layer's tar against the
/// config's diff_id, and every file against the build manifest inside and the manifest's
/// annotations. Files are written in temporary folders; only when every asked target is
/// verified are they renamed to `DIR/<target>/`.
public struct Puller: Sendable {
    public var skopeo: Skopeo
    public var console: Console
    public var temporaryDirectory: String

    public init(skopeo: Skopeo, console: Console, temporaryDirectory: String) {
        self.skopeo = skopeo
        self.console = console
        self.temporaryDirectory = temporaryDirectory
    }

    public struct TargetResult: Sendable, Codable {
        public var target: Target
        public var platform: String
        public var manifest: String
        public var directory: String
        public var files: [FolderWriter.File]
    }

    public struct Result: Sendable, Codable {
        public var reference: String
        public var index: String
        public var targets: [TargetResult]
    }

    /// Pulls `targets` (nil: every target the image has) into `output`.
    /// `locking`: take the lock beside `output` (not for a private temporary folder).
    public func pull(_ reference: ImageReference, targets wanted: [Target]?, output: String, force: Bool, locking: Bool = true) async throws -> Result {
        try FileStore.createDirectory(temporaryDirectory)
        FileStore.removeLeftovers(of: temporaryDirectory + "/pull")
        let work = FileStore.temporaryName(for: temporaryDirectory + "/pull")
        try FileStore.createDirectory(work)
        defer { try? FileStore.removeTree(work) }
        let (layout, tag) = try await localLayout(reference, work: work)
        let name = reference.description
        let outputExisted = FileStore.exists(output)
        let lock = locking ? try await Publisher.lock(output, console: console) : nil
        defer { lock?.release() }
        return try await BlockingWork.run("verifying \(name)") { cancellation in
            try FileStore.createDirectory(output)
            // A refused pull leaves no folder it made (rmdir removes only an empty one).
            var succeeded = false
            defer { if !succeeded, !outputExisted { rmdir(output) } }
            let root = try ImageSource.entry(of: try Self.layoutIndex(layout, name: name), tag: tag, name: name)
            let chosen = try Self.choose(root, in: layout, wanted: wanted, name: name)
            var staged: [(TargetResult, String)] = []
            defer { for (_, path) in staged { try? FileStore.removeTree(path) } }
            for (target, descriptor) in chosen {
                let folder = output + "/" + target.rawValue
                FileStore.removeLeftovers(of: folder)
                let stage = FileStore.temporaryName(for: folder)
                staged.append((TargetResult(target: target, platform: Platform.of(target).description, manifest: descriptor.digest, directory: folder, files: []), stage))
                staged[staged.count - 1].0.files = try Self.unpack(descriptor, target: target, layout: layout, into: stage, name: name, cancellation: cancellation)
            }
            for (result, _) in staged { try FolderWriter.checkReplaceable(result.directory, files: result.files, force: force) }
            for (result, stage) in staged { try FolderWriter.swapIn(stage, as: result.directory) }
            let results = staged.map(\.0)
            staged = []
            succeeded = true
            return Result(reference: name, index: root.digest, targets: results)
        }
    }

    /// The digest of what `reference` names, read cheaply (no layer moves); nil for an
    /// archive, whose index is inside.
    public func rootDigest(_ reference: ImageReference) async throws -> SHA256Digest? {
        switch reference {
        case .ociLayout(let path, let tag):
            return try ImageSource.entry(of: try Self.layoutIndex(path, name: reference.description), tag: tag, name: reference.description).sha256(in: reference.description)
        case .registry(let name):
            guard let data = try await skopeo.rawManifest("docker://" + name, what: "reading") else {
                throw VMFactoryError(.notFound, "docker://\(name): the registry has no such image or tag", hint: "check the repository and tag (vmfactory publish … --to docker://\(name))")
            }
            return SHA256Digest.of(data)
        default:
            return nil
        }
    }

    /// A layout on this machine holding the image, and the tag to read in it.
    func localLayout(_ reference: ImageReference, work: String) async throws -> (String, String?) {
        switch reference {
        case .ociLayout(let path, let tag):
            return (path, tag)
        case .ociArchive(let path, let tag):
            guard FileStore.isRegularFile(path) else { throw VMFactoryError(.notFound, "\(reference): no file \(path)", hint: "check the path") }
            try await BlockingWork.run("reading \(reference)") { cancellation in
                try ArchiveLayout.unpack(path, into: work + "/layout", name: reference.description, cancellation: cancellation)
            }
            return (work + "/layout", tag)
        case .registry(let name):
            console.info("pull: skopeo copy --all docker://\(name)")
            _ = try await skopeo.run(
                skopeo.command("copy", ["--all", "--preserve-digests", "--quiet", "docker://" + name, "oci:\(work)/layout:pulled"], side: .source),
                reference: "docker://" + name, what: "pulling"
            )
            return (work + "/layout", "pulled")
        case .dockerArchive, .rootfsTarball:
            throw VMFactoryError(.invalidArgument, "\(reference): pull reads what publish writes", hint: "give oci:DIR[:TAG], oci-archive:FILE[:TAG] or docker://HOST/REPO:TAG")
        }
    }

    static func layoutIndex(_ layout: String, name: String) throws -> ImageIndex {
        guard FileStore.isRegularFile(layout + "/index.json") else {
            throw VMFactoryError(.notFound, "\(name): \(layout) is not an OCI image layout (no index.json)", hint: "give what `vmfactory publish --to oci:DIR` wrote")
        }
        return try JSON.decode(ImageIndex.self, from: try FileStore.readData(layout + "/index.json"), what: "\(name): index.json")
    }

    /// A blob's bytes, refused unless they have the descriptor's size and digest.
    static func blob(_ descriptor: Descriptor, in layout: String, what: String) throws -> Data {
        let digest = try descriptor.sha256(in: what)
        let path = layout + "/blobs/sha256/" + digest.hex
        guard FileStore.isRegularFile(path) else {
            throw VMFactoryError(.notFound, "\(what): the image has no blob \(descriptor.digest)", hint: "the image is incomplete; publish it again")
        }
        let data = try FileStore.readData(path)
        try check(SHA256Digest.of(data), size: Int64(data.count), against: descriptor, digest: digest, what: what)
        return data
    }

    static func check(_ actual: SHA256Digest, size: Int64, against descriptor: Descriptor, digest: SHA256Digest, what: String) throws {
        guard actual == digest else {
            throw VMFactoryError(.digestMismatch, "\(what): expected sha256 \(digest), found \(actual)", hint: "the image was changed after it was published; nothing was written, pull from a good copy")
        }
        guard size == descriptor.size else {
            throw VMFactoryError(.digestMismatch, "\(what): \(size) bytes where its descriptor says \(descriptor.size)", hint: "the image was changed after it was published; nothing was written")
        }
    }

    /// The manifests of the wanted targets, from an index (or a lone manifest).
    static func choose(_ root: Descriptor, in layout: String, wanted: [Target]?, name: String) throws -> [(Target, Descriptor)] {
        let data = try blob(root, in: layout, what: "\(name): \(root.mediaType == MediaType.ociIndex ? "index" : "manifest") \(root.digest)")
        var offered: [(Target?, Descriptor)] = []
        if MediaType.indexes.contains(root.mediaType) {
            let index = try JSON.decode(ImageIndex.self, from: data, what: "\(name): index \(root.digest)")
            offered = index.manifests.map { ($0.platform?.target, $0) }
        } else if MediaType.manifests.contains(root.mediaType) {
            let manifest = try JSON.decode(ImageManifest.self, from: data, what: "\(name): manifest \(root.digest)")
            offered = [(manifest.annotations?[AnnotationKey.target].flatMap(Target.init(rawValue:)), root)]
        } else {
            throw VMFactoryError(.invalidArgument, "\(name) names a \(root.mediaType), not an image", hint: "give what `vmfactory publish` wrote")
        }
        let available = offered.compactMap(\.0)
        let targets = wanted ?? available
        guard !targets.isEmpty else {
            throw VMFactoryError(.notFound, "\(name) holds no image for linux/amd64 or linux/s390x", hint: "give what `vmfactory publish` wrote")
        }
        return try targets.map { target in
            guard let found = offered.first(where: { $0.0 == target }) else {
                throw VMFactoryError(
                    .wrongPlatform, "\(name) has no image for \(Platform.of(target)) (\(target))",
                    hint: available.isEmpty ? "it names no platform vmfactory knows" : "it has \(available.map { Platform.of($0).description }.joined(separator: ", ")); ask for one of them with --platform"
                )
            }
            return (target, found.1)
        }
    }

    /// One target's manifest, config and layer, verified, and its files written into `stage`.
    /// The layer is copied out of the layout first and only the copy is hashed and read, so
    /// a layout changed meanwhile cannot slip other bytes in after the check.
    static func unpack(_ descriptor: Descriptor, target: Target, layout: String, into stage: String, name: String, cancellation: BlockingWork.Cancellation) throws -> [FolderWriter.File] {
        let what = "\(name) (\(target))"
        let manifest = try JSON.decode(ImageManifest.self, from: try blob(descriptor, in: layout, what: "\(what): manifest \(descriptor.digest)"), what: "\(what): manifest")
        if let listed = descriptor.annotations, listed != manifest.annotations {
            throw VMFactoryError(.digestMismatch, "\(what): the index's annotations for it are not the manifest's", hint: "the image was changed after it was published; nothing was written")
        }
        let config = try JSON.decode(ImageConfig.self, from: try blob(manifest.config, in: layout, what: "\(what): config \(manifest.config.digest)"), what: "\(what): config")
        guard manifest.layers.count == 1, let layer = manifest.layers.first, config.rootfs?.diff_ids.count == 1 else {
            throw VMFactoryError(.invalidArgument, "\(what): \(manifest.layers.count) layers where a vmfactory kernel image has one", hint: "give what `vmfactory publish` wrote")
        }
        guard config.platform.map({ $0.matches(Platform.of(target)) }) == true else {
            throw VMFactoryError(.wrongPlatform, "\(what): its config says \(config.platform?.description ?? "no platform")", hint: "the index and the image disagree; publish it again")
        }
        let layerDigest = try layer.sha256(in: what)
        let layerPath = layout + "/blobs/sha256/" + layerDigest.hex
        guard FileStore.isRegularFile(layerPath) else {
            throw VMFactoryError(.notFound, "\(what): the image has no blob \(layer.digest)", hint: "the image is incomplete; publish it again")
        }
        try FileStore.createDirectory(stage)
        let copy = stage + "/.layer"
        defer { unlink(copy) }
        try FileStore.copy(layerPath, to: copy, cancellation: cancellation)
        try check(try SHA256Digest.ofFile(at: copy, cancellation: cancellation), size: FileStore.fileSize(copy) ?? -1, against: layer, digest: layerDigest, what: "\(what): layer \(layer.digest)")
        let diffID = try uncompressedDigest(copy)
        guard "sha256:\(diffID)" == config.rootfs?.diff_ids.first else {
            throw VMFactoryError(.digestMismatch, "\(what): the layer's tar has sha256 \(diffID), its config says \(config.rootfs?.diff_ids.first ?? "")", hint: "the image was changed after it was published; nothing was written")
        }
        let files = try extract(copy, target: target, into: stage, budget: Self.budget(layerSize: layer.size), what: what, cancellation: cancellation)
        try verify(files, manifest: manifest, target: target, stage: stage, what: what)
        try FileStore.writeAtomically(FolderWriter.checksums(files), to: stage + "/SHA256SUMS")
        return files.sorted { $0.name < $1.name }
    }

    /// The most bytes a layer of `layerSize` may unpack to: kernels and initrds shrink to a
    /// third or so under gzip; 64 times, and 4 GiB at most, leaves room and stops a bomb.
    static func budget(layerSize: Int64) -> Int64 {
        min(max(layerSize, 1 << 20) * 64, 4 << 30)
    }

    static func uncompressedDigest(_ path: String) throws -> SHA256Digest {
        let reader = try ArchiveReader(path: path, formats: .raw, hashing: false)
        var hasher = StreamingHasher()
        while try reader.nextEntry() != nil { try reader.readData { hasher.update($0) } }
        return hasher.finalize()
    }

    /// The layer's `boot/` files into `stage` (under their folder names), hashed while
    /// written; anything a published layer never holds is refused, and so is more data than
    /// `budget`, before it is written.
    static func extract(_ layerPath: String, target: Target, into stage: String, budget: Int64, what: String, cancellation: BlockingWork.Cancellation) throws -> [FolderWriter.File] {
        let allowed = BuiltTarget.allowedNames(for: target)
        let reader = try ArchiveReader(path: layerPath, formats: .tar, hashing: false)
        var files: [FolderWriter.File] = []
        var total: Int64 = 0
        while let entry = try reader.nextEntry() {
            try cancellation.check()
            var path = reader.currentPath
            while path.hasPrefix("./") || path.hasPrefix("/") { path.removeFirst(path.hasPrefix("/") ? 1 : 2) }
            let type = EntryType(rawValue: archive_entry_filetype(entry))
            if path == "boot" || path == "boot/", type == .directory { continue }
            let fileName = path.hasPrefix("boot/") ? String(path.dropFirst(5)) : ""
            guard allowed.contains(fileName) else {
                throw VMFactoryError(.hostileArchive, "\(what): the layer holds '\(reader.currentPath)', which a vmfactory kernel image never has", hint: "pull only images `vmfactory publish` wrote; nothing was written")
            }
            guard type == .regular else {
                throw VMFactoryError(.hostileArchive, "\(what): '\(reader.currentPath)' in the layer is not a regular file (a link or a device)", hint: "pull only images `vmfactory publish` wrote; nothing was written")
            }
            let name = FolderWriter.folderName(fileName)
            guard !files.contains(where: { $0.name == name }) else {
                throw VMFactoryError(.hostileArchive, "\(what): the layer holds \(path) twice", hint: "pull only images `vmfactory publish` wrote; nothing was written")
            }
            let declared = archive_entry_size(entry)
            total += max(declared, 0)
            guard total <= budget else {
                throw VMFactoryError(.hostileArchive, "\(what): the layer unpacks to more than \(ByteCount.format(budget))", hint: "pull only images `vmfactory publish` wrote; nothing was written")
            }
            let destination = stage + "/" + name
            let fd = open(destination, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw VMFactoryError.io("cannot create", path: destination) }
            defer { close(fd) }
            var hasher = StreamingHasher()
            try reader.readData { bytes in
                hasher.update(bytes)
                guard hasher.byteCount <= declared else {
                    throw VMFactoryError(.hostileArchive, "\(what): \(path) holds more than its tar header says", hint: "nothing was written")
                }
                try FileStore.writeAll(fd, bytes, path: destination)
            }
            files.append(FolderWriter.File(name: name, sha256: hasher.finalize(), size: hasher.byteCount))
        }
        return files
    }

    /// The files against the build manifest among them and the image manifest's annotations.
    static func verify(_ files: [FolderWriter.File], manifest: ImageManifest, target: Target, stage: String, what: String) throws {
        guard files.contains(where: { $0.name == BuildManifest.fileName }) else {
            throw VMFactoryError(.notFound, "\(what): the layer has no /boot/\(BuiltTarget.manifestName)", hint: "give what `vmfactory publish` wrote")
        }
        let build = try BuildManifest.load(stage + "/" + BuildManifest.fileName)
        guard build.target == target else {
            throw VMFactoryError(.wrongPlatform, "\(what): its build manifest is for \(build.target)", hint: "the index and the image disagree; publish it again")
        }
        func refuse(_ name: String, expected: String, actual: String, by source: String) -> VMFactoryError {
            VMFactoryError(.digestMismatch, "\(what): \(name): expected sha256 \(expected) (\(source)), found \(actual)", hint: "the image was changed after it was published; nothing was written")
        }
        for file in files where file.name != BuildManifest.fileName {
            guard let recorded = build.artifact(file.name) else {
                throw VMFactoryError(.hostileArchive, "\(what): \(file.name) is not in its build manifest", hint: "nothing was written")
            }
            guard recorded.sha256 == file.sha256, recorded.size == file.size else {
                throw refuse(file.name, expected: recorded.sha256.hex, actual: file.sha256.hex, by: "the build manifest")
            }
        }
        let required = [BuiltTarget.bootKernelName(for: target), "bzImage", "config", "System.map"]
        for name in required where !files.contains(where: { $0.name == name }) {
            throw VMFactoryError(.notFound, "\(what): the image has no /boot/\(name)", hint: "give what `vmfactory publish` wrote")
        }
        guard let initrd = files.first(where: { BuiltTarget.isInitrd($0.name) }) else {
            throw VMFactoryError(.notFound, "\(what): the image has no initrd", hint: "give what `vmfactory publish` wrote")
        }
        let annotations = manifest.annotations ?? [:]
        let kernel = files.first { $0.name == BuiltTarget.bootKernelName(for: target) }!
        for (key, file) in [(AnnotationKey.kernelSHA256, kernel), (AnnotationKey.initrdSHA256, initrd)] {
            guard let expected = annotations[key] else {
                throw VMFactoryError(.notFound, "\(what): the manifest has no \(key) annotation", hint: "give what `vmfactory publish` wrote")
            }
            guard expected == file.sha256.hex else { throw refuse(file.name, expected: expected, actual: file.sha256.hex, by: key) }
        }
        // Every other annotation a runtime may read says what the build manifest says.
        guard let part = build.kernel else {
            throw VMFactoryError(.notFound, "\(what): its build manifest has no kernel", hint: "give what `vmfactory publish` wrote")
        }
        let expected: [String: String] = [
            AnnotationKey.target: target.rawValue,
            AnnotationKey.recipe: build.recipe.name,
            AnnotationKey.kernelPath: "/boot/" + BuiltTarget.bootKernelName(for: target),
            AnnotationKey.initrdPath: "/boot/" + initrd.name,
            AnnotationKey.buildKey: part.keys.build.hex,
            AnnotationKey.inputKey: part.keys.inputs.hex,
            AnnotationKey.cmdline: part.cmdline,
            AnnotationKey.version: part.release,
            AnnotationKey.created: rfc3339(epoch: build.sourceDateEpoch),
        ]
        for (key, value) in expected.sorted(by: { $0.key < $1.key }) {
            guard let found = annotations[key] else {
                throw VMFactoryError(.notFound, "\(what): the manifest has no \(key) annotation", hint: "give what `vmfactory publish` wrote")
            }
            guard found == value else {
                throw VMFactoryError(.digestMismatch, "\(what): the manifest's \(key) is '\(found)', its build manifest says '\(value)'", hint: "the image was changed after it was published; nothing was written")
            }
        }
    }
}
