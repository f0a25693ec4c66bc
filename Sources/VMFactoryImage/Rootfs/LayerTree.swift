import CArchive
import Foundation
import VMFactoryArchive
import VMFactoryCore

/// The file tree a stack of layers leaves, built while the layers stream by, in one pass.
///
/// A regular file's bytes go into a new inode of the disk the moment its entry is read; what
/// a later layer replaces or whites out is freed again. Directories, names and links are made
/// at the end (`write`), in sorted order, so that equal images give equal disks. Paths live only
/// in this tree, never on the host, so no entry can reach outside it: a path that leaves the
/// tree, a write through a symlink, a hard link to a name the tree does not have and a whiteout
/// that escapes are refused with the layer and the entry named.
final class LayerTree {
    final class FileInode {
        let ino: UInt32
        /// Names in the tree: the link count, and when it drops to 0 the inode is freed.
        var names = 0
        var attributes: Ext4Image.Attributes

        init(ino: UInt32, attributes: Ext4Image.Attributes) {
            self.ino = ino
            self.attributes = attributes
        }
    }

    enum Kind {
        case directory
        case file(FileInode)
        case symlink(String)
        case device(major: UInt32, minor: UInt32)
        /// FIFO or socket: the mode says which.
        case special
    }

    final class Node {
        var kind: Kind
        var attributes: Ext4Image.Attributes
        var xattrs: [(name: String, value: [UInt8])]
        /// The layer that made the node; an opaque whiteout hides lower layers' nodes only.
        var layer: Int
        var children: [String: Node] = [:]

        init(kind: Kind, attributes: Ext4Image.Attributes, xattrs: [(name: String, value: [UInt8])], layer: Int) {
            self.kind = kind
            self.attributes = attributes
            self.xattrs = xattrs
            self.layer = layer
        }

        var isDirectory: Bool { if case .directory = kind { return true } else { return false } }
    }

    let disk: Ext4Image
    let root: Node
    /// The mode, owner and time of folders that no entry names but a deeper path needs.
    let implicit: Ext4Image.Attributes
    private(set) var entries = 0

    init(disk: Ext4Image, time: Int64) {
        self.disk = disk
        implicit = Ext4Image.Attributes(mode: 0o040755, uid: 0, gid: 0, mtime: time)
        root = Node(kind: .directory, attributes: implicit, xattrs: [], layer: -1)
    }

    /// What is wrong with an entry, naming its layer and path.
    struct Refusal {
        var layer: String
        var path: String

        func hostile(_ reason: String) -> VMFactoryError {
            VMFactoryError(.hostileArchive, "\(layer): refused entry '\(path)': \(reason)", hint: "the image is not safe to unpack; check where it came from")
        }

        func invalid(_ reason: String) -> VMFactoryError {
            VMFactoryError(.invalidArgument, "\(layer): entry '\(path)': \(reason)", hint: "the layer does not follow the OCI image spec")
        }
    }

    // MARK: Applying a layer

    /// Applies every entry of the layer archive at `path`, in order. Errors name the layer.
    func apply(layer index: Int, path: String, name: String, progress: (_ bytesRead: Int64, _ entries: Int) -> Void, cancellation: BlockingWork.Cancellation) throws {
        do {
            // Verified when it entered the content store: read, not hashed again.
            let reader = try ArchiveReader(path: path, formats: .tar, hashing: false)
            var count = 0
            while let entry = try reader.nextEntry() {
                try cancellation.check()
                let refusal = Refusal(layer: name, path: reader.currentPath)
                try apply(entry, reader: reader, layer: index, refusal: refusal)
                count += 1
                entries += 1
                if count % 256 == 0 { progress(reader.bytesRead, count) }
            }
            progress(reader.bytesRead, count)
        } catch var error as VMFactoryError where !error.message.hasPrefix(name) && error.code != .interrupted {
            error.message = "\(name): " + error.message
            throw error
        }
    }

    func apply(_ entry: OpaquePointer, reader: ArchiveReader, layer: Int, refusal: Refusal) throws {
        guard let components = ArchiveExtractor.normalizedComponents(reader.currentPath, resolvingDotDot: false) else {
            throw refusal.hostile(reader.currentPath.hasPrefix("/") ? "absolute path" : "the path leaves the root (..)")
        }
        guard let name = components.last else {
            // "./": the root directory itself.
            if let attributes = attributes(of: entry), (attributes.mode & 0o170000) == 0o040000 {
                root.attributes = attributes
                root.xattrs = Self.xattrs(of: entry)
            }
            return
        }
        let parentPath = Array(components.dropLast())
        if name.hasPrefix(".wh.") {
            try Self.checkWhiteout(name, refusal: refusal)
            // Nothing to hide where no lower layer made the parent.
            guard let parent = try directory(parentPath, layer: layer, refusal: refusal, creating: false) else { return }
            return try whiteout(name, in: parent, layer: layer, refusal: refusal)
        }
        let parent = try directory(parentPath, layer: layer, refusal: refusal, creating: true)!
        if let target = archive_entry_hardlink(entry).map({ String(cString: $0) }) {
            return try hardLink(name, in: parent, to: target, layer: layer, refusal: refusal)
        }
        guard let attributes = attributes(of: entry) else {
            throw refusal.invalid("unsupported file type \(String(archive_entry_filetype(entry), radix: 8))")
        }
        let xattrs = Self.xattrs(of: entry)
        let kind: Kind
        switch attributes.mode & 0o170000 {
        case 0o040000:
            if let existing = parent.children[name], existing.isDirectory {
                // A directory over a directory keeps what is below it and takes the new attributes.
                existing.attributes = attributes
                existing.xattrs = xattrs
                existing.layer = layer
                return
            }
            kind = .directory
        case 0o100000:
            let ino = try disk.createFile(attributes) { write in
                if archive_entry_size(entry) > 0 { try reader.readData(write) }
            }
            kind = .file(FileInode(ino: ino, attributes: attributes))
        case 0o120000:
            kind = .symlink(archive_entry_symlink(entry).map { String(cString: $0) } ?? "")
        case 0o020000, 0o060000:
            kind = .device(major: UInt32(archive_entry_rdevmajor(entry)), minor: UInt32(archive_entry_rdevminor(entry)))
        default:
            kind = .special
        }
        try replace(name, in: parent, with: Node(kind: kind, attributes: attributes, xattrs: xattrs, layer: layer))
    }

    /// The directory at `components`, made (with the implicit attributes) where missing when
    /// `creating`, else nil where missing. Every directory on the way counts as present in
    /// `layer`, which an opaque whiteout of this layer respects.
    ///
    /// A symlink on the way is followed as the guest would follow it, inside the tree: an
    /// absolute target from the tree's root, a relative one from the link's folder. One that
    /// climbs above the root is refused, as is a chain of more than 40.
    func directory(_ components: [String], layer: Int, refusal: Refusal, creating: Bool) throws -> Node? {
        var pending = components[...]
        var walked: [String] = []
        var node = root
        var followed = 0
        while let component = pending.popFirst() {
            if let child = node.children[component] {
                switch child.kind {
                case .directory:
                    child.layer = max(child.layer, layer)
                    node = child
                    walked.append(component)
                    continue
                case .symlink(let target):
                    followed += 1
                    guard followed <= 40 else { throw refusal.hostile("more than 40 symlinks on the way (a loop at '\(component)')") }
                    guard let resolved = Self.resolve(target, from: walked) else {
                        throw refusal.hostile("it would be written through the symlink '\((walked + [component]).joined(separator: "/"))', which points outside the root ('\(target)')")
                    }
                    pending = (resolved + pending)[...]
                    walked = []
                    node = root
                    continue
                default:
                    guard creating else { return nil }
                    // A file of a lower layer where this layer has a directory: the directory wins.
                    try release(child)
                }
            }
            guard creating else { return nil }
            let made = Node(kind: .directory, attributes: implicit, xattrs: [], layer: layer)
            node.children[component] = made
            node = made
            walked.append(component)
        }
        return node
    }

    /// Where `target`, a symlink in the folder `base`, points, as components from the root;
    /// nil when it climbs above the root.
    static func resolve(_ target: String, from base: [String]) -> [String]? {
        var result = target.hasPrefix("/") ? [] : base
        for part in target.split(separator: "/", omittingEmptySubsequences: true) {
            switch part {
            case ".": continue
            case "..":
                guard !result.isEmpty else { return nil }
                result.removeLast()
            default: result.append(String(part))
            }
        }
        return result
    }

    /// `.wh.NAME` removes NAME of lower layers; `.wh..wh..opq` hides everything lower layers
    /// put in its directory. Neither touches what this layer itself has (OCI image spec,
    /// layer.md: whiteouts apply to lower layers only, wherever they sit in the layer).
    func whiteout(_ name: String, in parent: Node, layer: Int, refusal: Refusal) throws {
        if name == ".wh..wh..opq" {
            return try hideLower(in: parent, than: layer)
        }
        let target = String(name.dropFirst(".wh.".count))
        guard let node = parent.children[target] else { return }
        if node.layer < layer {
            try release(node)
            parent.children[target] = nil
        } else {
            try hideLower(in: node, than: layer)
        }
    }

    /// A whiteout must name one entry of its own folder.
    static func checkWhiteout(_ name: String, refusal: Refusal) throws {
        guard name != ".wh..wh..opq" else { return }
        let target = name.dropFirst(".wh.".count)
        guard !target.isEmpty else { throw refusal.invalid("a whiteout without a name ('.wh.')") }
        guard target != ".", target != "..", !target.contains("/") else { throw refusal.hostile("the whiteout '\(name)' names something outside its directory") }
    }

    /// Removes what layers below `layer` put under `directory`, keeping what `layer` put there.
    func hideLower(in directory: Node, than layer: Int) throws {
        for (name, child) in directory.children {
            if child.layer < layer {
                try release(child)
                directory.children[name] = nil
            } else if child.isDirectory {
                try hideLower(in: child, than: layer)
            }
        }
    }

    /// A further name for what `target` names (in this or a lower layer).
    func hardLink(_ name: String, in parent: Node, to target: String, layer: Int, refusal: Refusal) throws {
        guard let components = ArchiveExtractor.normalizedComponents(target, resolvingDotDot: false), let last = components.last else {
            throw refusal.hostile("a hard link to '\(target)', outside the root")
        }
        guard let folder = try directory(Array(components.dropLast()), layer: layer, refusal: refusal, creating: false),
              let node = folder.children[last] else {
            throw refusal.invalid("a hard link to '\(target)', which no layer up to this one has")
        }
        if case .directory = node.kind { throw refusal.hostile("a hard link to the directory '\(target)'") }
        if case .file(let inode) = node.kind, let existing = parent.children[name], case .file(let other) = existing.kind, other === inode { return }
        try replace(name, in: parent, with: Node(kind: node.kind, attributes: node.attributes, xattrs: node.xattrs, layer: layer))
    }

    func replace(_ name: String, in parent: Node, with node: Node) throws {
        if let existing = parent.children[name] { try release(existing) }
        if case .file(let inode) = node.kind { inode.names += 1 }
        parent.children[name] = node
    }

    /// Frees what `node` holds on the disk: the inodes of files no other name keeps.
    func release(_ node: Node) throws {
        switch node.kind {
        case .directory:
            for child in node.children.values { try release(child) }
            node.children = [:]
        case .file(let inode):
            inode.names -= 1
            if inode.names == 0 { try disk.release(inode.ino) }
        default:
            break
        }
    }

    func attributes(of entry: OpaquePointer) -> Ext4Image.Attributes? {
        let type = UInt32(archive_entry_filetype(entry))
        guard [0o040000, 0o100000, 0o120000, 0o020000, 0o060000, 0o010000, 0o140000].contains(type) else { return nil }
        return Ext4Image.Attributes(
            mode: type | (UInt32(archive_entry_perm(entry)) & 0o7777),
            uid: UInt32(truncatingIfNeeded: archive_entry_uid(entry)), gid: UInt32(truncatingIfNeeded: archive_entry_gid(entry)),
            mtime: Int64(archive_entry_mtime(entry))
        )
    }

    /// The entry's extended attributes (PAX `SCHILY.xattr.*` and libarchive's own records).
    static func xattrs(of entry: OpaquePointer) -> [(name: String, value: [UInt8])] {
        var result: [(String, [UInt8])] = []
        guard archive_entry_xattr_reset(entry) > 0 else { return [] }
        var name: UnsafePointer<CChar>?
        var value: UnsafeRawPointer?
        var size = 0
        while archive_entry_xattr_next(entry, &name, &value, &size) == ARCHIVE_OK {
            guard let name else { continue }
            let bytes = value.map { [UInt8](UnsafeRawBufferPointer(start: $0, count: size)) } ?? []
            result.append((String(cString: name), bytes))
        }
        return result.sorted { $0.0 < $1.0 }
    }
}
