import Foundation
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryImage

@Suite("Image references, platforms, disk sizes and the pieces of a conversion", .tags(.unit), .scoped)
struct RootfsTests {
    @Test("image references in skopeo's transport names; relative paths from the current folder; others refused with the forms")
    func references() throws {
        func parse(_ text: String) throws -> ImageReference { try ImageReference(parsing: text, currentDirectory: "/work") }
        #expect(try parse("oci:img") == .ociLayout(path: "/work/img", reference: nil))
        #expect(try parse("oci:/srv/img:v1") == .ociLayout(path: "/srv/img", reference: "v1"))
        #expect(try parse("oci:img:sha256:abc") == .ociLayout(path: "/work/img", reference: "sha256:abc"))
        #expect(try parse("oci-archive:x.tar:latest") == .ociArchive(path: "/work/x.tar", reference: "latest"))
        #expect(try parse("docker-archive:/tmp/s.tar:busybox:1.36") == .dockerArchive(path: "/tmp/s.tar", reference: "busybox:1.36"))
        #expect(try parse("docker://127.0.0.1:5000/a/b:v1") == .registry("127.0.0.1:5000/a/b:v1"))
        #expect(try parse("tar:root.tar") == .rootfsTarball(path: "/work/root.tar"))
        #expect(try parse("oci:/srv/img:v1").description == "oci:/srv/img:v1")
        for bad in ["busybox", "oci:", "docker://", "tar:", "docker-archive:", "http://x/y"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try parse(bad) }
        }
        let error = try #require(throws: VMFactoryError.self) { try parse("alpine:3") }
        #expect(error.hint?.contains("docker://HOST/REPO") == true)
    }

    @Test("registry names: a port's colon is not a tag's; digests after @")
    func repositoryNames() {
        #expect(ImageSource.split(repository: "127.0.0.1:5000/a/b:v1") == ("127.0.0.1:5000/a/b", "v1", nil))
        #expect(ImageSource.split(repository: "127.0.0.1:5000/a/b") == ("127.0.0.1:5000/a/b", nil, nil))
        #expect(ImageSource.split(repository: "host/a@sha256:00") == ("host/a", nil, "sha256:00"))
    }

    @Test("platforms: parsing, the target's, matching with and without a variant")
    func platforms() {
        #expect(Platform(parsing: "linux/amd64") == Platform(architecture: "amd64"))
        #expect(Platform(parsing: "linux/arm64/v8")?.variant == "v8")
        #expect(Platform(parsing: "amd64") == nil)
        #expect(Platform(parsing: "linux/") == nil)
        #expect(Platform.of(.s390x).description == "linux/s390x")
        #expect(Platform(parsing: "linux/s390x")?.target == .s390x)
        #expect(Platform(architecture: "arm64", variant: "v8").matches(Platform(architecture: "arm64")))
        #expect(!Platform(architecture: "arm64").matches(Platform(architecture: "arm64", variant: "v8")))
        #expect(!Platform(os: "windows", architecture: "amd64").matches(Platform(architecture: "amd64")))
    }

    @Test("disk sizes: +headroom and absolute, binary units, refused forms")
    func sizes() throws {
        #expect(try DiskOptions.parseSize("+256M") == .headroom(256 << 20))
        #expect(try DiskOptions.parseSize("2G") == .absolute(2 << 30))
        #expect(try DiskOptions.parseSize("512MiB") == .absolute(512 << 20))
        #expect(try DiskOptions.parseSize("+0") == .headroom(0))
        #expect(try DiskOptions.parseSize("16777216") == .absolute(16 << 20))
        for bad in ["", "+", "12X", "-5M", "1.5G", "4M", "99999999999T"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try DiskOptions.parseSize(bad) }
        }
        // Headroom on top of the content and its ext4 overhead, whole MiB.
        #expect(try DiskBuilder.fileSystemSize(content: 100 << 20, options: .headroom(256 << 20)) == (100 + 25 + 32 + 256) << 20)
        #expect(try DiskBuilder.fileSystemSize(content: 1, options: .absolute(64 << 20)) == 64 << 20)
    }

    @Test("the file system's UUID comes from the manifest digest, as a version 4 UUID; the pinned time from the image's creation")
    func identity() throws {
        let digest = SHA256Digest.of("manifest")
        let uuid = DiskBuilder.uuid(from: digest)
        #expect(uuid == DiskBuilder.uuid(from: digest))
        #expect(uuid != DiskBuilder.uuid(from: SHA256Digest.of("other")))
        #expect(UUID(uuidString: uuid) != nil)
        let parts = uuid.split(separator: "-")
        #expect(parts.map(\.count) == [8, 4, 4, 4, 12])
        #expect(parts[2].first == "4" && "89ab".contains(parts[3].first!))
        var config = ImageConfig()
        #expect(DiskBuilder.pinnedTime(config) == 0)
        config.created = "2024-05-06T07:08:09Z"
        #expect(DiskBuilder.pinnedTime(config) == 1_714_979_289)
        config.created = "2024-05-06T07:08:09.123456789Z"
        #expect(DiskBuilder.pinnedTime(config) == 1_714_979_289)
        config.created = "yesterday"
        #expect(DiskBuilder.pinnedTime(config) == 0)
    }

    @Test("uncompressed sizes from gzip's trailer and zstd's frame header, without decompressing")
    func uncompressedSizes() throws {
        let dir = try TestSupport.temporaryDirectory()
        let entries: [ArchiveWriter.Entry] = [.init(path: "zeros", kind: .file(Data(count: 3 << 20)))]
        for compression in [ArchiveWriter.Compression.none, .gzip, .zstd] {
            let path = dir + "/layer.\(compression)"
            try ArchiveWriter.write(entries, to: path, format: .paxTar, compression: compression)
            let plainSize = Int64((3 << 20) + 512 * 3)
            let estimate = try UncompressedSize.estimate(path: path, mediaType: "")
            #expect(estimate >= plainSize && estimate <= plainSize + 10_240, "\(compression): \(estimate)")
        }
        // Frame_Content_Size of 2, 4 and 8 bytes, a single segment and a dictionary ID.
        #expect(UncompressedSize.zstdContentSize([0x60, 0x10, 0x00]) == 272, "0x0010 and the 256 a 2-byte size adds")
        #expect(UncompressedSize.zstdContentSize([0xa0, 0x10, 0x00, 0x01, 0x00]) == 0x0001_0010)
        #expect(UncompressedSize.zstdContentSize([0xe0, 0, 0, 0, 0, 1, 0, 0, 0]) == 1 << 32)
        #expect(UncompressedSize.zstdContentSize([0x20, 0x2a]) == 42)
        #expect(UncompressedSize.zstdContentSize([0x00, 0x58]) == nil)
        // A window byte, a 1-byte dictionary ID, then 2 bytes of size.
        #expect(UncompressedSize.zstdContentSize([0x41, 0x58, 0x07, 0x10, 0x01]) == 528)
    }

    @Test("symlinks on the way are resolved inside the tree; climbing above the root is not")
    func symlinkResolution() {
        #expect(LayerTree.resolve("usr/lib", from: []) == ["usr", "lib"])
        #expect(LayerTree.resolve("/etc", from: ["a", "b"]) == ["etc"])
        #expect(LayerTree.resolve("../lib", from: ["usr", "bin"]) == ["usr", "lib"])
        #expect(LayerTree.resolve("./x/.", from: ["a"]) == ["a", "x"])
        #expect(LayerTree.resolve("..", from: []) == nil)
        #expect(LayerTree.resolve("../../..", from: ["a", "b"]) == nil)
    }

    @Test("skopeo's fatal line, without its quoting and the prefix that repeats the reference, on one line; what it means")
    func skopeoMessages() {
        let line = #"time="2026-01-01T00:00:00Z" level=fatal msg="Error parsing image name \"docker://h/x:v1\": pinging container registry h: Get \"https://h/v2/\": dial tcp: connect: connection refused""#
        #expect(ImageSource.skopeoMessage("noise\n" + line + "\n") == #"pinging container registry h: Get "https://h/v2/": dial tcp: connect: connection refused"#)
        let list = #"time="2026-01-01T00:00:00Z" level=fatal msg="writing manifest: uploading manifest sha256:12 to h/x: errors:\ndigest invalid\nmanifest blob unknown: blob unknown to registry\n""#
        #expect(ImageSource.skopeoMessage(list) == "writing manifest: uploading manifest sha256:12 to h/x: errors: digest invalid; manifest blob unknown: blob unknown to registry")
        #expect(Skopeo.Failure(message: ImageSource.skopeoMessage(list) ?? "") == .registryFault)
        #expect(Skopeo.Failure(message: "reading manifest v1 in h/x: received unexpected HTTP status: 500 Internal Server Error") == .registryFault)
        #expect(Skopeo.Failure(message: "reading manifest v1 in h/x: manifest unknown: manifest unknown") == .notFound)
        // The repository's and the tag's words are the user's: they mean nothing.
        let tls = "docker://127.0.0.1:5000/vmf/tls-kernels:denied"
        let said = #"reading manifest denied in 127.0.0.1:5000/vmf/tls-kernels: received unexpected HTTP status: 500 Internal Server Error"#
        #expect(Skopeo.Failure(message: said) == .unauthorized, "read whole, the names mislead")
        #expect(Skopeo.Failure(message: said, references: ["--quiet", tls]) == .registryFault)
        #expect(Skopeo.Failure(message: #"Get "https://127.0.0.1:5000/v2/vmf/tls-kernels/manifests/denied": x509: certificate signed by unknown authority"#, references: [tls]) == .tls)
        #expect(Skopeo.Failure(message: "reading manifest denied in 127.0.0.1:5000/vmf/tls-kernels: manifest unknown", references: [tls]) == .notFound)
        #expect(Skopeo.Failure.withoutNames("pinging h/x: x is down", of: ["docker://h/x:1"]) == "pinging x is down")
        #expect(Skopeo.Failure.withoutNames("in docker.io/library/alpine: denied", of: ["docker://alpine"]) == "in denied")
        #expect(ImageSource.skopeoMessage("plain words") == "plain words")
        #expect(ImageSource.skopeoMessage("") == nil)
    }

    @Test("choosing in an index: the wanted platform, or an error listing the platforms there are")
    func choosing() throws {
        let store = ContentStore(cacheDirectory: try TestSupport.temporaryDirectory())
        let resolver = ImageResolver(store: store, reference: "oci:x", wanted: Platform(architecture: "s390x")) { descriptor, _ in try descriptor.sha256(in: "x") }
        let amd64 = Descriptor(mediaType: MediaType.ociManifest, digest: "sha256:" + String(repeating: "a", count: 64), size: 1, platform: Platform(architecture: "amd64"))
        let s390x = Descriptor(mediaType: MediaType.dockerManifest, digest: "sha256:" + String(repeating: "b", count: 64), size: 1, platform: Platform(architecture: "s390x"))
        let attestation = Descriptor(mediaType: "application/vnd.in-toto+json", digest: "sha256:" + String(repeating: "c", count: 64), size: 1, platform: Platform(architecture: "s390x"))
        #expect(try resolver.choose(in: ImageIndex(schemaVersion: 2, manifests: [attestation, amd64, s390x])) == s390x)
        let error = try #require(throws: VMFactoryError.self) { try resolver.choose(in: ImageIndex(schemaVersion: 2, manifests: [amd64])) }
        #expect(error.message == "oci:x has no image for linux/s390x")
        #expect(error.hint == "it has: linux/amd64; choose one with --platform or --target")
        // Layouts: a tag, a digest, the only image, or a question.
        let index = ImageIndex(schemaVersion: 2, manifests: [
            Descriptor(mediaType: MediaType.ociManifest, digest: amd64.digest, size: 1, annotations: ["org.opencontainers.image.ref.name": "v1"]),
            Descriptor(mediaType: MediaType.ociManifest, digest: s390x.digest, size: 1, annotations: ["org.opencontainers.image.ref.name": "v2"]),
        ])
        #expect(try ImageSource.entry(of: index, tag: "v2", name: "x").digest == s390x.digest)
        #expect(try ImageSource.entry(of: index, tag: amd64.digest, name: "x").digest == amd64.digest)
        let which = try #require(throws: VMFactoryError.self) { try ImageSource.entry(of: index, tag: nil, name: "oci:x") }
        #expect(which.hint == "append one of its tags: v1, v2")
        let absent = try #require(throws: VMFactoryError.self) { try ImageSource.entry(of: index, tag: "v3", name: "oci:x") }
        #expect(absent.hint == "its tags: v1, v2")
    }

    @Test("the content store keeps only verified blobs: a wrong digest or size stores nothing")
    func contentStore() throws {
        let store = ContentStore(cacheDirectory: try TestSupport.temporaryDirectory())
        let data = Data("blob".utf8)
        let digest = try store.ingest(data: data, what: "b")
        #expect(store.contains(digest))
        #expect(try store.data(digest, what: "b") == data)
        let wrong = SHA256Digest.of("other")
        #expect(throws: VMFactoryError.self) {
            try store.ingest("x", digest: wrong, size: 4) { write in try data.withUnsafeBytes { try write($0) } }
        }
        #expect(throws: VMFactoryError.self) {
            try store.ingest("y", digest: nil, size: 5) { write in try data.withUnsafeBytes { try write($0) } }
        }
        #expect(!store.contains(wrong))
        #expect(TestSupport.files(under: store.root).filter { $0.hasSuffix(".partial") }.isEmpty)
    }
}
