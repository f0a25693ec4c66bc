import Foundation
import Testing
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryKernel
@testable import VMFactoryPublish

@Suite("Publish and pull: values", .tags(.unit))
struct PublishTests {
    @Test("destinations parse as publish takes them")
    func destinations() throws {
        #expect(try PublishDestination(parsing: "oci:out/layout:v1", currentDirectory: "/w") == .layout(path: "/w/out/layout", tag: "v1"))
        #expect(try PublishDestination(parsing: "oci:/l", currentDirectory: "/w") == .layout(path: "/l", tag: nil))
        #expect(try PublishDestination(parsing: "oci-archive:k.tar:6.1", currentDirectory: "/w") == .archive(path: "/w/k.tar", tag: "6.1"))
        #expect(try PublishDestination(parsing: "docker://127.0.0.1:5000/vmf/minimal:v1", currentDirectory: "/w") == .registry(repository: "127.0.0.1:5000/vmf/minimal", tag: "v1"))
        #expect(try PublishDestination(parsing: "docker://127.0.0.1:5000/vmf/minimal", currentDirectory: "/w") == .registry(repository: "127.0.0.1:5000/vmf/minimal", tag: nil))
        #expect(try PublishDestination(parsing: "dir:files", currentDirectory: "/w") == .folder(path: "/w/files"))
        for bad in ["docker-archive:x.tar", "x", "oci:", "dir:", "docker://", "docker://h/r@sha256:00"] {
            #expect(throws: VMFactoryError.self, "\(bad)") { try PublishDestination(parsing: bad, currentDirectory: "/w") }
        }
    }

    @Test("tags follow the distribution spec")
    func tags() {
        for good in ["latest", "v1", "6.1.192", "_x", "a-b_c.d", String(repeating: "a", count: 128)] { #expect(PublishDestination.isValidTag(good), "\(good)") }
        for bad in ["", "-x", ".x", "a/b", "a:b", "ä", String(repeating: "a", count: 129)] { #expect(!PublishDestination.isValidTag(bad), "\(bad)") }
    }

    @Test("a checkout's address is published only when another machine can reach it, without credentials")
    func provenance() {
        #expect(Provenance.publicAddress("https://user:token@github.com/o/vmfactory.git") == "https://github.com/o/vmfactory.git")
        #expect(Provenance.publicAddress("git@github.com:o/vmfactory.git") == "https://github.com/o/vmfactory.git")
        #expect(Provenance.publicAddress("/work/main") == nil)
        #expect(Provenance.publicAddress("../main") == nil)
        #expect(Provenance.publicAddress("file:///work/main") == nil)
    }

    @Test("created is RFC 3339 in UTC from the source date epoch")
    func created() {
        #expect(rfc3339(epoch: 1_735_689_600) == "2025-01-01T00:00:00Z")
        #expect(rfc3339(epoch: 0) == "1970-01-01T00:00:00Z")
    }

    @Test("SHA256SUMS is sha256sum's format, sorted")
    func checksums() {
        let a = SHA256Digest.of("a"), b = SHA256Digest.of("b")
        let text = FolderWriter.checksums([.init(name: "vmlinux", sha256: b, size: 1), .init(name: "config", sha256: a, size: 1)])
        #expect(text == "\(a.hex)  config\n\(b.hex)  vmlinux\n")
    }

    @Test("a tag that names another image is replaced only with force, and says what it named")
    func tagChanges() throws {
        let image = Descriptor(mediaType: MediaType.ociIndex, digest: "sha256:" + SHA256Digest.of("new").hex, size: 1)
        let other = Descriptor(mediaType: MediaType.ociIndex, digest: "sha256:" + SHA256Digest.of("old").hex, size: 1, annotations: [AnnotationKey.refName: "v1"])
        var same = image
        same.annotations = [AnnotationKey.refName: "v2"]
        let index = ImageIndex(schemaVersion: 2, mediaType: MediaType.ociIndex, manifests: [other, same])
        let error = #expect(throws: VMFactoryError.self) {
            try LayoutWriter.changes(to: index, image: image, tags: ["v1", "v2", "v3"], force: false, name: "oci:x")
        }
        #expect(error?.message.contains(other.digest) == true)
        #expect(error?.hint?.contains("--force") == true)
        let changes = try LayoutWriter.changes(to: index, image: image, tags: ["v1", "v2", "v3"], force: true, name: "oci:x")
        #expect(changes == [
            TagChange(tag: "v1", previous: other.digest, change: "replaced"),
            TagChange(tag: "v2", previous: image.digest, change: "unchanged"),
            TagChange(tag: "v3", previous: nil, change: "new"),
        ])
    }
}
