import Foundation
import VMFactoryRuntime

// vmfactory-runtime: the OCI runtime (runc's command line) whose containers are microVMs.
let executable = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
exit(await Runtime.main(arguments: Array(CommandLine.arguments.dropFirst()), environment: ProcessInfo.processInfo.environment, executable: executable))
