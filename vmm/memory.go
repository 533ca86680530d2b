package vmm

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// GPA is a guest-physical address: what the guest's page tables translate
// to, and what KVM's memory slots map onto host memory. Keeping it a distinct
// type stops a host offset or a guest-virtual address from being passed where
// a GPA is meant.
type GPA uint64

// PageSize is the x86 base page size, the unit of dirty tracking.
const PageSize = 4096

// MemoryRegion is one contiguous run of guest RAM. A PC has a hole below
// 4 GiB for MMIO (LAPIC, IOAPIC, later PCI BARs), so RAM larger than the
// space below the hole is split into a low and a high region; each region
// becomes one KVM memory slot.
type MemoryRegion struct {
	Start GPA
	Size  uint64

	host []byte // the part of the backing mapping this region uses
}

// End is the first GPA after the region.
func (r MemoryRegion) End() GPA { return r.Start + GPA(r.Size) }

// GuestMemory is the guest's RAM: one anonymous host mapping carved into
// regions. Every access from the VMM goes through Slice/ReadAt/WriteAt, which
// check that the whole range lies inside one region: guest-supplied addresses
// (descriptor tables, buffers) can never make the VMM read or write host memory
// outside guest RAM.
type GuestMemory struct {
	backing []byte
	regions []MemoryRegion

	// The VMM's own dirty log (dirty.go): KVM logs only the guest's
	// writes, so writes the VMM makes are recorded here while tracking.
	tracking atomic.Bool
	vmmDirty [][]atomic.Uint64 // per region, one bit per page
}

// NewGuestMemory maps RAM for the given regions, which must be page-aligned,
// sorted and disjoint. Pages are allocated lazily by the host kernel on first
// touch (MAP_NORESERVE), so a 4 GiB guest costs nothing until it uses memory.
func NewGuestMemory(layout []MemoryRegion) (*GuestMemory, error) {
	var total uint64
	for i, r := range layout {
		if r.Size == 0 || uint64(r.Start)%PageSize != 0 || r.Size%PageSize != 0 {
			return nil, fmt.Errorf("guest memory region %d (%#x+%#x) is not page-aligned", i, r.Start, r.Size)
		}
		if i > 0 && r.Start < layout[i-1].End() {
			return nil, fmt.Errorf("guest memory region %d (%#x) overlaps or precedes region %d", i, r.Start, i-1)
		}
		total += r.Size
	}
	if total == 0 {
		return nil, errors.New("guest memory: no RAM")
	}
	backing, err := unix.Mmap(-1, 0, int(total), unix.PROT_READ|unix.PROT_WRITE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("allocating %d MiB of guest memory: %w", total>>20, err)
	}
	m := &GuestMemory{backing: backing}
	var off uint64
	for _, r := range layout {
		r.host = backing[off : off+r.Size : off+r.Size]
		m.regions = append(m.regions, r)
		off += r.Size
	}
	return m, nil
}

// Close unmaps guest memory. The VM must not run afterwards.
func (m *GuestMemory) Close() error {
	if m.backing == nil {
		return nil
	}
	err := unix.Munmap(m.backing)
	m.backing, m.regions = nil, nil
	return err
}

// Regions lists the RAM regions in GPA order.
func (m *GuestMemory) Regions() []MemoryRegion { return append([]MemoryRegion(nil), m.regions...) }

// Size is the total amount of guest RAM in bytes.
func (m *GuestMemory) Size() uint64 { return uint64(len(m.backing)) }

// Slice returns the host bytes backing [gpa, gpa+n). It fails unless the
// whole range is RAM inside a single region. This is the one bounds check all
// guest-memory access in govmm goes through. Code that writes guest RAM
// through the returned slice must call MarkDirty afterwards, or live
// migration may miss the write (dirty.go).
//
// UNTRUSTED: gpa and n often come from the guest; the checks below are
// written to be overflow-safe for any 64-bit values.
func (m *GuestMemory) Slice(gpa GPA, n uint64) ([]byte, error) {
	for _, r := range m.regions {
		if gpa >= r.Start && gpa < r.End() {
			off := uint64(gpa - r.Start)
			if n > r.Size-off {
				return nil, fmt.Errorf("guest memory access %#x+%#x crosses the end of RAM region %#x-%#x", gpa, n, r.Start, r.End())
			}
			return r.host[off : off+n : off+n], nil
		}
	}
	return nil, fmt.Errorf("guest memory access at %#x: not RAM", uint64(gpa))
}

// ReadAt implements io.ReaderAt with off as a guest-physical address.
func (m *GuestMemory) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("guest memory read at negative address %d", off)
	}
	b, err := m.Slice(GPA(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	return copy(p, b), nil
}

// WriteAt implements io.WriterAt with off as a guest-physical address.
func (m *GuestMemory) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("guest memory write at negative address %d", off)
	}
	b, err := m.Slice(GPA(off), uint64(len(p)))
	if err != nil {
		return 0, err
	}
	n := copy(b, p)
	m.MarkDirty(GPA(off), uint64(n)) // after the copy: see MarkDirty
	return n, nil
}

var (
	_ io.ReaderAt = (*GuestMemory)(nil)
	_ io.WriterAt = (*GuestMemory)(nil)
)
