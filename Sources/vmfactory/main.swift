import Foundation
import VMFactoryExec

// `vmfactory exec` runs here, in a binary without the image and kernel code, so that an exec
// costs little more than its round trip; every other command is the full command line,
// `vmfactory-cli` beside this binary, which takes over this process.
let arguments = CommandLine.arguments
if arguments.count > 1, arguments[1] == "exec" {
    await ExecMain.run(Array(arguments.dropFirst()))
}
let own = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? arguments[0]
let cli = (own as NSString).deletingLastPathComponent + "/vmfactory-cli"
var argv: [UnsafeMutablePointer<CChar>?] = arguments.map { strdup($0) } + [nil]
execv(cli, &argv)
FileHandle.standardError.write(Data("vmfactory: error: cannot start \(cli): \(String(cString: strerror(errno)))\n  hint: build it beside vmfactory: swift build --product vmfactory-cli\n".utf8))
exit(125)
