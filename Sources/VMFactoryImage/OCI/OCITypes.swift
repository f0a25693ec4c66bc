import Foundation
import VMFactoryCore

/// Media types vmfactory reads: OCI image spec v1 and Docker's registry v2 schema 2.
public enum MediaType {
    public static let ociIndex = "application/vnd.oci.image.index.v1+json"
    public static let ociManifest = "application/vnd.oci.image.manifest.v1+json"
    public static let ociConfig = "application/vnd.oci.image.config.v1+json"
    public static let ociLayer = "application/vnd.oci.image.layer.v1.tar"
    public static let ociLayerGzip = "application/vnd.oci.image.layer.v1.tar+gzip"
    public static let ociLayerZstd = "application/vnd.oci.image.layer.v1.tar+zstd"
    public static let dockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
    public static let dockerManifest = "application/vnd.docker.distribution.manifest.v2+json"
    public static let dockerConfig = "application/vnd.docker.container.image.v1+json"
    public static let dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"
    public static let dockerSchema1 = "application/vnd.docker.distribution.manifest.v1+json"
    public static let dockerSchema1Signed = "application/vnd.docker.distribution.manifest.v1+prettyjws"

    public static let indexes: Set<String> = [ociIndex, dockerManifestList]
    public static let manifests: Set<String> = [ociManifest, dockerManifest]
    public static let layers: Set<String> = [ociLayer, ociLayerGzip, ociLayerZstd, dockerLayerGzip, "application/vnd.docker.image.rootfs.diff.tar"]
    /// Layers that registries may not hand out and that images point to elsewhere.
    public static let nonDistributable: Set<String> = [
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ]
}

/// A pointer to a blob: its media type, digest and size (OCI image spec, descriptor.md).
public struct Descriptor: Codable, Sendable, Hashable {
    public var mediaType: String
    public var digest: String
    public var size: Int64
    public var platform: Platform?
    public var annotations: [String: String]?
    public var urls: [String]?
    public var artifactType: String?

    public init(mediaType: String, digest: String, size: Int64, platform: Platform? = nil, annotations: [String: String]? = nil) {
        self.mediaType = mediaType
        self.digest = digest
        self.size = size
        self.platform = platform
        self.annotations = annotations
    }

    /// The sha256 the digest names; throws for other algorithms or malformed digests.
    public func sha256(in what: String) throws -> SHA256Digest {
        guard digest.hasPrefix("sha256:"), let value = SHA256Digest(hex: String(digest.dropFirst(7))) else {
            throw VMFactoryError(.invalidArgument, "\(what): digest '\(digest)' is not a sha256 digest", hint: "vmfactory reads sha256-addressed images only")
        }
        return value
    }
}

/// An image's operating system and architecture, as OCI and Docker write them.
public struct Platform: Codable, Sendable, Hashable, CustomStringConvertible {
    public var os: String
    public var architecture: String
    public var variant: String?

    enum CodingKeys: String, CodingKey {
        case os, architecture, variant
    }

    public init(os: String = "linux", architecture: String, variant: String? = nil) {
        self.os = os
        self.architecture = architecture
        self.variant = variant
    }

    /// `linux/amd64` or `linux/arm64/v8`.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/").map(String.init)
        guard parts.count == 2 || parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else { return nil }
        self.init(os: parts[0], architecture: parts[1], variant: parts.count == 3 ? parts[2] : nil)
    }

    public var description: String { [os, architecture, variant].compactMap { $0 }.joined(separator: "/") }

    /// The platform of a target's guests.
    public static func of(_ target: Target) -> Platform {
        Platform(architecture: target == .x86_64 ? "amd64" : "s390x")
    }

    /// The platform of the host's own programs (`uname -m` in Go's names).
    public static var host: Platform {
        let names = ["x86_64": "amd64", "aarch64": "arm64", "s390x": "s390x", "ppc64le": "ppc64le", "riscv64": "riscv64", "i686": "386"]
        return Platform(architecture: names[Target.hostMachine] ?? Target.hostMachine)
    }

    /// The target whose guests run this platform's binaries.
    public var target: Target? {
        guard os == "linux" else { return nil }
        switch architecture {
        case "amd64": return .x86_64
        case "s390x": return .s390x
        default: return nil
        }
    }

    /// Whether an image of `self` serves a request for `wanted` (a variant asked for must match).
    public func matches(_ wanted: Platform) -> Bool {
        os == wanted.os && architecture == wanted.architecture && (wanted.variant == nil || variant == wanted.variant)
    }
}

/// An image index (OCI) or manifest list (Docker).
public struct ImageIndex: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var manifests: [Descriptor]
    public var annotations: [String: String]?

    public init(schemaVersion: Int, mediaType: String? = nil, manifests: [Descriptor], annotations: [String: String]? = nil) {
        self.schemaVersion = schemaVersion
        self.mediaType = mediaType
        self.manifests = manifests
        self.annotations = annotations
    }
}

/// An image manifest: the config and the layers, in order.
public struct ImageManifest: Codable, Sendable {
    public var schemaVersion: Int
    public var mediaType: String?
    public var config: Descriptor
    public var layers: [Descriptor]
    public var annotations: [String: String]?

    public init(schemaVersion: Int, mediaType: String? = nil, config: Descriptor, layers: [Descriptor], annotations: [String: String]? = nil) {
        self.schemaVersion = schemaVersion
        self.mediaType = mediaType
        self.config = config
        self.layers = layers
        self.annotations = annotations
    }
}

/// The parts of an image config that decide how its container runs (OCI image spec, config.md).
public struct ImageConfig: Codable, Sendable, Equatable {
    public struct Execution: Codable, Sendable, Equatable {
        public var User: String?
        public var ExposedPorts: [String: EmptyObject]?
        public var Env: [String]?
        public var Entrypoint: [String]?
        public var Cmd: [String]?
        public var Volumes: [String: EmptyObject]?
        public var WorkingDir: String?
        public var Labels: [String: String]?
        public var StopSignal: String?

        public init() {}
    }

    public struct RootFS: Codable, Sendable, Equatable {
        public var type: String
        public var diff_ids: [String]

        public init(type: String, diff_ids: [String]) {
            self.type = type
            self.diff_ids = diff_ids
        }
    }

    public var architecture: String?
    public var os: String?
    public var variant: String?
    public var created: String?
    public var config: Execution?
    public var rootfs: RootFS?

    public init() {}

    public var platform: Platform? {
        guard let os, let architecture else { return nil }
        return Platform(os: os, architecture: architecture, variant: variant)
    }
}

/// `{}` in JSON: the value of an exposed port or a volume.
public struct EmptyObject: Codable, Sendable, Equatable {
    public init() {}
}

/// Any JSON document that names its media type and schema version, to tell indexes from
/// manifests before decoding either.
struct MediaTypeProbe: Decodable {
    var schemaVersion: Int?
    var mediaType: String?
    var manifests: [Descriptor]?
    var config: Descriptor?
    var fsLayers: [EmptyObject]?
}
