package disk

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// File is a disk backed by an image file (raw format: byte n of the disk is
// byte n of the file) or a block device. It implements Disk, Discarder and
// ZeroWriter with plain system calls: pread and pwrite for I/O (safe from
// many goroutines at once), fdatasync for Flush, fallocate for Discard and
// WriteZeroes.
//
// The size is fixed when the file is opened: writes past it fail, they
// never extend the file.
type File struct {
	f        *os.File
	raw      syscall.RawConn // f's descriptor, for fdatasync and fallocate
	path     string
	size     int64
	readOnly bool

	// fallocate is unix.Fallocate; tests replace it to take the fallback
	// paths a filesystem without hole punching would.
	fallocate func(fd int, mode uint32, off, length int64) error
	// The fallocate modes that failed with EOPNOTSUPP are not tried again.
	noPunchHole atomic.Bool
	noZeroRange atomic.Bool
}

// OpenFile opens a raw image file or a block device as a disk; readOnly
// opens it O_RDONLY, and writes fail.
func OpenFile(path string, readOnly bool) (*File, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, err
	}
	d, err := newFile(f, path, readOnly)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func newFile(f *os.File, path string, readOnly bool) (*File, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	var size int64
	switch mode := fi.Mode(); {
	case mode.IsRegular():
		size = fi.Size()
	case mode&os.ModeDevice != 0 && mode&os.ModeCharDevice == 0:
		// A block device's Stat size is 0; its end is its size.
		if size, err = f.Seek(0, io.SeekEnd); err != nil {
			return nil, fmt.Errorf("finding the size of block device %s: %w", path, err)
		}
	case mode.IsDir():
		return nil, fmt.Errorf("%s is a directory, not a disk image", path)
	default:
		return nil, fmt.Errorf("%s is not a regular file or a block device (%v)", path, mode.Type())
	}
	raw, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	return &File{f: f, raw: raw, path: path, size: size, readOnly: readOnly, fallocate: unix.Fallocate}, nil
}

// String is the file's path.
func (d *File) String() string { return d.path }

// Size is the file's size when it was opened.
func (d *File) Size() uint64 { return uint64(d.size) }

// ReadOnly reports whether the file was opened read-only.
func (d *File) ReadOnly() bool { return d.readOnly }

// ReadAt reads with pread(2). As io.ReaderAt asks, a read that reaches the
// end of the disk returns the bytes before it and io.EOF.
func (d *File) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("read of %s at negative offset %d: %w", d.path, off, syscall.EINVAL)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if off >= d.size {
		return 0, io.EOF
	}
	var eof error
	if rest := d.size - off; int64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	n, err := d.f.ReadAt(p, off)
	if err != nil {
		return n, err // io.EOF too: the file shrank under us
	}
	return n, eof
}

// WriteAt writes with pwrite(2), all of p or an error; a write that does not
// fit inside the disk is refused whole.
func (d *File) WriteAt(p []byte, off int64) (int, error) {
	if err := d.checkWrite("write", off, int64(len(p))); err != nil {
		return 0, err
	}
	return d.f.WriteAt(p, off)
}

// Flush is fdatasync(2): the data written so far, and the metadata needed
// to read it back, reach stable storage. A read-only file has nothing to
// flush.
func (d *File) Flush() error {
	if d.readOnly {
		return nil
	}
	if err := d.control(unix.Fdatasync); err != nil {
		return &os.PathError{Op: "fdatasync", Path: d.path, Err: err}
	}
	return nil
}

// Close closes the file. It does not flush: a guest that wants its writes
// durable flushes.
func (d *File) Close() error { return d.f.Close() }

// Discard punches a hole: fallocate(2) with FALLOC_FL_PUNCH_HOLE |
// FALLOC_FL_KEEP_SIZE frees the range's blocks and the range reads back as
// zeros (man 2 fallocate, "Deallocating file space"). On a filesystem that
// cannot punch holes it does nothing, which the Discarder contract allows.
func (d *File) Discard(off, length int64) error {
	if err := d.checkWrite("discard", off, length); err != nil || length == 0 {
		return err
	}
	if d.noPunchHole.Load() {
		return nil
	}
	err := d.punchHole(off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil
	}
	return err
}

// WriteZeroes makes the range read as zeros, cheapest way first (man 2
// fallocate): FALLOC_FL_ZERO_RANGE (the blocks stay allocated, as unwritten
// extents); where the filesystem lacks it and mayUnmap allows,
// FALLOC_FL_PUNCH_HOLE; otherwise writing zeros, 1 MiB at a time.
func (d *File) WriteZeroes(off, length int64, mayUnmap bool) error {
	if err := d.checkWrite("write zeroes", off, length); err != nil || length == 0 {
		return err
	}
	if !d.noZeroRange.Load() {
		err := d.fallocateRange("zero range", unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
		d.noZeroRange.Store(true)
	}
	if mayUnmap && !d.noPunchHole.Load() {
		if err := d.punchHole(off, length); !errors.Is(err, unix.EOPNOTSUPP) {
			return err
		}
	}
	zeros := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := d.f.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

func (d *File) punchHole(off, length int64) error {
	err := d.fallocateRange("punch hole", unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if errors.Is(err, unix.EOPNOTSUPP) {
		d.noPunchHole.Store(true)
	}
	return err
}

// fallocateRange runs fallocate(2) with mode on the range. A filesystem or
// device without the mode answers EOPNOTSUPP, which callers check with
// errors.Is.
func (d *File) fallocateRange(what string, mode uint32, off, length int64) error {
	err := d.control(func(fd int) error { return d.fallocate(fd, mode, off, length) })
	if err != nil {
		return fmt.Errorf("fallocate (%s) of %d bytes at %d in %s: %w", what, length, off, d.path, err)
	}
	return nil
}

// control runs fn on the file's descriptor, which stays open meanwhile even
// if Close is called.
func (d *File) control(fn func(fd int) error) error {
	var opErr error
	if err := d.raw.Control(func(fd uintptr) { opErr = fn(int(fd)) }); err != nil {
		return err
	}
	return opErr
}

// checkWrite refuses a write-like request on a read-only disk (EPERM, so
// errors.Is(err, fs.ErrPermission) holds, as for the NBD backend) or
// outside the disk (ENOSPC, as a block device answers a write past its
// end).
//
// UNTRUSTED: off and length come from the guest's virtio-blk requests; the
// comparisons are arranged so that none can overflow.
func (d *File) checkWrite(op string, off, length int64) error {
	if d.readOnly {
		return fmt.Errorf("%s refused: %s is opened read-only: %w", op, d.path, syscall.EPERM)
	}
	if off < 0 || length < 0 || off > d.size || length > d.size-off {
		return fmt.Errorf("%s of %d bytes at %d is outside %s (size %d bytes): %w", op, length, off, d.path, d.size, syscall.ENOSPC)
	}
	return nil
}
