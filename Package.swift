// swift-tools-version: 6.2
import PackageDescription

// The pipeline, one library per stage:
//   VMFactoryCore      errors, child processes, files and digests, console output, host facts
//   VMFactoryArchive   libarchive: reading, writing and extracting archives safely
//   VMFactoryKernel    recipes, pinned sources, source trees, configs, kernel builds, initrds
//   VMFactoryBoot      QEMU machines, boots and boot benchmarks
//   VMFactoryImage     container images: the content store, OCI and Docker forms, root disks
//   VMFactoryLifecycle the run protocol's frames, runs' records, names and logs, the exec client
//   VMFactoryRun       an image run like a container in a microVM: the plan, the channel, the session
//   VMFactoryPublish   builds as multi-arch OCI images (layouts, archives, registries, folders) and back, verified
//   VMFactoryExec      `vmfactory exec` and the context a command runs in
//   VMFactoryRuntime   the OCI runtime: runc's command line, bundles as runs, a supervisor per container
//   VMFactoryCommands  the command line, tested in-process
//   vmfactory          the executable: `exec` itself (small, quick to start), else vmfactory-cli
//   vmfactory-cli      the full command line: a stub that runs VMFactoryCommands
//   vmfactory-runtime  the OCI runtime that podman, docker and containerd call
let package = Package(
    name: "vmfactory",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "vmfactory", targets: ["vmfactory"]),
        .executable(name: "vmfactory-cli", targets: ["vmfactory-cli"]),
        .executable(name: "vmfactory-runtime", targets: ["vmfactory-runtime"]),
        .library(name: "VMFactoryKernel", targets: ["VMFactoryKernel"]),
        .library(name: "VMFactoryBoot", targets: ["VMFactoryBoot"]),
        .library(name: "VMFactoryImage", targets: ["VMFactoryImage"]),
        .library(name: "VMFactoryRun", targets: ["VMFactoryRun"]),
        .library(name: "VMFactoryPublish", targets: ["VMFactoryPublish"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        .systemLibrary(
            name: "CArchive",
            pkgConfig: "libarchive",
            providers: [.apt(["libarchive-dev"])]
        ),
        // LZ4 block compression for the legacy lz4 format, the only lz4 format the kernel
        // unpacks in an initramfs (libarchive writes only the newer frame format).
        .systemLibrary(
            name: "CLZ4",
            pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]
        ),
        // SHA-256 from the system's libcrypto (OpenSSL), with the CPU's SHA extensions.
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        // Linux calls Swift's Glibc module does not export, and the fork/exec that sets a
        // process group and a parent-death signal in the child between the two.
        .target(name: "CLinux"),
        // libext2fs, to write a root file system's inodes directly, with any owner.
        .target(
            name: "CExt4",
            linkerSettings: [.linkedLibrary("ext2fs"), .linkedLibrary("com_err")]
        ),
        .target(
            name: "VMFactoryCore",
            dependencies: ["CLinux", "COpenSSL"]
        ),
        .target(
            name: "VMFactoryArchive",
            dependencies: ["VMFactoryCore", "CArchive", "CLZ4"]
        ),
        .target(
            name: "VMFactoryKernel",
            dependencies: [
                "VMFactoryCore",
                "VMFactoryArchive",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
        .target(
            name: "VMFactoryBoot",
            dependencies: ["VMFactoryCore", "VMFactoryKernel"]
        ),
        .target(
            name: "VMFactoryImage",
            dependencies: ["VMFactoryCore", "VMFactoryArchive", "CArchive", "CExt4"]
        ),
        .target(
            name: "VMFactoryLifecycle",
            dependencies: ["CLinux", "VMFactoryCore"]
        ),
        .target(
            name: "VMFactoryRun",
            dependencies: ["CLinux", "VMFactoryCore", "VMFactoryArchive", "VMFactoryBoot", "VMFactoryImage", "VMFactoryLifecycle"]
        ),
        .target(
            name: "VMFactoryExec",
            dependencies: [
                "VMFactoryCore",
                "VMFactoryLifecycle",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .target(
            name: "VMFactoryPublish",
            dependencies: ["CArchive", "VMFactoryCore", "VMFactoryArchive", "VMFactoryKernel", "VMFactoryImage"]
        ),
        .target(
            name: "VMFactoryRuntime",
            dependencies: ["CLinux", "VMFactoryCore", "VMFactoryKernel", "VMFactoryBoot", "VMFactoryImage", "VMFactoryRun", "VMFactoryPublish", "VMFactoryLifecycle"]
        ),
        .target(
            name: "VMFactoryCommands",
            dependencies: [
                "VMFactoryCore",
                "VMFactoryKernel",
                "VMFactoryBoot",
                "VMFactoryImage",
                "VMFactoryRun",
                "VMFactoryPublish",
                "VMFactoryLifecycle",
                "VMFactoryExec",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        .executableTarget(
            name: "vmfactory",
            dependencies: ["VMFactoryExec"]
        ),
        .executableTarget(
            name: "vmfactory-cli",
            dependencies: ["VMFactoryCommands"]
        ),
        .executableTarget(
            name: "vmfactory-runtime",
            dependencies: ["VMFactoryRuntime"]
        ),
        .testTarget(
            name: "VMFactoryTests",
            dependencies: [
                "CLinux",
                "VMFactoryCore",
                "VMFactoryArchive",
                "VMFactoryKernel",
                "VMFactoryBoot",
                "VMFactoryImage",
                "VMFactoryRun",
                "VMFactoryPublish",
                "VMFactoryCommands",
                "VMFactoryLifecycle",
                "VMFactoryExec",
                "VMFactoryRuntime",
                // Built so that tests can run the real command line.
                "vmfactory",
                "vmfactory-cli",
                "vmfactory-runtime",
                .product(name: "Yams", package: "Yams"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
