package vmm

import (
	"bytes"
	"math"
	"testing"
)

func newTestMemory(t *testing.T, layout ...MemoryRegion) *GuestMemory {
	t.Helper()
	m, err := NewGuestMemory(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestGuestMemoryRegionsAreSeparate(t *testing.T) {
	m := newTestMemory(t, MemoryRegion{Start: 0, Size: 2 * PageSize}, MemoryRegion{Start: 0x10000, Size: PageSize})
	if m.Size() != 3*PageSize {
		t.Fatalf("Size = %d", m.Size())
	}
	if _, err := m.WriteAt([]byte("low"), 0x1ffd); err != nil {
		t.Fatal(err)
	}
	if _, err := m.WriteAt([]byte("high"), 0x10000); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, 4)
	m.ReadAt(got[:3], 0x1ffd)
	if string(got[:3]) != "low" {
		t.Fatalf("low region read %q", got[:3])
	}
	m.ReadAt(got, 0x10000)
	if string(got) != "high" {
		t.Fatalf("high region read %q", got)
	}
	// The high region's bytes follow the low region's in the backing
	// mapping; a read must not leak across.
	b, _ := m.Slice(0x1000, PageSize)
	if bytes.Contains(b, []byte("high")) {
		t.Fatal("regions overlap in the backing mapping")
	}
}

func TestGuestMemoryRejectsOutOfRange(t *testing.T) {
	m := newTestMemory(t, MemoryRegion{Start: 0, Size: 2 * PageSize}, MemoryRegion{Start: 0x10000, Size: PageSize})
	for _, c := range []struct {
		gpa GPA
		n   uint64
	}{
		{2 * PageSize, 1},        // in the hole
		{2*PageSize - 1, 2},      // crosses the end of region 0
		{0x10000, PageSize + 1},  // crosses the end of region 1
		{0x1000, math.MaxUint64}, // length overflow
		{math.MaxUint64, 1},      // address overflow
		{0xffff, 2},              // starts in the hole, ends in RAM
	} {
		if _, err := m.Slice(c.gpa, c.n); err == nil {
			t.Errorf("Slice(%#x, %#x) succeeded", c.gpa, c.n)
		}
	}
	if _, err := m.ReadAt(make([]byte, 1), -1); err == nil {
		t.Error("ReadAt at negative offset succeeded")
	}
	if b, err := m.Slice(PageSize, PageSize); err != nil || len(b) != PageSize || cap(b) != PageSize {
		t.Errorf("Slice of the last page: len %d cap %d err %v", len(b), cap(b), err)
	}
}

func TestGuestMemoryLayoutChecks(t *testing.T) {
	for _, layout := range [][]MemoryRegion{
		{},
		{{Start: 1, Size: PageSize}},
		{{Start: 0, Size: 100}},
		{{Start: 0x2000, Size: PageSize}, {Start: 0x1000, Size: PageSize}},
		{{Start: 0, Size: 2 * PageSize}, {Start: PageSize, Size: PageSize}},
	} {
		if m, err := NewGuestMemory(layout); err == nil {
			m.Close()
			t.Errorf("layout %+v accepted", layout)
		}
	}
}
