package guest

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"

	"golang.org/x/sys/unix"
)

// The dirtier is the guest side of the live-migration tests: a program that
// writes guest memory as fast as it can while checking that memory still
// holds what it wrote. It follows the guest of QEMU's migration test
// (tests/qtest/migration: a boot sector that increments the first byte of
// every 4 KiB page from 1 MiB to 100 MiB, forever, printing 'B' every 64
// passes), with one difference: QEMU's harness compares the destination's
// memory from outside after the migration, while here the program checks
// itself on every pass, so a lost page shows up on the guest's own console
// as soon as the dirtier reaches it.
//
// Why it finds a lost page: in pass p the dirtier writes p at the start of
// every page, in order, and before writing it checks that the page still
// holds p-1, the value of the previous pass. A migration that failed to
// send a page dirtied in its last rounds leaves the destination with an
// older copy of that page (or zeroes), whose counter is behind; a page
// sent with the wrong contents or to the wrong place holds some other
// value. Either way the check fails the next time the dirtier reaches the
// page, one pass (a fraction of a second) after the guest resumes. The
// dirtier itself continues on the destination exactly where it stopped on
// the source: it is the same process, moved with the memory it is writing.
//
// Run in the guest, where govmm is /init (cmd/govmm exposes it as a hidden
// subcommand):
//
//	/init dirtier --mib 64 --heartbeat 8 &
//
// Output, on out (the serial console):
//
//	dirtier: dirtying 64 MiB (16384 pages of 4 KiB), heartbeat every 8 passes
//	dirtier: pass 8 ok
//	dirtier: pass 16 ok
//	...
//	dirtier: MEMORY MISMATCH page 1234: have 17, want 18

// Exit statuses of Dirtier.
const (
	DirtierOK       = 0 // --passes passes done (or -h)
	DirtierUsage    = 2 // bad flags, or the memory could not be mapped
	DirtierMismatch = 3 // a page did not hold the value of the previous pass
)

// dirtierPage is the stride of the dirtier: x86's base page, the unit of
// KVM's dirty log and of the migration stream (migration.PageSize).
const dirtierPage = 4096

// dirtierMaxMiB bounds --mib to something mmap can be asked for on a
// 64-bit machine without overflow; the guest's RAM is the real limit, and
// mmap or the kernel's OOM killer enforces it.
const dirtierMaxMiB = 1 << 20

// dirtierConfig is Dirtier's flags, validated.
type dirtierConfig struct {
	mib       int    // size of the region in MiB
	passes    uint64 // passes to run; 0 = forever
	heartbeat uint64 // print a heartbeat every this many passes (>= 1)
}

// Dirtier runs the migration-test workload with args being its flags
// (without the subcommand name) and returns its exit status: DirtierOK
// after --passes passes, DirtierUsage for bad flags or a failed mmap,
// DirtierMismatch when memory did not hold what the dirtier wrote. With
// --passes 0 (the default) it returns only on a mismatch.
//
// Flags: --mib N (region size, default 64), --heartbeat K (print
// "dirtier: pass <p> ok" every K passes, default 16), --passes N (stop
// after N passes; 0 = forever).
//
// Lines go to out in single Write calls, flushed at once if out has a
// Flush method: on the serial console a line must appear when it is
// written, not when a buffer fills, or the tests would wait for it in vain.
func Dirtier(args []string, out io.Writer) int {
	cfg, err := parseDirtierFlags(args, out)
	if errors.Is(err, flag.ErrHelp) {
		return DirtierOK
	}
	if err != nil {
		fmt.Fprintf(out, "dirtier: %v\n", err)
		flushOut(out)
		return DirtierUsage
	}

	// MAP_POPULATE faults every page in now (mmap(2)), so that the first
	// pass measures memory, not the kernel's page-fault path, and so that
	// a region the guest cannot hold fails here rather than halfway
	// through the first pass. MAP_PRIVATE|MAP_ANONYMOUS memory starts as
	// zeroes: the value "pass 0" wrote.
	size := cfg.mib << 20
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_POPULATE)
	if err != nil {
		fmt.Fprintf(out, "dirtier: cannot map %d MiB: %v\n", cfg.mib, err)
		flushOut(out)
		return DirtierUsage
	}
	defer unix.Munmap(mem)

	fmt.Fprintf(out, "dirtier: dirtying %d MiB (%d pages of 4 KiB), heartbeat every %d passes\n",
		cfg.mib, size/dirtierPage, cfg.heartbeat)
	flushOut(out)
	return dirty(mem, cfg, out, nil)
}

func parseDirtierFlags(args []string, out io.Writer) (dirtierConfig, error) {
	fs := flag.NewFlagSet("dirtier", flag.ContinueOnError)
	fs.SetOutput(out)
	mib := fs.Int("mib", 64, "size of the memory region to dirty, in MiB")
	heartbeat := fs.Int("heartbeat", 16, `print "dirtier: pass <p> ok" every this many passes`)
	passes := fs.Int("passes", 0, "stop after this many passes (0: run until a mismatch)")
	if err := fs.Parse(args); err != nil {
		return dirtierConfig{}, err
	}
	switch {
	case fs.NArg() > 0:
		return dirtierConfig{}, fmt.Errorf("unexpected argument %q (flags only: --mib, --heartbeat, --passes)", fs.Arg(0))
	case *mib < 1 || *mib > dirtierMaxMiB:
		return dirtierConfig{}, fmt.Errorf("--mib %d: want 1 to %d", *mib, dirtierMaxMiB)
	case *heartbeat < 1:
		return dirtierConfig{}, fmt.Errorf("--heartbeat %d: want at least 1", *heartbeat)
	case *passes < 0:
		return dirtierConfig{}, fmt.Errorf("--passes %d: want 0 (forever) or more", *passes)
	}
	return dirtierConfig{mib: *mib, passes: uint64(*passes), heartbeat: uint64(*heartbeat)}, nil
}

// dirty is the dirtier's loop over mem, a whole number of pages that all
// hold 0 (pass 0). afterPass, when not nil, is called after each complete
// pass with the pass number and mem: the tests' hook to corrupt memory
// the way a faulty migration would, between two passes of a running
// dirtier. Dirtier passes nil.
//
// The loop allocates nothing (the heartbeat line is built in a buffer made
// once), so the garbage collector never runs while memory is dirtied and
// the write rate stays steady: migration's stop rules measure it.
func dirty(mem []byte, cfg dirtierConfig, out io.Writer, afterPass func(pass uint64, mem []byte)) int {
	line := make([]byte, 0, 64)
	for pass := uint64(1); cfg.passes == 0 || pass <= cfg.passes; pass++ {
		want := pass - 1
		for off := 0; off+dirtierPage <= len(mem); off += dirtierPage {
			// The counter is the page's first 8 bytes, little-endian
			// (x86's own order, so these compile to one load and one
			// store). 64 bits never wrap, unlike QEMU's one byte.
			counter := mem[off : off+8]
			if have := binary.LittleEndian.Uint64(counter); have != want {
				fmt.Fprintf(out, "dirtier: MEMORY MISMATCH page %d: have %d, want %d\n", off/dirtierPage, have, want)
				flushOut(out)
				return DirtierMismatch
			}
			binary.LittleEndian.PutUint64(counter, pass)
		}
		if pass%cfg.heartbeat == 0 {
			line = append(line[:0], "dirtier: pass "...)
			line = strconv.AppendUint(line, pass, 10)
			line = append(line, " ok\n"...)
			out.Write(line) // a console that fails cannot be told
			flushOut(out)
		}
		if afterPass != nil {
			afterPass(pass, mem)
		}
	}
	line = append(line[:0], "dirtier: done, "...)
	line = strconv.AppendUint(line, cfg.passes, 10)
	line = append(line, " passes ok\n"...)
	out.Write(line)
	flushOut(out)
	return DirtierOK
}

// flushOut flushes out if it buffers (a *bufio.Writer, say). An *os.File
// does not: each Write is one write(2) to the console.
func flushOut(out io.Writer) {
	if f, ok := out.(interface{ Flush() error }); ok {
		f.Flush()
	}
}
