package guest

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"govmm/tests/tools"
)

func TestHasExtFilesystem(t *testing.T) {
	img := make([]byte, 4096)
	if HasExtFilesystem(bytes.NewReader(img)) {
		t.Error("a blank disk taken for ext")
	}
	copy(img[extMagicOffset:], extMagic)
	if !HasExtFilesystem(bytes.NewReader(img)) {
		t.Error("the ext magic at 1080 not recognised")
	}
	if HasExtFilesystem(bytes.NewReader(img[:1000])) {
		t.Error("a disk too short for a superblock taken for ext")
	}
}

// TestHasExtFilesystemOnRealImage checks the offset against a file system
// made by mke2fs (e2fsprogs), when it is installed.
func TestHasExtFilesystemOnRealImage(t *testing.T) {
	mkfs := tools.Need(t, "mkfs.ext4", "e2fsprogs")
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, make([]byte, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", path).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !HasExtFilesystem(f) {
		t.Error("a fresh ext4 image not recognised")
	}
}
