import Foundation
import Synchronization
import Testing
@testable import VMFactoryBoot
@testable import VMFactoryCore
@testable import VMFactoryImage
@testable import VMFactoryLifecycle
@testable import VMFactoryRun

/// VMFactoryRun's preparation with providers that answer from memory: what it asks them for,
/// in which order, and what it refuses before anything slow happens. (`vmfactory run`'s own
/// providers, which convert, build, pull and probe, are exercised by every boot test.)
@Suite("a run's preparation: the plan from the image, kernel and accelerator providers; refusals before anything is converted or built", .tags(.unit), .scoped)
struct RunPreparerTests {
    /// What the providers were asked, in order.
    final class Calls: Sendable {
        let list = Mutex<[String]>([])
        func add(_ call: String) { list.withLock { $0.append(call) } }
        var all: [String] { list.withLock { $0 } }
    }

    struct Images: RunImageProvider {
        let calls: Calls
        var platform = "linux/s390x"
        func image(_ reference: String, platform asked: Platform?) async throws -> RunImage {
            calls.add("image \(reference) \(asked.map { "\($0)" } ?? "-")")
            return RunImage(disk: "/cache/disk.qcow2", config: RunTests.image(), platform: platform)
        }
    }

    struct Kernels: RunKernelProvider {
        let calls: Calls
        var runProtocol: Int? = Int(RunProtocol.version)
        func kernel(for target: Target) async throws -> RunKernel {
            calls.add("kernel \(target)")
            return RunKernel(kernel: "/out/\(target)/vmlinuz", initrd: "/out/\(target)/initrd", cmdline: "quiet", runProtocol: runProtocol, rebuildHint: "rebuild it (the hint)")
        }
    }

    struct Accelerators: RunAcceleratorProvider {
        let calls: Calls
        func accelerator(_ choice: AcceleratorProbe.Choice, machine: QEMUMachine, probe: Bool) async throws -> (QEMUMachine.Accelerator, String?) {
            calls.add("accelerator \(choice) \(machine.target) probe=\(probe)")
            return (.tcg, nil)
        }
    }

    func preparer(_ calls: Calls, platform: String = "linux/s390x", runProtocol: Int? = Int(RunProtocol.version)) -> RunPreparer {
        RunPreparer(
            images: Images(calls: calls, platform: platform), kernels: Kernels(calls: calls, runProtocol: runProtocol), accelerators: Accelerators(calls: calls),
            console: Console(verbosity: .quiet, output: .sink { _ in })
        )
    }

    @Test("the plan: the target from the image's platform, its kernel, the process as docker combines it, the accelerator asked for last")
    func plan() async throws {
        let calls = Calls()
        var request = RunRequest(image: "oci:/images/box")
        request.process.command = ["id", "-u"]
        request.process.environment = ["EXTRA=1"]
        request.options.memoryMiB = 1024
        request.accelerator = .auto
        let plan = try await preparer(calls).plan(request, id: "abc123", relay: LoopbackRelay(), hostEnvironment: [:])
        #expect(calls.all == ["image oci:/images/box -", "kernel s390x", "accelerator auto s390x probe=true"])
        #expect(plan.target == .s390x && plan.kernel == "/out/s390x/vmlinuz" && plan.initrd == "/out/s390x/initrd" && plan.cmdline == "quiet")
        #expect(plan.root == .disk("/cache/disk.qcow2") && plan.hostname == "abc123" && plan.memoryMiB == 1024 && plan.accelerator == .tcg)
        #expect(plan.process.argv == ["/bin/echo", "ep", "id", "-u"] && plan.process.user == "app" && plan.process.workdir == "/srv")
        #expect(plan.process.environment.contains("EXTRA=1") && plan.process.environment.contains("OVER=image"))

        // --icount: TCG, without asking; --print-qemu: no probe.
        let quiet = Calls()
        request.options.icount = true
        request.hostname = "named"
        let counted = try await preparer(quiet, platform: "linux/amd64").plan(request, id: "x", relay: LoopbackRelay(), hostEnvironment: [:])
        #expect(counted.target == .x86_64 && counted.accelerator == .tcg && counted.hostname == "named")
        #expect(quiet.all == ["image oci:/images/box -", "kernel x86_64"])
        let printed = Calls()
        request.options.icount = false
        request.printOnly = true
        request.ports = [try PortForward.parse("8080:80")]
        let shown = try await preparer(printed, platform: "linux/amd64").plan(request, id: "x", relay: LoopbackRelay(), hostEnvironment: [:])
        #expect(printed.all.last == "accelerator auto x86_64 probe=false")
        #expect(shown.ports == request.ports, "a printed plan takes no port")
    }

    @Test("refused with a message naming both versions: an initrd of another run protocol, or of none")
    func protocolVersions() async throws {
        for (version, said) in [(Int(RunProtocol.version) + 1, "speaks run protocol version \(RunProtocol.version + 1), and this vmfactory speaks version \(RunProtocol.version)"), (nil, "was made before the run protocol (version 0), and this vmfactory speaks version \(RunProtocol.version)")] {
            let calls = Calls()
            let error = await #expect(throws: VMFactoryError.self) {
                try await preparer(calls, runProtocol: version).plan(RunRequest(image: "oci:/i"), id: "x", relay: LoopbackRelay(), hostEnvironment: [:])
            }
            #expect(error?.message.contains(said) == true, "\(error?.message ?? "")")
            #expect(error?.hint == "rebuild it (the hint)")
            #expect(!calls.all.contains { $0.hasPrefix("accelerator") }, "nothing probed for a kernel that is refused")
        }
    }

    @Test("refused before the image is converted: two mounts at one path, virtio-fs without root; an image of a platform with no kernel, before any kernel is built")
    func refusals() async throws {
        var request = RunRequest(image: "oci:/i")
        request.options.volumes = [Volume(host: "/a", guest: "/data", readOnly: true, kind: .ninep)]
        request.options.tmpfs = [try TmpfsMount.parse("/data")]
        let calls = Calls()
        let twice = await #expect(throws: VMFactoryError.self) { try await preparer(calls).plan(request, id: "x", relay: LoopbackRelay(), hostEnvironment: [:]) }
        #expect(twice?.message == "/data is given more than one volume or tmpfs")
        request.options.tmpfs = []
        request.options.volumes = [Volume(host: "/a", guest: "/data", readOnly: true, kind: .virtiofs)]
        request.root = false
        let virtiofs = await #expect(throws: VMFactoryError.self) { try await preparer(calls).plan(request, id: "x", relay: LoopbackRelay(), hostEnvironment: [:]) }
        #expect(virtiofs?.message.contains("virtio-fs volumes need root") == true)
        #expect(calls.all.isEmpty, "nothing converted for a request refused as it stands")

        let arm = Calls()
        let platform = await #expect(throws: VMFactoryError.self) {
            try await preparer(arm, platform: "linux/arm64").plan(RunRequest(image: "oci:/i"), id: "x", relay: LoopbackRelay(), hostEnvironment: [:])
        }
        #expect(platform?.message == "the image is for linux/arm64, a platform vmfactory has no kernel for")
        #expect(arm.all == ["image oci:/i -"])
    }
}
