package guest

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"
	"testing"
)

// TestDirtierPasses runs the real entry point (flags, mmap) for a few
// passes and checks every line it prints.
func TestDirtierPasses(t *testing.T) {
	var out bytes.Buffer
	if status := Dirtier([]string{"--mib", "2", "--heartbeat", "8", "--passes", "20"}, &out); status != DirtierOK {
		t.Fatalf("status %d, want %d; output:\n%s", status, DirtierOK, out.String())
	}
	want := "dirtier: dirtying 2 MiB (512 pages of 4 KiB), heartbeat every 8 passes\n" +
		"dirtier: pass 8 ok\n" +
		"dirtier: pass 16 ok\n" +
		"dirtier: done, 20 passes ok\n"
	if out.String() != want {
		t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

// TestDirtierWritesEveryPage checks what the loop leaves in memory: after
// n passes every page's counter is n, and the rest of each page is
// untouched.
func TestDirtierWritesEveryPage(t *testing.T) {
	mem := make([]byte, 64*dirtierPage)
	if status := dirty(mem, dirtierConfig{passes: 7, heartbeat: 100}, io.Discard, nil); status != DirtierOK {
		t.Fatalf("status %d", status)
	}
	for page := range len(mem) / dirtierPage {
		p := mem[page*dirtierPage : (page+1)*dirtierPage]
		if got := binary.LittleEndian.Uint64(p); got != 7 {
			t.Fatalf("page %d counter = %d, want 7", page, got)
		}
		if !bytes.Equal(p[8:], make([]byte, dirtierPage-8)) {
			t.Fatalf("page %d: bytes after the counter were written", page)
		}
	}
}

// TestDirtierDetectsCorruption corrupts one page between two passes, as a
// migration that lost or misplaced a page would, and expects the dirtier
// to stop at that page with the mismatch line and status 3.
func TestDirtierDetectsCorruption(t *testing.T) {
	const pages = 256
	for _, tc := range []struct {
		name  string
		page  int
		value func(pass uint64) uint64 // what the corrupted page holds after pass
		have  uint64
	}{
		// The destination kept the copy of an earlier round: the
		// counter is one behind (the dirty page was never resent).
		{"lost write", 100, func(p uint64) uint64 { return p - 1 }, 4},
		// The page never arrived at all: zeroes.
		{"page never sent", pages - 1, func(uint64) uint64 { return 0 }, 0},
		// Another page's contents landed here, or a stray write.
		{"wrong contents", 0, func(uint64) uint64 { return 0xdeadbeef }, 0xdeadbeef},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mem := make([]byte, pages*dirtierPage)
			var out bytes.Buffer
			hookCalls := 0
			corrupt := func(pass uint64, mem []byte) {
				hookCalls++
				if pass == 5 {
					binary.LittleEndian.PutUint64(mem[tc.page*dirtierPage:], tc.value(pass))
				}
			}
			status := dirty(mem, dirtierConfig{passes: 50, heartbeat: 2}, &out, corrupt)
			if status != DirtierMismatch {
				t.Fatalf("status %d, want %d; output:\n%s", status, DirtierMismatch, out.String())
			}
			if hookCalls != 5 {
				t.Errorf("the hook ran after %d passes, want 5: the dirtier must stop in pass 6", hookCalls)
			}
			want := "dirtier: pass 2 ok\ndirtier: pass 4 ok\n" +
				fmt.Sprintf("dirtier: MEMORY MISMATCH page %d: have %d, want 5\n", tc.page, tc.have)
			if out.String() != want {
				t.Errorf("output:\n%s\nwant:\n%s", out.String(), want)
			}
			// Pass 6 had written every page before the bad one, and
			// none after it.
			for page := range pages {
				got := binary.LittleEndian.Uint64(mem[page*dirtierPage:])
				switch {
				case page < tc.page && got != 6, page > tc.page && got != 5:
					t.Fatalf("page %d counter = %d after stopping at page %d", page, got, tc.page)
				}
			}
		})
	}
}

// TestDirtierFlushes: with a buffered writer every line is flushed as it
// is written, as the serial console needs.
func TestDirtierFlushes(t *testing.T) {
	var sink bytes.Buffer
	w := bufio.NewWriterSize(&sink, 4096)
	mem := make([]byte, 4*dirtierPage)
	dirty(mem, dirtierConfig{passes: 3, heartbeat: 1}, w, func(pass uint64, _ []byte) {
		if want := fmt.Sprintf("dirtier: pass %d ok\n", pass); !strings.HasSuffix(sink.String(), want) {
			t.Errorf("after pass %d the writer holds %q, want it to end with %q", pass, sink.String(), want)
		}
	})
	if w.Buffered() != 0 {
		t.Errorf("%d bytes left unflushed", w.Buffered())
	}
}

// TestDirtierLoopDoesNotAllocate: allocations do not grow with the number
// of passes or heartbeats (a garbage collection in the loop would make the
// dirty rate uneven).
func TestDirtierLoopDoesNotAllocate(t *testing.T) {
	mem := make([]byte, 16*dirtierPage)
	allocs := func(passes uint64) float64 {
		clear(mem)
		return testing.AllocsPerRun(1, func() {
			clear(mem)
			dirty(mem, dirtierConfig{passes: passes, heartbeat: 1 << 40}, io.Discard, nil)
		})
	}
	few, many := allocs(2), allocs(500)
	if many != few {
		t.Errorf("%v allocations for 2 passes, %v for 500: the loop allocates", few, many)
	}
}

func TestDirtierBadFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--mib", "0"}, "--mib 0"},
		{[]string{"--heartbeat", "0"}, "--heartbeat 0"},
		{[]string{"--passes", "-1"}, "--passes -1"},
		{[]string{"--nope"}, "nope"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		var out bytes.Buffer
		if status := Dirtier(tc.args, &out); status != DirtierUsage {
			t.Errorf("Dirtier(%q) = %d, want %d", tc.args, status, DirtierUsage)
		}
		if !strings.Contains(out.String(), tc.want) {
			t.Errorf("Dirtier(%q) printed %q, want a mention of %q", tc.args, out.String(), tc.want)
		}
	}
}

// BenchmarkDirtierPass measures one pass over 64 MiB, the size the
// migration scenarios use (tests/linux).
func BenchmarkDirtierPass(b *testing.B) {
	mem := make([]byte, 64<<20)
	b.ResetTimer()
	dirty(mem, dirtierConfig{passes: uint64(b.N), heartbeat: 1 << 62}, io.Discard, nil)
	// It writes 8 bytes per page, so bytes/s would mislead: count pages.
	b.ReportMetric(float64(b.N)*float64(len(mem)/dirtierPage)/b.Elapsed().Seconds(), "pages/s")
}
