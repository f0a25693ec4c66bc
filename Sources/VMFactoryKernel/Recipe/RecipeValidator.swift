import Foundation
import VMFactoryArchive
import VMFactoryCore

/// Turns a decoded recipe document into a `Recipe`, checking each value against the file
/// system and the known targets, with the position of the value in every error.
struct RecipeValidator {
    var locator: NodeLocator
    var library: Library
    var recipePath: String
    var name: String
    var recipeDirectory: String { URL(fileURLWithPath: recipePath).deletingLastPathComponent().path }

    private func at(_ components: Any...) -> [any CodingKey] {
        components.map { component in
            if let index = component as? Int { return AnyCodingKey(intValue: index) }
            return AnyCodingKey(stringValue: "\(component)")
        }
    }

    func validate(_ document: RecipeDocument, digest: SHA256Digest) throws -> Recipe {
        if document.description.trimmingCharacters(in: .whitespaces).isEmpty {
            throw locator.error(at: at("description"), "must not be empty", hint: "say in one line what this recipe builds")
        }
        if document.description.contains("\n") {
            throw locator.error(at: at("description"), "must be a single line")
        }
        if let epoch = document.sourceDateEpoch, epoch < 0 || epoch > 253_402_300_799 {
            throw locator.error(at: at("source-date-epoch"), "must be seconds since 1970-01-01 UTC, between 0 and 253402300799", hint: "for example the output of `date -u +%s`")
        }
        if document.kernel.version.isEmpty {
            throw locator.error(at: at("kernel", "version"), "must not be empty")
        }

        let source = try validateSource(document.kernel.source)
        let base = try validateBase(document.kernel.config.base)
        let recipes = try validateTargetRecipes(document)
        var series: PatchSeries? = nil
        if let patches = document.kernel.patches {
            series = try validatePatches(patches)
        }

        var recipe = Recipe(
            name: name, path: recipePath, digest: digest, description: document.description,
            kernelVersion: document.kernel.version, source: source, baseConfig: base,
            patchSeries: series, targets: recipes, sourceDateEpoch: document.sourceDateEpoch
        )
        if let initrd = document.initrd {
            recipe.initrd = try validateInitrd(initrd)
        }
        return recipe
    }

    /// Each target with its command line and its fragment files: the common list first, then
    /// the target's own.
    private func validateTargetRecipes(_ document: RecipeDocument) throws -> [TargetRecipe] {
        let targets = try validateTargets(document.targets)
        let fragmentDirs = try document.kernel.config.fragmentDirs.enumerated().map { index, dir in
            let path = FileStore.absolute(dir, relativeTo: recipeDirectory)
            guard FileStore.isDirectory(path) else {
                throw locator.error(at: at("kernel", "config", "fragment-dirs", index), "no such directory: \(path)")
            }
            return path
        } + [library.fragmentsDirectory]
        let commonNames = document.kernel.config.fragments
        for (index, fragment) in commonNames.enumerated() {
            let found = Target.allCases.contains { !fragmentFiles(fragment, for: $0, in: fragmentDirs).isEmpty }
            if !found {
                throw unknownFragment(fragment, path: at("kernel", "config", "fragments", index), dirs: fragmentDirs, targets: nil)
            }
        }
        try rejectRepeats(commonNames, path: { at("kernel", "config", "fragments", $0) })

        let commonCmdline = document.kernel.cmdline
        var recipes: [TargetRecipe] = []
        for entry in targets {
            let (target, document) = entry
            for (index, fragment) in document.fragments.enumerated() where fragmentFiles(fragment, for: target, in: fragmentDirs).isEmpty {
                throw unknownFragment(fragment, path: at("targets", target.rawValue, "fragments", index), dirs: fragmentDirs, targets: target)
            }
            try rejectRepeats(commonNames + document.fragments) { index in
                index < commonNames.count
                    ? at("kernel", "config", "fragments", index)
                    : at("targets", target.rawValue, "fragments", index - commonNames.count)
            }
            let files = (commonNames + document.fragments).flatMap { fragmentFiles($0, for: target, in: fragmentDirs) }
            let cmdline = [commonCmdline, document.cmdline].compactMap { $0 }.joined(separator: " ")
            recipes.append(TargetRecipe(target: target, cmdline: cmdline, fragments: files))
        }
        return recipes
    }

    /// Paths the initrd always has; a recipe's file may not take their place.
    static let reservedInitrdPaths: Set<String> = ["/init", "/dev/console", "/dev/null", InitrdLayout.configPath]

    private func validateInitrd(_ document: InitrdDocument) throws -> InitrdSpec {
        var spec = InitrdSpec()
        if let compression = document.compression {
            guard let value = InitrdSpec.Compression(rawValue: compression) else {
                throw locator.error(at: at("initrd", "compression"), "unknown compression '\(compression)' (known: \(InitrdSpec.Compression.allCases.map(\.rawValue).joined(separator: ", ")))")
            }
            spec.compression = value
        }
        if let hostname = document.hostname {
            guard HostName.isValid(hostname) else {
                throw locator.error(at: at("initrd", "hostname"), "'\(hostname)' is not a host name (letters, digits, '-' and '.', at most 64)")
            }
            spec.hostname = hostname
        }
        if let entrypoint = document.entrypoint {
            guard let first = entrypoint.first, !first.isEmpty else {
                throw locator.error(at: at("initrd", "entrypoint"), "needs at least the program to run, as a list: [/bin/app, --flag]")
            }
            for (index, word) in entrypoint.enumerated() where word.contains("\n") || word.contains("\0") {
                throw locator.error(at: at("initrd", "entrypoint", index), "must not contain a line break or NUL")
            }
            spec.entrypoint = entrypoint
        }
        for (key, value) in document.env?.entries ?? [] {
            let nameCharacters = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
            guard !key.isEmpty, key.allSatisfy({ nameCharacters.contains($0) }), !(key.first?.isNumber ?? true) else {
                throw locator.error(at: at("initrd", "env", key), "'\(key)' is not an environment variable name", key: true)
            }
            guard !value.contains("\n"), !value.contains("\0") else {
                throw locator.error(at: at("initrd", "env", key), "must not contain a line break or NUL")
            }
            spec.environment.append((key, value))
        }
        spec.files = try validateInitrdFiles(document.files)
        return spec
    }

    /// Host files for the initrd: each source a file relative to the recipe, each destination
    /// an absolute path of its own that vmfactory does not make itself.
    private func validateInitrdFiles(_ documents: [InitrdFileDocument]) throws -> [InitrdSpec.File] {
        var files: [InitrdSpec.File] = []
        var destinations = Set<String>()
        for (index, file) in documents.enumerated() {
            let source = FileStore.absolute(file.source, relativeTo: recipeDirectory)
            guard FileStore.isRegularFile(source) else {
                throw locator.error(at: at("initrd", "files", index, "source"), "no such file: \(source)")
            }
            let destination = file.destination
            let parts = destination.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
            guard destination.hasPrefix("/"), destination.count > 1, !parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) else {
                throw locator.error(at: at("initrd", "files", index, "destination"), "'\(destination)' must be an absolute path without '.', '..' or empty parts")
            }
            guard !Self.reservedInitrdPaths.contains(destination) else {
                throw locator.error(at: at("initrd", "files", index, "destination"), "\(destination) is made by vmfactory; choose another path")
            }
            guard destinations.insert(destination).inserted else {
                throw locator.error(at: at("initrd", "files", index, "destination"), "\(destination) is listed twice")
            }
            var mode: UInt32 = 0o644
            if let text = file.mode {
                guard let value = UInt32(text, radix: 8), value <= 0o7777 else {
                    throw locator.error(at: at("initrd", "files", index, "mode"), "'\(text)' is not an octal file mode such as \"0755\"")
                }
                mode = value
            }
            files.append(InitrdSpec.File(source: source, destination: destination, mode: mode))
        }
        return files
    }

    private func validateTargets(_ targets: OrderedMapping<TargetDocument>) throws -> [(Target, TargetDocument)] {
        if targets.entries.isEmpty {
            throw locator.error(at: at("targets"), "must name at least one target (known: \(Target.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        return try targets.entries.map { entry in
            guard let target = Target(rawValue: entry.key) else {
                throw locator.error(
                    at: at("targets", entry.key),
                    "unknown target '\(entry.key)' (known: \(Target.allCases.map(\.rawValue).joined(separator: ", ")))",
                    key: true
                )
            }
            return (target, entry.value)
        }
    }

    private func validateSource(_ source: SourceDocument) throws -> SourcePin {
        guard let digest = SHA256Digest(hex: source.sha256) else {
            let count = source.sha256.count
            let reason = count != 64
                ? "has \(count) characters"
                : "has characters that are not hexadecimal digits"
            throw locator.error(
                at: at("kernel", "source", "sha256"),
                "malformed sha256 '\(source.sha256)': a sha256 is 64 hexadecimal digits, this one \(reason)",
                hint: "copy the digest from the SHA256SUMS that comes with the tarball, or run `sha256sum` on it"
            )
        }
        if let file = source.file, file.isEmpty || file.contains("/") {
            throw locator.error(at: at("kernel", "source", "file"), "must be a plain file name, without '/'")
        }
        if let apt = source.apt {
            for (key, value) in [("package", apt.package), ("version", apt.version), ("member", apt.member)] where value.isEmpty {
                throw locator.error(at: at("kernel", "source", "apt", key), "must not be empty")
            }
        }
        for (index, url) in source.urls.enumerated() {
            guard let scheme = URL(string: url)?.scheme?.lowercased(), ["http", "https", "file"].contains(scheme) else {
                throw locator.error(at: at("kernel", "source", "urls", index), "'\(url)' is not an http, https or file URL")
            }
        }
        return SourcePin(
            sha256: digest,
            fileName: source.file,
            apt: source.apt.map { AptSource(package: $0.package, version: $0.version, member: $0.member) },
            urls: source.urls,
            paths: source.paths.map { FileStore.absolute($0, relativeTo: recipeDirectory) }
        )
    }

    private func validateBase(_ base: BaseDocument) throws -> BaseConfig {
        switch base {
        case .target(let name):
            guard let config = BaseConfig.named[name] else {
                throw locator.error(
                    at: at("kernel", "config", "base"),
                    "unknown base config '\(name)' (known: allnoconfig, defconfig, tinyconfig, or {file: PATH})"
                )
            }
            return config
        case .file(let file):
            let path = FileStore.absolute(file, relativeTo: recipeDirectory)
            guard FileStore.isRegularFile(path) else {
                throw locator.error(at: at("kernel", "config", "base", "file"), "no such config file: \(path)")
            }
            return .file(path)
        }
    }

    /// `common/NAME.conf` and `TARGET/NAME.conf` from the first directory that has either.
    func fragmentFiles(_ name: String, for target: Target, in dirs: [String]) -> [FragmentFile] {
        guard Self.isValidName(name) else { return [] }
        for dir in dirs {
            let candidates = ["\(dir)/common/\(name).conf", "\(dir)/\(target.rawValue)/\(name).conf"]
            let existing = candidates.filter(FileStore.isRegularFile)
            if !existing.isEmpty { return existing.map { FragmentFile(name: name, path: $0) } }
            // A name defined in this directory for another target only shadows later directories.
            if Target.allCases.contains(where: { FileStore.isRegularFile("\(dir)/\($0.rawValue)/\(name).conf") }) { return [] }
        }
        return []
    }

    private func unknownFragment(_ name: String, path: [any CodingKey], dirs: [String], targets: Target?) -> VMFactoryError {
        var available = Set<String>()
        for dir in dirs {
            for sub in ["common"] + (targets.map { [$0.rawValue] } ?? Target.allCases.map(\.rawValue)) {
                for file in (try? FileManager.default.contentsOfDirectory(atPath: "\(dir)/\(sub)")) ?? [] where file.hasSuffix(".conf") {
                    available.insert(String(file.dropLast(5)))
                }
            }
        }
        let scope = targets.map { "common/ or \($0.rawValue)/" } ?? "common/ or any target's folder"
        return locator.error(
            at: path,
            "unknown fragment '\(name)': no \(name).conf in \(scope) of \(dirs.map(FileStore.displayPath).joined(separator: ", "))",
            hint: "available fragments: \(available.sorted().joined(separator: ", "))"
        )
    }

    private func rejectRepeats(_ names: [String], path: (Int) -> [any CodingKey]) throws {
        var seen: [String: Int] = [:]
        for (index, name) in names.enumerated() {
            if seen[name] != nil {
                throw locator.error(at: path(index), "fragment '\(name)' is listed twice")
            }
            seen[name] = index
        }
    }

    private func validatePatches(_ patches: PatchesDocument) throws -> PatchSeries {
        let dirs = try patches.dirs.enumerated().map { index, dir in
            let path = FileStore.absolute(dir, relativeTo: recipeDirectory)
            guard FileStore.isDirectory(path) else {
                throw locator.error(at: at("kernel", "patches", "dirs", index), "no such directory: \(path)")
            }
            return path
        } + [library.patchesDirectory]
        let candidates = patches.series.contains("/")
            ? [FileStore.absolute(patches.series, relativeTo: recipeDirectory)]
            : dirs.map { "\($0)/\(patches.series)" }
        guard let directory = candidates.first(where: { FileStore.isRegularFile($0 + "/series") }) else {
            let known = dirs.flatMap { dir in
                ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { FileStore.isRegularFile("\(dir)/\($0)/series") }
            }
            throw locator.error(
                at: at("kernel", "patches", "series"),
                "unknown patch series '\(patches.series)': no \(patches.series)/series in \(dirs.map(FileStore.displayPath).joined(separator: ", "))",
                hint: known.isEmpty ? "create \(patches.series)/series listing the .patch files in order" : "known series: \(known.sorted().joined(separator: ", "))"
            )
        }
        return try PatchSeries.load(name: patches.series, directory: directory)
    }

    static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && !name.hasPrefix(".") && name.allSatisfy { $0.isLetter || $0.isNumber || "-_.".contains($0) }
    }
}
