import Foundation

/// The user, group and supplementary groups a child process runs as, when vmfactory runs
/// as root and the child must not (QEMU for an untrusted guest).
public struct ProcessIdentity: Sendable, Equatable, CustomStringConvertible {
    public var uid: uid_t
    public var gid: gid_t
    public var groups: [gid_t]

    public init(uid: uid_t, gid: gid_t, groups: [gid_t] = []) {
        self.uid = uid
        self.gid = gid
        self.groups = groups
    }

    /// `nobody:nogroup`, the kernel's overflow ids.
    public static let nobody = ProcessIdentity(uid: 65534, gid: 65534)

    /// `USER[:GROUP]`: names from the host's passwd and group databases, or numbers. A user
    /// without a group takes the user's primary group.
    public static func parse(_ text: String) throws -> ProcessIdentity {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let userPart = parts.first, !userPart.isEmpty, parts.count == 1 || !parts[1].isEmpty else {
            throw VMFactoryError(.invalidArgument, "'\(text)' is not USER[:GROUP]", hint: "for example --vmm-user nobody:nogroup or --vmm-user 1000:1000")
        }
        var uid: uid_t
        var primary: gid_t?
        if let number = UInt32(userPart) {
            uid = number
            primary = getpwuid(number).map { $0.pointee.pw_gid }
        } else {
            guard let entry = getpwnam(userPart) else {
                throw VMFactoryError(.invalidArgument, "no user '\(userPart)' on this host", hint: "name a user of /etc/passwd, or give numbers: --vmm-user UID:GID")
            }
            uid = entry.pointee.pw_uid
            primary = entry.pointee.pw_gid
        }
        var gid: gid_t
        if parts.count == 2 {
            if let number = UInt32(parts[1]) {
                gid = number
            } else {
                guard let entry = getgrnam(parts[1]) else {
                    throw VMFactoryError(.invalidArgument, "no group '\(parts[1])' on this host", hint: "name a group of /etc/group, or give a number")
                }
                gid = entry.pointee.gr_gid
            }
        } else {
            guard let primary else {
                throw VMFactoryError(.invalidArgument, "uid \(uid) has no entry in /etc/passwd to take a group from", hint: "give the group too: --vmm-user \(uid):GID")
            }
            gid = primary
        }
        guard uid != 0, gid != 0 else {
            throw VMFactoryError(.invalidArgument, "--vmm-user \(text) is root", hint: "QEMU must run as an unprivileged user; name one, or leave --vmm-user out")
        }
        return ProcessIdentity(uid: uid, gid: gid)
    }

    public var description: String { "uid \(uid), gid \(gid)" + (groups.isEmpty ? "" : ", groups " + groups.map(String.init).joined(separator: ",")) }
}
