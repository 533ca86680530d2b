package disk

import "io"

// Disk is a block device's backing store as virtio-blk sees it: a flat
// array of bytes with a size, read and written at byte offsets (always
// multiples of 512 from virtio-blk), made durable by Flush.
//
// Implementations are safe for concurrent use: a virtio-blk device may
// have several requests in flight.
//
// Errors are per request. A backend that loses its server (NBD) fails the
// requests made while it is gone and reconnects on its own; it does not
// become permanently broken.
type Disk interface {
	io.ReaderAt
	io.WriterAt
	// Flush makes every completed write durable (NBD_CMD_FLUSH, fdatasync).
	Flush() error
	// Size is the disk's size in bytes.
	Size() uint64
	// ReadOnly reports whether writes are refused.
	ReadOnly() bool
	// Close releases the backend; in-flight calls may fail.
	Close() error
}

// Discarder is a Disk that can forget a range (NBD_CMD_TRIM, a hole punched
// in a file). Reads of a discarded range return unspecified data.
type Discarder interface {
	Discard(off, length int64) error
}

// ZeroWriter is a Disk that can zero a range without sending zeros
// (NBD_CMD_WRITE_ZEROES, fallocate). mayUnmap allows it to deallocate the
// range as long as it then reads back as zeros.
type ZeroWriter interface {
	WriteZeroes(off, length int64, mayUnmap bool) error
}
