import Foundation
import VMFactoryCore

extension LayerTree {
    /// Makes every directory and name of the tree on the disk, each directory's entries in byte
    /// order, depth first; a directory's own attributes are set after its entries, so that
    /// linking them does not change its time.
    func write() throws {
        if let own = root.children["lost+found"], !own.isDirectory {
            try disk.removeLostAndFound()
        }
        try write(root, ino: Ext4Image.root)
    }

    private func write(_ directory: Node, ino: UInt32) throws {
        for name in directory.children.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            let node = directory.children[name]!
            switch node.kind {
            case .directory:
                // mke2fs made lost+found; an image's own takes its place.
                let existing = ino == Ext4Image.root ? disk.lookup(ino, name) : nil
                let child = try existing ?? disk.mkdir(ino, name)
                try write(node, ino: child)
            case .file(let inode):
                try disk.link(ino, name, ino: inode.ino, mode: inode.attributes.mode)
                if inode.names > 0 {
                    // The first of its names: the link count, and the attributes once.
                    try disk.setAttributes(inode.ino, inode.attributes, links: UInt32(inode.names))
                    try setXattrs(node, ino: inode.ino)
                    inode.names = -inode.names
                }
            case .symlink(let target):
                let child = try disk.symlink(ino, name, target: target)
                try disk.setAttributes(child, node.attributes)
                try setXattrs(node, ino: child)
            case .device(let major, let minor):
                let child = try disk.special(node.attributes, major: major, minor: minor)
                try disk.link(ino, name, ino: child, mode: node.attributes.mode)
                try setXattrs(node, ino: child)
            case .special:
                let child = try disk.special(node.attributes, major: 0, minor: 0)
                try disk.link(ino, name, ino: child, mode: node.attributes.mode)
                try setXattrs(node, ino: child)
            }
        }
        try disk.setAttributes(ino, directory.attributes)
        try setXattrs(directory, ino: ino)
    }

    private func setXattrs(_ node: Node, ino: UInt32) throws {
        for (name, value) in node.xattrs {
            try disk.setXattr(ino, name: name, value: value)
        }
    }
}
