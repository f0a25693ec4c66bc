import Foundation
import VMFactoryCore

/// Registries through skopeo, which knows the auth files, mirrors and TLS settings users
/// already have: `skopeo inspect --raw` for the index, the chosen platform's manifest and its
/// config, then, when a disk is to be made, `skopeo copy` of that manifest by digest into a
/// temporary OCI layout whose layers go into the store.
extension ImageSource {
    /// `HOST/REPO` and the tag or digest of `HOST/REPO[:TAG|@DIGEST]` (a port's colon is not a tag's).
    static func split(repository name: String) -> (repository: String, tag: String?, digest: String?) {
        if let at = name.firstIndex(of: "@") {
            return (String(name[..<at]), nil, String(name[name.index(after: at)...]))
        }
        let slash = name.lastIndex(of: "/") ?? name.startIndex
        if let colon = name[slash...].lastIndex(of: ":") {
            return (String(name[..<colon]), String(name[name.index(after: colon)...]), nil)
        }
        return (name, nil, nil)
    }

    /// skopeo's global and per-command options for this registry.
    func skopeo(_ subcommand: String, _ arguments: [String], source: Bool) -> Command {
        var words = ["--command-timeout", "\(Int(registry.timeout.seconds))s", subcommand]
        let prefix = source && subcommand == "copy" ? "--src-" : "--"
        if !registry.tlsVerify { words.append(prefix + "tls-verify=false") }
        if let credentials = registry.credentials { words += [prefix + "creds", credentials] }
        var environment: [String: String] = [:]
        for name in ["REGISTRY_AUTH_FILE", "XDG_RUNTIME_DIR", "DOCKER_CONFIG", "CONTAINERS_REGISTRIES_CONF"] {
            if let value = self.environment[name] { environment[name] = value }
        }
        return Command("skopeo", words + arguments, environment: environment)
    }

    func resolveRegistry(_ name: String, platform: Platform) async throws -> ResolvedImage {
        let reference = "docker://" + name
        let (repository, _, _) = Self.split(repository: name)
        let raw = try await rawDocument(skopeo("inspect", ["--raw", reference], source: true), reference: reference, what: "reading the manifest of")
        let rootDigest = try store.ingest(data: raw, what: "\(reference): manifest")
        let probe = try JSON.decode(MediaTypeProbe.self, from: raw, what: "\(reference): what the registry sent")
        try ImageResolver.refuseSchema1(probe, mediaType: probe.mediaType ?? "", reference: reference)
        let inStore = ImageResolver(store: store, reference: reference, wanted: platform) { descriptor, what in
            try verifiedInStore(descriptor, what: what)
        }

        // The manifest of the wanted platform, by digest, then its config: small documents.
        // Layers come only when a disk is to be made (`fetchLayers`).
        var manifestDigest = rootDigest
        var manifestData = raw
        if probe.manifests != nil, probe.config == nil {
            let index = try JSON.decode(ImageIndex.self, from: raw, what: "\(reference): image index")
            let chosen = try inStore.choose(in: index)
            manifestDigest = try chosen.sha256(in: reference)
            manifestData = try await document(chosen, of: "docker://\(repository)@sha256:\(manifestDigest.hex)", config: false, reference: reference)
        }
        let manifest = try JSON.decode(ImageManifest.self, from: manifestData, what: "\(reference): manifest sha256:\(manifestDigest)")
        try await document(manifest.config, of: "docker://\(repository)@sha256:\(manifestDigest.hex)", config: true, reference: reference)
        return try inStore.resolve(manifestDigest: manifestDigest, data: manifestData)
    }

    /// A manifest (or with `config`, the config) that `descriptor` names, into the store
    /// verified, unless it is there already.
    @discardableResult
    func document(_ descriptor: Descriptor, of image: String, config: Bool, reference: String) async throws -> Data {
        let digest = try descriptor.sha256(in: reference)
        if !store.contains(digest) {
            let arguments = (config ? ["--config"] : []) + ["--raw", image]
            let data = try await rawDocument(skopeo("inspect", arguments, source: true), reference: reference, what: "reading the \(config ? "config" : "manifest") of")
            let what = "\(reference): \(config ? "config" : "manifest") \(descriptor.digest)"
            try store.ingest(what, digest: digest, size: descriptor.size) { write in try data.withUnsafeBytes { try write($0) } }
        }
        return try store.data(digest, what: reference)
    }

    /// What `skopeo inspect --raw` prints: the document's bytes exactly as the registry sent them.
    func rawDocument(_ command: Command, reference: String, what: String) async throws -> Data {
        let result = try await runSkopeo(command, reference: reference, what: what)
        return Data(result.output.utf8)
    }

    /// `skopeo copy` of the image's manifest by digest into a temporary layout, whose layers
    /// then go into the store, verified.
    func pullLayers(of image: ResolvedImage, name: String) async throws {
        let reference = "docker://" + name
        let (repository, _, _) = Self.split(repository: name)
        let layout = FileStore.temporaryName(for: temporaryDirectory + "/registry")
        try FileStore.createDirectory(temporaryDirectory)
        defer { try? FileStore.removeTree(layout) }
        console.info("rootfs: skopeo copy \(repository)@sha256:\(image.manifestDigest.short)… (\(image.platform), \(image.layers.count) layers)")
        _ = try await runSkopeo(
            skopeo("copy", ["--quiet", "docker://\(repository)@sha256:\(image.manifestDigest.hex)", "oci:\(layout):image"], source: true),
            reference: reference, what: "copying"
        )
        try await BlockingWork.run("reading what skopeo copied") { cancellation in
            for layer in image.layers {
                try ingestFromLayout(layout, layer.descriptor, what: layer.what, cancellation: cancellation)
            }
        }
    }

    /// What skopeo's last log line says (`level=fatal msg="…"`), without its quoting and the
    /// prefix that repeats the reference.
    static func skopeoMessage(_ output: String) -> String? {
        guard var line = output.split(separator: "\n").last.map(String.init) else { return nil }
        if let start = line.range(of: "msg=\"") {
            var message = ""
            var escaped = false
            for character in line[start.upperBound...] {
                if escaped {
                    message.append(character)
                    escaped = false
                } else if character == "\\" {
                    escaped = true
                } else if character == "\"" {
                    break
                } else {
                    message.append(character)
                }
            }
            line = message
        }
        if line.hasPrefix("Error parsing image name "), let colon = line.range(of: "\": ") {
            line = String(line[colon.upperBound...])
        }
        return line
    }

    /// Runs skopeo, and says in vmfactory's words what its failure means.
    func runSkopeo(_ command: Command, reference: String, what: String) async throws -> CommandResult {
        let result = try await runner.run(command, output: .stdoutApart)
        guard result.succeeded else {
            let said = Self.skopeoMessage(result.errorOutput) ?? result.statusDescription
            let lower = said.lowercased()
            let hint: String
            if lower.contains("unauthorized") || lower.contains("authentication required") || lower.contains("denied") {
                hint = registry.credentials == nil
                    ? "the registry wants credentials: give --creds USER:PASSWORD, or log in (skopeo login) so that the auth file has them"
                    : "the registry refused the credentials given with --creds"
            } else if lower.contains("connection refused") || lower.contains("no such host") || lower.contains("timeout") || lower.contains("deadline exceeded") {
                hint = "the registry does not answer; check that it runs and its address"
            } else if lower.contains("http response to https client") || lower.contains("certificate") || lower.contains("tls") {
                hint = "a registry without TLS or with a certificate this host does not trust: add --tls-verify=false"
            } else if lower.contains("manifest unknown") || lower.contains("not found") || lower.contains("name unknown") {
                hint = "the registry has no such image or tag"
            } else {
                hint = "see skopeo's message above"
            }
            throw VMFactoryError(.fetchFailed, "\(what) \(reference) failed: \(said)", hint: hint, details: ["command: \(command)"])
        }
        return result
    }
}
