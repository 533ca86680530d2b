package vmm_test

import (
	"slices"
	"testing"

	"govmm/vmm"
	"govmm/vmm/testguest"
)

// highRegion is a second RAM region, so that DirtyLog's per-slot handling
// is exercised; the guest never maps it, only the VMM writes it.
var dirtyLayout = []vmm.MemoryRegion{
	{Start: 0, Size: testguest.MinRAM},
	{Start: 0x1000000, Size: 16 * vmm.PageSize},
}

// dirtySet flattens DirtyLog's bitmaps into a sorted list of pages.
func dirtySet(t *testing.T, vm *vmm.VM) []vmm.GPA {
	t.Helper()
	bitmaps, err := vm.DirtyLog()
	if err != nil {
		t.Fatal(err)
	}
	if len(bitmaps) != len(dirtyLayout) {
		t.Fatalf("DirtyLog returned %d bitmaps for %d regions", len(bitmaps), len(dirtyLayout))
	}
	var out []vmm.GPA
	for i, b := range bitmaps {
		if b.Start != dirtyLayout[i].Start || b.Pages != dirtyLayout[i].Size/vmm.PageSize {
			t.Fatalf("bitmap %d covers %#x+%d pages, want region %+v", i, b.Start, b.Pages, dirtyLayout[i])
		}
		if b.Count() != len(b.GPAs()) {
			t.Fatalf("bitmap %d: Count %d but %d GPAs", i, b.Count(), len(b.GPAs()))
		}
		out = append(out, b.GPAs()...)
	}
	return out
}

// peekSet flattens PeekDirtyLog's bitmaps; it checks that only manual
// mode can peek, and returns nil in plain mode.
func peekSet(t *testing.T, vm *vmm.VM, manual bool) []vmm.GPA {
	t.Helper()
	bitmaps, ok, err := vm.PeekDirtyLog()
	if err != nil {
		t.Fatal(err)
	}
	if ok != manual {
		t.Fatalf("PeekDirtyLog ok = %v with manual-protect mode %v", ok, manual)
	}
	var out []vmm.GPA
	for _, b := range bitmaps {
		out = append(out, b.GPAs()...)
	}
	return out
}

func wantDirty(t *testing.T, what string, got []vmm.GPA, want ...vmm.GPA) {
	t.Helper()
	slices.Sort(want)
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		t.Errorf("%s: dirty pages %#x, want exactly %#x", what, got, want)
	}
}

func dataPage(i int) vmm.GPA { return testguest.DataStart + vmm.GPA(i)*vmm.PageSize }

// The dirty log must report exactly the pages written since the previous
// call: the guest's writes (logged by KVM) and the VMM's own (logged by
// GuestMemory), and nothing else; VMM writes made while tracking is off
// must not appear.
func TestDirtyLogReportsExactlyThePagesWritten(t *testing.T) {
	t.Run("manual-protect", func(t *testing.T) { testDirtyLog(t, true) })
	t.Run("plain", func(t *testing.T) { testDirtyLog(t, false) })
}

func testDirtyLog(t *testing.T, manual bool) {
	g := newGuestVM(t, dirtyLayout, testguest.Writer, true)
	vm, mem := g.vm, g.vm.Memory
	if !manual {
		vmm.UsePlainDirtyLog(vm)
	}
	if _, err := vm.DirtyLog(); err == nil {
		t.Fatal("DirtyLog before StartDirtyLog succeeded")
	}
	if err := vm.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if err := vm.StartDirtyLog(); err == nil {
		t.Fatal("second StartDirtyLog succeeded")
	}
	if !vm.DirtyLogging() {
		t.Fatal("DirtyLogging false after StartDirtyLog")
	}
	if got := vmm.ManualDirtyLog(vm); got != manual {
		if manual {
			t.Skip("KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2")
		}
		t.Fatalf("manual dirty-log protection is %v, want %v", got, manual)
	}
	wantDirty(t, "right after StartDirtyLog", dirtySet(t, vm))

	g.start()
	// Round 1: the guest writes three pages, among them the first and
	// last of the data area. PostRound writes the mailbox through
	// WriteAt, so the mailbox page is dirty too, in the VMM's log.
	round1 := []vmm.GPA{dataPage(0), dataPage(5), dataPage(testguest.DataPages - 1)}
	if err := testguest.PostRound(mem, 1, round1); err != nil {
		t.Fatal(err)
	}
	g.waitBell(t, 1)
	// A peek sees the round's pages and clears nothing: a second peek,
	// and then the harvest, see them again.
	if manual {
		wantDirty(t, "peek in round 1", peekSet(t, vm, manual), append(round1, testguest.Mailbox)...)
		wantDirty(t, "second peek in round 1", peekSet(t, vm, manual), append(round1, testguest.Mailbox)...)
	} else {
		peekSet(t, vm, manual)
	}
	wantDirty(t, "round 1", dirtySet(t, vm), append(round1, testguest.Mailbox)...)
	if manual {
		wantDirty(t, "peek after the harvest", peekSet(t, vm, manual))
	}
	for _, p := range round1 {
		if v := page(t, mem, p); v != 1 {
			t.Errorf("page %#x holds %d after round 1, want 1", p, v)
		}
	}

	// The guest now only polls the mailbox (reads): nothing is dirty.
	wantDirty(t, "while the guest only reads", dirtySet(t, vm))

	// VMM writes: WriteAt across a page boundary in the second region,
	// and MarkDirty for a write made through Slice.
	if _, err := mem.WriteAt([]byte{1, 2, 3, 4}, 0x1000000+3*vmm.PageSize-2); err != nil {
		t.Fatal(err)
	}
	b, err := mem.Slice(dataPage(100), 8)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 0xaa
	mem.MarkDirty(dataPage(100), 8)
	// Out-of-range marks are ignored or clamped to the region.
	mem.MarkDirty(0xdead0000, 1)                    // not RAM
	mem.MarkDirty(0x1000000+15*vmm.PageSize, 1<<62) // past the region's end: its last page
	mem.MarkDirty(^vmm.GPA(0), 1<<63)               // overflow-prone values
	mem.MarkDirty(dataPage(50), 0)                  // empty
	vmmWrites := []vmm.GPA{dataPage(100), 0x1000000 + 2*vmm.PageSize, 0x1000000 + 3*vmm.PageSize, 0x1000000 + 15*vmm.PageSize}
	if manual {
		wantDirty(t, "peek at VMM writes", peekSet(t, vm, manual), vmmWrites...)
	}
	wantDirty(t, "VMM writes", dirtySet(t, vm), vmmWrites...)

	// Round 2 rewrites a page of round 1 and two new ones: pages are
	// reported again once re-dirtied.
	round2 := []vmm.GPA{dataPage(5), dataPage(6), dataPage(200)}
	if err := testguest.PostRound(mem, 2, round2); err != nil {
		t.Fatal(err)
	}
	g.waitBell(t, 2)
	wantDirty(t, "round 2", dirtySet(t, vm), append(round2, testguest.Mailbox)...)

	// Off: VMM writes are no longer recorded, and turning tracking on
	// again starts from a clean log.
	if err := vm.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
	if vm.DirtyLogging() {
		t.Fatal("DirtyLogging true after StopDirtyLog")
	}
	if _, err := vm.DirtyLog(); err == nil {
		t.Fatal("DirtyLog after StopDirtyLog succeeded")
	}
	if _, err := mem.WriteAt([]byte{9}, int64(dataPage(7))); err != nil {
		t.Fatal(err)
	}
	round3 := []vmm.GPA{dataPage(8)}
	if err := testguest.PostRound(mem, 3, round3); err != nil {
		t.Fatal(err)
	}
	g.waitBell(t, 3)
	if err := vm.StartDirtyLog(); err != nil {
		t.Fatal(err)
	}
	wantDirty(t, "after restarting the log", dirtySet(t, vm))
	round4 := []vmm.GPA{dataPage(9)}
	if err := testguest.PostRound(mem, 4, round4); err != nil {
		t.Fatal(err)
	}
	g.waitBell(t, 4)
	wantDirty(t, "round 4", dirtySet(t, vm), append(round4, testguest.Mailbox)...)
	if err := vm.StopDirtyLog(); err != nil {
		t.Fatal(err)
	}
}

func TestDirtyBitmapAccessors(t *testing.T) {
	b := vmm.DirtyBitmap{Start: 0x100000, Pages: 130, Bits: []uint64{1 | 1<<63, 0, 1 << 1}}
	want := []vmm.GPA{0x100000, 0x100000 + 63*vmm.PageSize, 0x100000 + 129*vmm.PageSize}
	if got := b.GPAs(); !slices.Equal(got, want) {
		t.Errorf("GPAs %#x, want %#x", got, want)
	}
	if b.Count() != 3 {
		t.Errorf("Count %d, want 3", b.Count())
	}
	for _, c := range []struct {
		gpa  vmm.GPA
		want bool
	}{{0x100000, true}, {0x100fff, true}, {0x101000, false}, {0xff000, false},
		{0x100000 + 129*vmm.PageSize, true}, {0x100000 + 130*vmm.PageSize, false}} {
		if b.IsDirty(c.gpa) != c.want {
			t.Errorf("IsDirty(%#x) = %v, want %v", c.gpa, !c.want, c.want)
		}
	}
}
