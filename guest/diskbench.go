package guest

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// DiskBench is the disk benchmark that runs inside a guest (`/init
// diskbench /dev/vda`): the same program under govmm and under QEMU, so
// their virtio-blk devices are compared on equal terms. It bypasses the
// guest's page cache with O_DIRECT, so every byte crosses the virtio queue
// and reaches the backend:
//
//   - sequential write: --mib MiB in 1 MiB writes, then fdatasync
//     (a virtio-blk FLUSH), timed together;
//   - sequential read of the same range in 1 MiB reads;
//   - random 4 KiB reads at aligned offsets in that range, one at a time
//     (queue depth 1, so IOPS is the inverse of a request's round trip),
//     for --seconds.
//
// It prints one line a harness can parse:
//
//	diskbench: seq-write=210.3 MB/s seq-read=450.0 MB/s randread-4k=5300 IOPS
//
// and returns the exit status. The disk's first --mib MiB are overwritten.
func DiskBench(args []string, out io.Writer) int {
	fs := flag.NewFlagSet("diskbench", flag.ContinueOnError)
	fs.SetOutput(out)
	mib := fs.Int("mib", 64, "MiB to write and read")
	seconds := fs.Int("seconds", 5, "duration of the random-read test")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() != 1 || *mib < 1 || *seconds < 1 {
		fmt.Fprintln(out, "usage: diskbench [--mib N] [--seconds S] DEVICE")
		return 2
	}
	r, err := diskBench(fs.Arg(0), *mib, time.Duration(*seconds)*time.Second)
	if err != nil {
		fmt.Fprintf(out, "diskbench: %v\n", err)
		return 1
	}
	fmt.Fprintf(out, "diskbench: seq-write=%.1f MB/s seq-read=%.1f MB/s randread-4k=%.0f IOPS\n",
		r.seqWriteMBps, r.seqReadMBps, r.randReadIOPS)
	return 0
}

type diskBenchResult struct{ seqWriteMBps, seqReadMBps, randReadIOPS float64 }

const (
	benchBlock     = 1 << 20
	benchSmallRead = 4096
)

func diskBench(dev string, mib int, randFor time.Duration) (diskBenchResult, error) {
	var r diskBenchResult
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		return r, err
	}
	defer f.Close()
	// O_DIRECT wants buffers aligned to the logical block size; an
	// anonymous mapping is page-aligned.
	buf, err := unix.Mmap(-1, 0, benchBlock, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return r, err
	}
	defer unix.Munmap(buf)
	for i := range buf {
		buf[i] = byte(i*7 + 1) // not zero: a backend must really store it
	}
	size := int64(mib) * benchBlock
	mbps := func(d time.Duration) float64 { return float64(size) / 1e6 / d.Seconds() }

	start := time.Now()
	for off := int64(0); off < size; off += benchBlock {
		if _, err := f.WriteAt(buf, off); err != nil {
			return r, fmt.Errorf("sequential write at %d: %w", off, err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return r, fmt.Errorf("fdatasync: %w", err)
	}
	r.seqWriteMBps = mbps(time.Since(start))

	start = time.Now()
	for off := int64(0); off < size; off += benchBlock {
		if _, err := f.ReadAt(buf, off); err != nil && !errors.Is(err, io.EOF) {
			return r, fmt.Errorf("sequential read at %d: %w", off, err)
		}
	}
	r.seqReadMBps = mbps(time.Since(start))

	blocks := size / benchSmallRead
	n := 0
	start = time.Now()
	for time.Since(start) < randFor {
		off := rand.Int64N(blocks) * benchSmallRead
		if _, err := f.ReadAt(buf[:benchSmallRead], off); err != nil {
			return r, fmt.Errorf("random read at %d: %w", off, err)
		}
		n++
	}
	r.randReadIOPS = float64(n) / time.Since(start).Seconds()
	return r, nil
}
