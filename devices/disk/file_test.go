package disk

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// newImage creates a file of size bytes filled with a pattern and returns
// its path.
func newImage(t *testing.T, size int) (string, []byte) {
	t.Helper()
	data := make([]byte, size)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return path, data
}

func mustOpenFile(t *testing.T, path string, readOnly bool) *File {
	t.Helper()
	d, err := OpenFile(path, readOnly)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

func TestFileReadWrite(t *testing.T) {
	const size = 1 << 20
	path, want := newImage(t, size)
	d := mustOpenFile(t, path, false)
	if d.Size() != size || d.ReadOnly() {
		t.Fatalf("Size, ReadOnly = %d, %v; want %d, false", d.Size(), d.ReadOnly(), size)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		off := rng.IntN(size)
		n := rng.IntN(size - off + 1)
		if rng.IntN(2) == 0 {
			buf := make([]byte, n)
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if got, err := d.WriteAt(buf, int64(off)); err != nil || got != n {
				t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", n, off, got, err)
			}
			copy(want[off:], buf)
		} else {
			buf := make([]byte, n)
			got, err := d.ReadAt(buf, int64(off))
			if got != n || (err != nil && !(err == io.EOF && off+n == size)) {
				t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
			}
			if !bytes.Equal(buf, want[off:off+n]) {
				t.Fatalf("ReadAt(%d bytes at %d) returned the wrong data", n, off)
			}
		}
	}
	if err := d.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	d.Close()
	onDisk, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk, want) {
		t.Fatal("the file's contents differ from what was written")
	}
}

func TestFileConcurrent(t *testing.T) {
	const size, block = 1 << 20, 4096
	path, _ := newImage(t, size)
	d := mustOpenFile(t, path, false)
	var wg sync.WaitGroup
	for g := range size / block {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g)}, block)
			if _, err := d.WriteAt(buf, int64(g*block)); err != nil {
				t.Error(err)
				return
			}
			got := make([]byte, block)
			if _, err := d.ReadAt(got, int64(g*block)); err != nil || !bytes.Equal(got, buf) {
				t.Errorf("block %d: read back %v, err %v", g, got[:4], err)
			}
		}()
	}
	wg.Wait()
}

func TestFileOutOfRange(t *testing.T) {
	const size = 64 << 10
	path, _ := newImage(t, size)
	d := mustOpenFile(t, path, false)
	buf := make([]byte, 4096)

	// Reads: io.ReaderAt semantics at the end, errors before the start.
	if n, err := d.ReadAt(buf, size); n != 0 || err != io.EOF {
		t.Errorf("ReadAt at the end = %d, %v; want 0, EOF", n, err)
	}
	if n, err := d.ReadAt(buf, size-100); n != 100 || err != io.EOF {
		t.Errorf("ReadAt across the end = %d, %v; want 100, EOF", n, err)
	}
	if _, err := d.ReadAt(buf, -1); err == nil {
		t.Error("ReadAt at -1 succeeded")
	}

	// Writes, discards and zeroing outside the disk are refused whole.
	for _, off := range []int64{-512, size - 512, size, 1 << 62} {
		if n, err := d.WriteAt(buf, off); n != 0 || !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("WriteAt(4096 at %d) = %d, %v; want 0, ENOSPC", off, n, err)
		}
		if err := d.Discard(off, 4096); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("Discard(4096 at %d) = %v; want ENOSPC", off, err)
		}
		if err := d.WriteZeroes(off, 4096, true); !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("WriteZeroes(4096 at %d) = %v; want ENOSPC", off, err)
		}
	}
	if err := d.Discard(0, -1); err == nil {
		t.Error("Discard of length -1 succeeded")
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Size() != size {
		t.Fatalf("the file's size changed to %d (%v)", fi.Size(), err)
	}
}

func TestFileReadOnly(t *testing.T) {
	path, want := newImage(t, 64<<10)
	d := mustOpenFile(t, path, true)
	if !d.ReadOnly() {
		t.Fatal("ReadOnly() = false")
	}
	buf := make([]byte, 512)
	if _, err := d.ReadAt(buf, 512); err != nil || !bytes.Equal(buf, want[512:1024]) {
		t.Fatalf("ReadAt: %v", err)
	}
	_, err := d.WriteAt(buf, 0)
	if !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "read-only") {
		t.Errorf("WriteAt on a read-only disk = %v; want a read-only error matching fs.ErrPermission", err)
	}
	if err := d.Discard(0, 512); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("Discard on a read-only disk = %v", err)
	}
	if err := d.WriteZeroes(0, 512, false); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("WriteZeroes on a read-only disk = %v", err)
	}
	if err := d.Flush(); err != nil {
		t.Errorf("Flush on a read-only disk = %v", err)
	}
	d.Close()
	if got, _ := os.ReadFile(path); !bytes.Equal(got, want) {
		t.Error("a read-only disk changed")
	}
}

// allocatedBytes is the space the file takes on disk (st_blocks is in
// 512-byte units, man 2 stat).
func allocatedBytes(t *testing.T, path string) int64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func TestFileDiscardAndZeroes(t *testing.T) {
	const size = 4 << 20
	path, want := newImage(t, size)
	d := mustOpenFile(t, path, false)
	check := func(what string) {
		t.Helper()
		got := make([]byte, size)
		if _, err := d.ReadAt(got, 0); err != nil && err != io.EOF {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("after %s the disk's contents are wrong", what)
		}
	}

	before := allocatedBytes(t, path)
	if err := d.Discard(1<<20, 2<<20); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	if !d.noPunchHole.Load() {
		// A punched hole reads as zeros and frees the blocks.
		clear(want[1<<20 : 3<<20])
		check("Discard")
		if after := allocatedBytes(t, path); after > before-(2<<20) {
			t.Errorf("Discard of 2 MiB freed only %d bytes", before-after)
		}
	}

	for _, mayUnmap := range []bool{false, true} {
		copy(want, bytes.Repeat([]byte{0xaa}, size))
		if _, err := d.WriteAt(want, 0); err != nil {
			t.Fatal(err)
		}
		if err := d.WriteZeroes(4096+512, 64<<10, mayUnmap); err != nil {
			t.Fatalf("WriteZeroes(mayUnmap=%v): %v", mayUnmap, err)
		}
		clear(want[4096+512 : 4096+512+64<<10])
		check("WriteZeroes")
	}
}

// On a filesystem without FALLOC_FL_ZERO_RANGE or FALLOC_FL_PUNCH_HOLE,
// WriteZeroes falls back to the next way, and finally to writing zeros;
// Discard does nothing.
func TestFileFallbacks(t *testing.T) {
	const size = 3 << 20
	for _, supported := range []uint32{0, unix.FALLOC_FL_PUNCH_HOLE} {
		path, _ := newImage(t, size)
		d := mustOpenFile(t, path, false)
		var modes []uint32
		d.fallocate = func(fd int, mode uint32, off, length int64) error {
			modes = append(modes, mode)
			if mode&supported == 0 {
				return unix.EOPNOTSUPP
			}
			return unix.Fallocate(fd, mode, off, length)
		}
		want := bytes.Repeat([]byte{0x55}, size)
		if _, err := d.WriteAt(want, 0); err != nil {
			t.Fatal(err)
		}
		// More than the 1 MiB zero buffer, unaligned.
		if err := d.WriteZeroes(1000, 2<<20+24, true); err != nil {
			t.Fatalf("WriteZeroes: %v", err)
		}
		clear(want[1000 : 1000+2<<20+24])
		got := make([]byte, size)
		d.ReadAt(got, 0)
		if !bytes.Equal(got, want) {
			t.Errorf("supported modes %#x: WriteZeroes left the wrong contents", supported)
		}
		wantModes := []uint32{unix.FALLOC_FL_ZERO_RANGE | unix.FALLOC_FL_KEEP_SIZE, unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE}
		if len(modes) != 2 || modes[0] != wantModes[0] || modes[1] != wantModes[1] {
			t.Errorf("supported modes %#x: fallocate modes tried = %#x, want %#x", supported, modes, wantModes)
		}
		// Unsupported modes are not tried again.
		modes = nil
		if err := d.Discard(0, 4096); err != nil {
			t.Errorf("Discard: %v", err)
		}
		if err := d.WriteZeroes(0, 4096, false); err != nil {
			t.Errorf("WriteZeroes: %v", err)
		}
		if supported == 0 && len(modes) != 0 {
			t.Errorf("fallocate was tried again with modes %#x after EOPNOTSUPP", modes)
		}
	}
}

func TestOpenFileErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.img")
	_, err := Open(Spec{Kind: KindFile, Path: missing}, OpenOptions{})
	if want := "disk file:" + missing + ": open " + missing + ": no such file or directory"; err == nil || err.Error() != want {
		t.Errorf("Open of a missing file = %v, want %q", err, want)
	}
	if _, err := OpenFile(dir, false); err == nil || !strings.Contains(err.Error(), "directory") {
		t.Errorf("OpenFile of a directory = %v", err)
	}
	if _, err := OpenFile("/dev/null", true); err == nil || !strings.Contains(err.Error(), "not a regular file or a block device") {
		t.Errorf("OpenFile of /dev/null = %v", err)
	}
}

func TestOpenFileSpec(t *testing.T) {
	path, want := newImage(t, 8192)
	spec, err := ParseSpec(path + ",readonly")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Open(spec, OpenOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	if !d.ReadOnly() || d.Size() != 8192 {
		t.Errorf("ReadOnly, Size = %v, %d", d.ReadOnly(), d.Size())
	}
	got := make([]byte, 8192)
	if _, err := d.ReadAt(got, 0); err != nil || !bytes.Equal(got, want) {
		t.Errorf("ReadAt = %v", err)
	}
}
