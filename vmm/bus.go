package vmm

import (
	"fmt"
	"sort"
	"sync"
)

// Device is anything that answers reads and writes on a bus: a UART on the
// port-I/O bus, a register block on the MMIO bus. The bus hands the device an
// offset relative to the base it was registered at, so a device never needs
// to know where the machine placed it (kvmtool's exit → bus → device).
//
// data is the guest's access: 1, 2, 4 or 8 bytes, little-endian. Read fills
// it; Write consumes it. Both are called on the vCPU thread that exited, so a
// device shared with other goroutines (an input reader, a backend) protects
// its own state. offset and len(data) are guest-controlled: the bus only
// guarantees offset < the registered size.
type Device interface {
	Read(offset uint64, data []byte)
	Write(offset uint64, data []byte)
}

// Bus routes guest accesses in an address space (I/O ports or guest-physical
// MMIO) to the device registered for that range.
type Bus struct {
	name string

	mu     sync.RWMutex
	ranges []busRange // sorted by base, never overlapping
	trace  Tracer
}

// Tracer sees every access on a bus after it is served: the device name
// ("" when no device claimed it), the address, the data and the direction.
// `govmm run --trace-io` prints them, which is the quickest way to watch a
// guest probe its hardware.
type Tracer func(bus, device string, addr uint64, data []byte, write bool)

// SetTracer installs t (nil removes it).
func (b *Bus) SetTracer(t Tracer) {
	b.mu.Lock()
	b.trace = t
	b.mu.Unlock()
}

type busRange struct {
	base, size uint64
	name       string
	dev        Device
}

// NewBus returns an empty bus; name ("pio", "mmio") appears in errors.
func NewBus(name string) *Bus { return &Bus{name: name} }

// Register places dev at [base, base+size). Overlapping another device is a
// programming error in the machine description, reported rather than
// silently shadowing the other device.
func (b *Bus) Register(base, size uint64, name string, dev Device) error {
	if size == 0 || base+size < base {
		return fmt.Errorf("%s bus: %s: bad range %#x+%#x", b.name, name, base, size)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, r := range b.ranges {
		if base < r.base+r.size && r.base < base+size {
			return fmt.Errorf("%s bus: %s at %#x+%#x overlaps %s at %#x+%#x",
				b.name, name, base, size, r.name, r.base, r.size)
		}
	}
	b.ranges = append(b.ranges, busRange{base, size, name, dev})
	sort.Slice(b.ranges, func(i, j int) bool { return b.ranges[i].base < b.ranges[j].base })
	return nil
}

// find returns the range holding addr, and the tracer.
func (b *Bus) find(addr uint64) (busRange, bool, Tracer) {
	b.mu.RLock()
	defer b.mu.RUnlock()
	i := sort.Search(len(b.ranges), func(i int) bool { return b.ranges[i].base+b.ranges[i].size > addr })
	if i < len(b.ranges) && b.ranges[i].base <= addr {
		return b.ranges[i], true, b.trace
	}
	return busRange{}, false, b.trace
}

// Read dispatches a guest read. An access that hits no device reads as all
// ones, as an unclaimed ISA/PCI cycle does on real hardware (Linux probes many
// legacy ports and expects exactly that); it reports false so the caller can
// trace it.
func (b *Bus) Read(addr uint64, data []byte) bool {
	r, ok, trace := b.find(addr)
	if ok {
		r.dev.Read(addr-r.base, data)
	} else {
		for i := range data {
			data[i] = 0xff
		}
	}
	if trace != nil {
		trace(b.name, r.name, addr, data, false)
	}
	return ok
}

// Write dispatches a guest write; an unclaimed write is dropped and reports
// false.
func (b *Bus) Write(addr uint64, data []byte) bool {
	r, ok, trace := b.find(addr)
	if ok {
		r.dev.Write(addr-r.base, data)
	}
	if trace != nil {
		trace(b.name, r.name, addr, data, true)
	}
	return ok
}

// Devices lists what is registered, for `govmm` diagnostics and tests.
func (b *Bus) Devices() []string {
	b.mu.RLock()
	defer b.mu.RUnlock()
	out := make([]string, 0, len(b.ranges))
	for _, r := range b.ranges {
		out = append(out, fmt.Sprintf("%#06x-%#06x %s", r.base, r.base+r.size-1, r.name))
	}
	return out
}
