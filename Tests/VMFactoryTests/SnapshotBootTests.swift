import Foundation
import Synchronization
import Testing
@testable import VMFactoryArchive
@testable import VMFactoryCore
@testable import VMFactoryRun

/// Runs that start from templates, with the real command line under TCG: each test has its
/// own templates folder, so that it knows which of its runs boots cold and makes the template
/// and which start from it (`--verbose` says so on stderr).
@Suite(
    "Templates: runs started from a saved VM, every clone unique, on both targets",
    .tags(.boot), .scoped, .needsRoot, .needsPinnedKernel,
    .needsTool("umoci"), .needsTool("qemu-img"), .needsTool("qemu-system-x86_64"), .needsTool("qemu-system-s390x")
)
struct SnapshotBootTests {
    static let made = "saved the template"
    static let restored = "started from the template"

    /// A run VM whose templates are its cache's own (so the test knows which of its runs
    /// boots cold and makes the template), as `vmfactory templates` lists them.
    static func vm() async throws -> RunVM {
        var vm = try await RunVM.make()
        vm.templates = vm.cache + "/templates"
        return vm
    }

    /// `vmfactory templates --format json`, as the command prints it.
    static func listed(_ vm: RunVM) async throws -> [[String: Any]] {
        let run = try await vm.command(["templates", "--cache-dir", vm.cache, "--format", "json"])
        #expect(run.status == 0, "\(run.stderr)")
        return try #require(try JSONSerialization.jsonObject(with: run.stdout) as? [[String: Any]], "\(run.text)")
    }

    /// Its lines, key=value.
    static func answers(_ text: String) -> [String: String] {
        Dictionary(text.split(separator: "\n").compactMap { line -> (String, String)? in
            guard let equals = line.firstIndex(of: "=") else { return nil }
            return (String(line[..<equals]), String(line[line.index(after: equals)...]))
        }, uniquingKeysWith: { $1 })
    }

    static let uniqueness = "echo boot=$(cat /proc/sys/kernel/random/boot_id); echo random=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'); echo date=$(date +%s); echo host=$(hostname)"

    @Test("two runs from one template: boot ids, random bytes and hostnames differ, each clock set to the host's (within the run, 15 s after the template was made)", arguments: Target.allCases)
    func everyCloneUnique(_ target: Target) async throws {
        let images = try await RunImages.shared(for: target)
        let vm = try await Self.vm()
        let first = try await vm.run(["--verbose", images.plain, "-c", Self.uniqueness])
        #expect(first.status == 0, "\(first.stderr)")
        #expect(first.stderr.contains(Self.made), "the first run makes the template: \(first.stderr)")
        var seen: [[String: String]] = [Self.answers(first.text)]
        // A clock restored as it was saved would say a time before this sleep: long enough that
        // no load can hide it.
        try await Task.sleep(for: .seconds(15))
        for _ in 0..<2 {
            // The guest reads its clock between the run's start and its line's arrival: those
            // bound it, whatever a loaded host adds to the boot and to the line's way out.
            let begun = Date().timeIntervalSince1970
            let arrived = Mutex<Double?>(nil)
            let run = try await vm.run(["--verbose", images.plain, "-c", Self.uniqueness]) { live in
                _ = await TestSupport.eventually(within: 600) {
                    guard String(decoding: live.output, as: UTF8.self).contains("date=") else { return live.child.hasExited }
                    arrived.withLock { $0 = $0 ?? Date().timeIntervalSince1970 }
                    return true
                }
            }
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stderr.contains(Self.restored), "\(run.stderr)")
            let said = Self.answers(run.text)
            let date = try #require(said["date"].flatMap(Double.init), "\(run.text)")
            let host = try #require(arrived.withLock { $0 })
            // `date +%s` truncates: its second starts up to 1 s before the host's reading.
            #expect(date >= begun.rounded(.down) - 1 && date <= host + 1, "the guest's clock says \(date); the run began at \(begun) and its line came at \(host) (\(String(format: "%.1f", host - begun)) s later)")
            if host - begun < 2 { #expect(abs(date - host) <= 2, "an unloaded run: within 2 s of the host's clock") }
            #expect(said["boot"]?.count == 36, "\(run.text)")
            #expect(said["random"]?.count == 64, "\(run.text)")
            seen.append(said)
        }
        for key in ["boot", "random", "host"] {
            let values = seen.compactMap { $0[key] }
            #expect(Set(values).count == 3, "\(key) must differ in every run: \(values)")
        }
        let templates = try await Self.listed(vm)
        #expect(templates.count == 1, "\(templates)")
        #expect(templates.first?["target"] as? String == target.rawValue)
        #expect((templates.first?["bytes"] as? Int ?? 0) > 1 << 20, "\(templates)")
        await vm.expectNothingLeft()
    }

    @Test("images of different disk sizes from one template each read their own files (sha256); -v and -p on a restored run")
    func ownDiskVolumesAndPorts() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await Self.vm()
        // A second image: the first's layers and 8 MiB more, so another disk size.
        let dir = try TestSupport.temporaryDirectory()
        let larger = try await RunImages.make(for: .x86_64, in: dir)
        let layout = ImageFixtures.Layout(path: dir + "/box-x86_64", tag: "v1")
        var generator = SystemRandomNumberGenerator()
        let extra = Data((0..<(8 << 20)).map { _ in UInt8.random(in: 0...255, using: &generator) })
        try await ImageFixtures.addLayer([.init(path: "data/", kind: .directory, mode: 0o755), .init(path: "data/extra.bin", kind: .file(extra), mode: 0o644)], to: layout, scratch: dir)
        let read = "sha256sum \(RunImages.randomFile) /data/extra.bin 2>/dev/null; cat /sys/block/vda/size"
        let small = try await vm.run(["--verbose", images.plain, "-c", read])
        #expect(small.stderr.contains(Self.made), "\(small.stderr)")
        let big = try await vm.run(["--verbose", layout.reference, "-c", read])
        let smallAgain = try await vm.run(["--verbose", images.plain, "-c", read])
        for run in [big, smallAgain] {
            #expect(run.status == 0, "\(run.stderr)")
            #expect(run.stderr.contains(Self.restored), "\(run.stderr)")
        }
        let randomDigest = SHA256Digest.of(images.random).hex
        #expect(small.text.contains(randomDigest) && !small.text.contains("extra.bin"), "\(small.text)")
        #expect(smallAgain.text == small.text, "\(smallAgain.text)")
        #expect(big.text.contains(SHA256Digest.of(larger.random).hex), "\(big.text)")
        #expect(big.text.contains(SHA256Digest.of(extra).hex + "  /data/extra.bin"), "\(big.text)")
        let sizes = [small, big].map { $0.text.split(separator: "\n").last.map(String.init) ?? "" }
        #expect(sizes[0] != sizes[1], "the two disks must differ in size: \(sizes)")
        #expect(try await Self.listed(vm).count == 1)

        // A 9p volume and a port: the volume is a device, so its machine has a template of its own.
        let shared = dir + "/shared"
        try FileStore.createDirectory(shared)
        try TestSupport.write("from the host\n", to: shared + "/in.txt")
        #expect(chown(shared, 65534, 65534) == 0)
        let withVolume = try await vm.run(["--verbose", "-v", shared + ":/data", images.plain, "-c", "cat /data/in.txt"])
        #expect(withVolume.text == "from the host\n", "\(withVolume.stderr)")
        #expect(withVolume.stderr.contains(Self.made), "\(withVolume.stderr)")
        let port = Int.random(in: 20000...29999)
        // busybox's httpd serves the volume; the host's file `done` ends the run.
        let serve = "httpd -p 8080 -h /data; while [ ! -e /data/done ]; do sleep 0.1; done; echo written > /data/out.txt"
        let served = try await vm.run(["--verbose", "-v", shared + ":/data", "-p", "127.0.0.1:\(port):8080", images.plain, "-c", serve]) { _ in
            var body = ""
            let deadline = ContinuousClock.now + .seconds(60)
            while body.isEmpty, ContinuousClock.now < deadline {
                body = (try? await TestSupport.run("curl", ["-s", "--max-time", "5", "http://127.0.0.1:\(port)/in.txt"]).output) ?? ""
                if body.isEmpty { try? await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(body == "from the host\n", "through -p: '\(body)'")
            try? TestSupport.write("", to: shared + "/done")
        }
        #expect(served.status == 0, "\(served.stderr)")
        #expect(served.stderr.contains(Self.restored), "\(served.stderr)")
        #expect((try? FileStore.readText(shared + "/out.txt")) == "written\n")
        #expect(try await Self.listed(vm).count == 2)
        await vm.expectNothingLeft()
    }

    @Test("exec, ps, logs and stop on a run -d started from a template")
    func execIntoRestored() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await Self.vm()
        let first = try await vm.run(["--verbose", images.plain, "-c", "true"])
        #expect(first.stderr.contains(Self.made), "\(first.stderr)")
        let started = try await vm.run(["-d", "--verbose", images.plain, "-c", "echo up; sleep 600"])
        #expect(started.status == 0, "\(started.stderr)")
        let id = started.text.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(id.count == 12, "\(started.text)")
        let log = vm.cache + "/runs/.\(id).supervisor.log"
        #expect((try? FileStore.readText(log))?.contains(Self.restored) == true, "\((try? FileStore.readText(log)) ?? "no \(log)")")
        let exec = try await vm.command(["exec", "--cache-dir", vm.cache, id, "sh", "-c", "cat /proc/sys/kernel/random/boot_id; echo exec-ok"])
        #expect(exec.status == 0, "\(exec.stderr)")
        #expect(exec.text.hasSuffix("exec-ok\n") && exec.text.count > 36, "\(exec.text)")
        let ps = try await vm.command(["ps", "--cache-dir", vm.cache])
        #expect(ps.text.contains(id) && ps.text.contains("Up"), "\(ps.text)")
        let logs = try await vm.command(["logs", "--cache-dir", vm.cache, id])
        #expect(logs.text == "up\n", "\(logs.text)")
        let stop = try await vm.command(["stop", "--cache-dir", vm.cache, "-t", "2", id])
        #expect(stop.status == 0, "\(stop.stderr)")
        let removed = try await vm.command(["rm", "--cache-dir", vm.cache, id])
        #expect(removed.status == 0, "\(removed.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("a truncated template, or one QEMU cannot load, gives a warning and a cold boot that works, and is made again")
    func brokenTemplates() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await Self.vm()
        let first = try await vm.run(["--verbose", images.plain, "-c", "true"])
        #expect(first.stderr.contains(Self.made), "\(first.stderr)")
        let listed = try await Self.listed(vm)
        let folder = try #require(listed.first?["folder"] as? String)
        let size = try #require(FileStore.fileSize(folder + "/state"))

        #expect(truncate(folder + "/state", off_t(size / 2)) == 0)
        let truncated = try await vm.run(["--verbose", images.plain, "-c", "echo works"])
        #expect(truncated.status == 0 && truncated.text == "works\n", "\(truncated.stderr)")
        #expect(truncated.stderr.contains("warning: the template") && truncated.stderr.contains("changed since it was made"), "\(truncated.stderr)")
        #expect(truncated.stderr.contains(Self.made), "made again: \(truncated.stderr)")
        let remade = FileStore.fileSize(folder + "/state") ?? 0
        #expect(remade > size * 3 / 4, "the new template's state is whole: \(remade) bytes, the first \(size)")

        // Bytes changed where QEMU reads its stream's header, with the record made to match:
        // only QEMU can tell.
        let fd = open(folder + "/state", O_WRONLY)
        #expect(fd >= 0)
        _ = "garbage!".withCString { pwrite(fd, $0, 8, 0) }
        close(fd)
        let recordPath = folder + "/template.json"
        var record = try #require(try JSONSerialization.jsonObject(with: FileStore.readData(recordPath)) as? [String: Any])
        let identity = try #require(FileIdentity.of(folder + "/state"))
        record["state"] = ["device": identity.device, "inode": identity.inode, "size": identity.size, "modified": identity.modified, "changed": identity.changed]
        try FileStore.writeAtomically(try JSONSerialization.data(withJSONObject: record), to: recordPath)
        let corrupt = try await vm.run(["--verbose", images.plain, "-c", "echo works"])
        #expect(corrupt.status == 0 && corrupt.text == "works\n", "\(corrupt.stderr)")
        #expect(corrupt.stderr.contains("did not load") && corrupt.stderr.contains("booting cold"), "\(corrupt.stderr)")
        #expect(corrupt.stderr.contains(Self.made), "made again: \(corrupt.stderr)")
        let after = try await vm.run(["--verbose", images.plain, "-c", "echo works"])
        #expect(after.stderr.contains(Self.restored) && after.text == "works\n", "\(after.stderr)")
        await vm.expectNothingLeft()
    }

    @Test("two first runs at once make one template and both succeed; a changed initrd makes a new one; --no-snapshot boots cold")
    func makersAndKeys() async throws {
        let images = try await RunImages.shared(for: .x86_64)
        let vm = try await Self.vm()
        async let one = vm.run(["--verbose", images.plain, "-c", "echo one"])
        async let two = vm.run(["--verbose", images.plain, "-c", "echo two"])
        let both = try await [one, two]
        #expect(both.map(\.text) == ["one\n", "two\n"], "\(both.map(\.stderr))")
        #expect(both.filter { $0.stderr.contains(Self.made) }.count == 1, "one maker: \(both.map(\.stderr))")
        #expect(try await Self.listed(vm).count == 1)

        // The same recipe's outputs with another initrd: the kernel takes concatenated cpio
        // archives, so one more file makes a new initrd that still boots.
        let outputs = try TestSupport.temporaryDirectory("outputs")
        try await TestSupport.run("cp", ["-a", vm.output + "/.", outputs])
        let extra = outputs + "/extra.cpio"
        try ArchiveWriter.write([.init(path: "etc/marker", kind: .file(Data("new\n".utf8)))], to: extra, format: .cpioNewc)
        let initrd = outputs + "/container/x86_64/initrd.cpio"
        let appended = try FileStore.readData(initrd) + FileStore.readData(extra)
        try FileStore.writeAtomically(appended, to: initrd)
        var changed = vm
        changed.output = outputs
        let rebuilt = try await changed.run(["--verbose", images.plain, "-c", "echo changed"])
        #expect(rebuilt.text == "changed\n", "\(rebuilt.stderr)")
        #expect(rebuilt.stderr.contains(Self.made), "a new initrd makes a new template: \(rebuilt.stderr)")
        #expect(try await Self.listed(vm).count == 2)

        // Cold: the console shows the init's first line, which a restored VM said long ago.
        let cold = try await vm.run(["--verbose", "--no-snapshot", "--console", images.plain, "-c", "echo cold"])
        #expect(cold.text == "cold\n", "\(cold.stderr)")
        #expect(cold.stderr.contains("vmfactory-init: ready") && !cold.stderr.contains(Self.restored), "\(cold.stderr)")
        let warm = try await vm.run(["--verbose", "--console", images.plain, "-c", "echo warm"])
        #expect(warm.text == "warm\n", "\(warm.stderr)")
        #expect(!warm.stderr.contains("vmfactory-init: ready") && warm.stderr.contains(Self.restored), "\(warm.stderr)")
        await vm.expectNothingLeft()
    }
}
