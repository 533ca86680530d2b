package guest

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Disks: govmm run --disk gives the guest virtio-blk disks, /dev/vda,
// /dev/vdb... A disk that already holds an ext2/3/4 filesystem is mounted
// at /mnt/vda, /mnt/vdb..., so that files kept there survive reboots and
// migrations with no typing. A blank disk is left alone: `mkfs.ext4
// /dev/vda` (busybox mke2fs) makes it one, mounted from the next boot
// on. govmm.mount=off turns this off.

// DiskMountDir is where MountDisks mounts /dev/vdX: DiskMountDir/vdX.
const DiskMountDir = "/mnt"

// ext superblock (Documentation/filesystems/ext4/super.rst): it starts
// 1024 bytes into the device, and s_magic 0xEF53 sits at offset 0x38 in it.
const (
	extSuperblockOffset = 1024
	extMagicOffset      = extSuperblockOffset + 0x38
)

var extMagic = []byte{0x53, 0xef} // 0xEF53, little-endian

// HasExtFilesystem reports whether the device (or image) r starts with an
// ext2, ext3 or ext4 superblock.
func HasExtFilesystem(r interface {
	ReadAt([]byte, int64) (int, error)
}) bool {
	var magic [2]byte
	if _, err := r.ReadAt(magic[:], extMagicOffset); err != nil {
		return false
	}
	return bytes.Equal(magic[:], extMagic)
}

// mounted lists what MountDisks mounted, for unmountDisks at shutdown.
var mounted []string

// MountDisks mounts each virtio disk holding an ext filesystem, read-only
// when the disk is (/sys/block/vdX/ro, set by VIRTIO_BLK_F_RO).
func MountDisks(opts Options) {
	if opts.NoMount {
		return
	}
	devs, _ := filepath.Glob("/sys/block/vd*")
	for _, sys := range devs {
		name := filepath.Base(sys)
		dev := "/dev/" + name
		f, err := os.Open(dev)
		if err != nil {
			logf("%s: %v", dev, err)
			continue
		}
		isExt := HasExtFilesystem(f)
		f.Close()
		if !isExt {
			logf("%s holds no ext2/3/4 file system: not mounted (mke2fs %s makes one)", dev, dev)
			continue
		}
		var flags uintptr
		if ro, _ := os.ReadFile(sys + "/ro"); strings.TrimSpace(string(ro)) == "1" {
			flags |= unix.MS_RDONLY
		}
		target := filepath.Join(DiskMountDir, name)
		if err := os.MkdirAll(target, 0o755); err != nil {
			logf("mkdir %s: %v", target, err)
			continue
		}
		if err := unix.Mount(dev, target, "ext4", flags, ""); err != nil {
			logf("mount %s on %s: %v", dev, target, err)
			continue
		}
		mounted = append(mounted, target)
		logf("%s mounted on %s%s", dev, target, map[bool]string{true: " (read-only)"}[flags&unix.MS_RDONLY != 0])
	}
}

// unmountDisks unmounts what MountDisks mounted, so that the file systems
// are clean for the next boot (or for e2fsck on the host). A busy one is
// detached lazily; the sync before power-off still writes its data.
func unmountDisks() {
	for i := len(mounted) - 1; i >= 0; i-- {
		if err := unix.Unmount(mounted[i], 0); err != nil {
			if err2 := unix.Unmount(mounted[i], unix.MNT_DETACH); err2 != nil {
				logf("umount %s: %v", mounted[i], err)
			}
		}
	}
	mounted = nil
}
