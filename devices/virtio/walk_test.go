package virtio

import (
	"encoding/binary"
	"encoding/json"
	"strings"
	"testing"

	"govmm/vmm"
)

// The tests in this file drive a Queue directly, without goroutines: they
// write rings into fake guest memory, Pop, and look at the Chain.

// Guest RAM for these tests: two adjacent regions (a buffer crossing from
// one into the other is refused, although the host mappings happen to be
// contiguous), then a hole, then a third region.
var rigLayout = []vmm.MemoryRegion{
	{Start: 0, Size: 0x10000},
	{Start: 0x10000, Size: 0x10000},
	{Start: 0x40000, Size: 0x1000},
}

const (
	rigSize  = 8       // queue size
	rigDesc  = 0x0000  // descriptor table
	rigAvail = 0x1000  // avail ring
	rigUsed  = 0x2000  // used ring
	rigTable = 0x3000  // room for indirect tables
	rigBufs  = 0x4000  // buffers
	rigHole  = 0x30000 // not RAM
)

// nullDevice is the least a Device can be; these tests pop by hand.
type nullDevice struct{ sizes []uint16 }

func (d nullDevice) Type() DeviceType                    { return 99 }
func (d nullDevice) Features() uint64                    { return 0 }
func (d nullDevice) QueueMaxSizes() []uint16             { return d.sizes }
func (d nullDevice) Config() []byte                      { return nil }
func (d nullDevice) WriteConfig(uint64, []byte)          {}
func (d nullDevice) Activate(uint64, []*Queue) error     { return nil }
func (d nullDevice) Reset()                              {}
func (d nullDevice) SaveState() (json.RawMessage, error) { return json.RawMessage("null"), nil }
func (d nullDevice) RestoreState(json.RawMessage) error  { return nil }

type rig struct {
	t          testing.TB
	mem        *vmm.GuestMemory
	m          *MMIO
	q          *Queue
	interrupts int
	availIdx   uint16
}

func newRig(t testing.TB, layout []vmm.MemoryRegion, features uint64) *rig {
	mem, err := vmm.NewGuestMemory(layout)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mem.Close() })
	r := &rig{t: t, mem: mem}
	r.m = NewMMIO(nullDevice{[]uint16{rigSize}}, MMIOConfig{Memory: mem, Interrupt: func() { r.interrupts++ }})
	r.q, err = newQueue(r.m, 0, ringLayout{rigSize, rigDesc, rigAvail, rigUsed}, rigSize, features|FeatureVersion1)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (r *rig) poke(gpa vmm.GPA, b []byte) {
	s, err := r.mem.Slice(gpa, uint64(len(b)))
	if err != nil {
		r.t.Fatal(err)
	}
	copy(s, b)
}

func (r *rig) peek16(gpa vmm.GPA) uint16 {
	s, err := r.mem.Slice(gpa, 2)
	if err != nil {
		r.t.Fatal(err)
	}
	return binary.LittleEndian.Uint16(s)
}

// desc writes entry i of the table at table.
func (r *rig) desc(table vmm.GPA, i uint16, addr uint64, n uint32, flags, next uint16) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[0:], addr)
	binary.LittleEndian.PutUint32(b[8:], n)
	binary.LittleEndian.PutUint16(b[12:], flags)
	binary.LittleEndian.PutUint16(b[14:], next)
	r.poke(table+16*vmm.GPA(i), b[:])
}

// publish makes head available and returns what Pop then gives.
func (r *rig) publish(head uint16) {
	r.poke(rigAvail+4+2*vmm.GPA(r.availIdx%rigSize), binary.LittleEndian.AppendUint16(nil, head))
	r.availIdx++
	r.poke(rigAvail+2, binary.LittleEndian.AppendUint16(nil, r.availIdx))
}

const (
	fNext  = descFlagNext
	fWrite = descFlagWrite
	fInd   = descFlagIndirect
)

// TestChainChecks feeds walk.go every kind of chain a guest can write and
// checks what the device gets: the buffers of a good chain, and for a bad
// one an error and at most the last writable buffer (for a status byte).
func TestChainChecks(t *testing.T) {
	const b = rigBufs
	cases := []struct {
		name     string
		indirect bool // negotiate VIRTIO_F_INDIRECT_DESC
		build    func(r *rig) uint16
		wantErr  string // "" for a good chain
		wantR    int64  // readable bytes the device sees
		wantW    int64  // writable bytes the device sees
	}{
		{"header data status", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fNext, 5)
			r.desc(rigDesc, 5, b+0x100, 512, fNext|fWrite, 2)
			r.desc(rigDesc, 2, b+0x400, 1, fWrite, 0)
			return 0
		}, "", 16, 513},
		{"single readable", false, func(r *rig) uint16 {
			r.desc(rigDesc, 3, b, 100, 0, 0)
			return 3
		}, "", 100, 0},
		{"chain as long as the queue", false, func(r *rig) uint16 {
			for i := uint16(0); i < rigSize; i++ {
				r.desc(rigDesc, i, b+uint64(i)*16, 16, fNext, i+1)
			}
			r.desc(rigDesc, rigSize-1, b, 16, 0, 0)
			return 0
		}, "", 16 * rigSize, 0},
		{"loop", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fNext, 1)
			r.desc(rigDesc, 1, b, 16, fNext, 0)
			return 0
		}, "longer than the queue size", 0, 0},
		{"self loop", false, func(r *rig) uint16 {
			r.desc(rigDesc, 4, b, 16, fNext|fWrite, 4)
			return 4
		}, "longer than the queue size", 0, 0},
		{"next out of range", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fNext, rigSize)
			return 0
		}, "out of range", 0, 0},
		{"readable after writable", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fWrite|fNext, 1)
			r.desc(rigDesc, 1, b+16, 16, 0, 0)
			return 0
		}, "readable buffer after a device-writable", 0, 0},
		{"readable after writable, status kept", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fWrite|fNext, 1)
			r.desc(rigDesc, 1, b+16, 16, fNext, 2)
			r.desc(rigDesc, 2, b+32, 1, fWrite, 0)
			return 0
		}, "readable buffer after a device-writable", 0, 1},
		{"buffer in a hole", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fNext, 1)
			r.desc(rigDesc, 1, rigHole, 512, fWrite|fNext, 2)
			r.desc(rigDesc, 2, b+16, 1, fWrite, 0)
			return 0
		}, "not RAM", 0, 1},
		{"buffer past the end of RAM", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, 0x40000+0xf00, 0x200, 0, 0)
			return 0
		}, "crosses the end", 0, 0},
		{"buffer crossing into the next region", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, 0x10000-8, 16, fWrite, 0)
			return 0
		}, "crosses the end", 0, 0},
		{"buffer address wraps around", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, 0xffff_ffff_ffff_fff0, 0x20, 0, 0)
			return 0
		}, "not RAM", 0, 0},
		{"status byte outside RAM", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, rigHole, 16, fNext, 1)
			r.desc(rigDesc, 1, rigHole, 1, fWrite, 0)
			return 0
		}, "not RAM", 0, 0},
		{"zero-length buffer", false, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 0, 0, 0)
			return 0
		}, "zero-length", 0, 0},
		{"indirect", true, func(r *rig) uint16 {
			r.desc(rigTable, 0, b, 16, fNext, 2)
			r.desc(rigTable, 2, b+0x100, 512, fWrite|fNext, 1)
			r.desc(rigTable, 1, b+0x400, 1, fWrite, 0)
			r.desc(rigDesc, 6, rigTable, 48, fInd|fWrite, 0) // WRITE is ignored here
			return 6
		}, "", 16, 513},
		{"direct descriptors, then indirect", true, func(r *rig) uint16 {
			r.desc(rigDesc, 0, b, 16, fNext, 1)
			r.desc(rigDesc, 1, rigTable, 32, fInd, 0)
			r.desc(rigTable, 0, b+0x100, 512, fWrite|fNext, 1)
			r.desc(rigTable, 1, b+0x400, 1, fWrite, 0)
			return 0
		}, "", 16, 513},
		{"indirect not negotiated", false, func(r *rig) uint16 {
			r.desc(rigTable, 0, b, 16, 0, 0)
			r.desc(rigDesc, 0, rigTable, 16, fInd, 0)
			return 0
		}, "not negotiated", 0, 0},
		{"nested indirect", true, func(r *rig) uint16 {
			r.desc(rigTable, 0, rigTable+0x100, 16, fInd, 0)
			r.desc(rigDesc, 0, rigTable, 16, fInd, 0)
			return 0
		}, "inside an indirect table", 0, 0},
		{"indirect with next", true, func(r *rig) uint16 {
			r.desc(rigTable, 0, b, 16, 0, 0)
			r.desc(rigDesc, 0, rigTable, 16, fInd|fNext, 1)
			r.desc(rigDesc, 1, b, 1, fWrite, 0)
			return 0
		}, "both INDIRECT and NEXT", 0, 0},
		{"indirect table length not a multiple of 16", true, func(r *rig) uint16 {
			r.desc(rigDesc, 0, rigTable, 24, fInd, 0)
			return 0
		}, "multiple of 16", 0, 0},
		{"empty indirect table", true, func(r *rig) uint16 {
			r.desc(rigDesc, 0, rigTable, 0, fInd, 0)
			return 0
		}, "multiple of 16", 0, 0},
		{"indirect table longer than the queue", true, func(r *rig) uint16 {
			r.desc(rigDesc, 0, rigTable, 16*(rigSize+1), fInd, 0)
			return 0
		}, "longer than the queue size", 0, 0},
		{"indirect table outside RAM", true, func(r *rig) uint16 {
			r.desc(rigDesc, 0, rigHole, 32, fInd, 0)
			return 0
		}, "indirect table", 0, 0},
		{"indirect next out of range", true, func(r *rig) uint16 {
			r.desc(rigTable, 0, b, 16, fNext, 2) // the table has 2 entries
			r.desc(rigDesc, 0, rigTable, 32, fInd, 0)
			return 0
		}, "out of range (table has 2)", 0, 0},
		{"indirect loop", true, func(r *rig) uint16 {
			r.desc(rigTable, 0, b, 16, fNext, 1)
			r.desc(rigTable, 1, b, 16, fNext, 0)
			r.desc(rigDesc, 0, rigTable, 32, fInd, 0)
			return 0
		}, "longer than the queue size", 0, 0},
		{"indirect and direct together too long", true, func(r *rig) uint16 {
			for i := uint16(0); i < rigSize; i++ {
				r.desc(rigTable, i, b, 16, fNext, i+1)
			}
			r.desc(rigTable, rigSize-1, b, 16, 0, 0)
			r.desc(rigDesc, 0, b, 16, fNext, 1)
			r.desc(rigDesc, 1, rigTable, 16*rigSize, fInd, 0)
			return 0
		}, "longer than the queue size", 0, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var f uint64
			if c.indirect {
				f = FeatureIndirectDesc
			}
			r := newRig(t, rigLayout, f)
			r.publish(c.build(r))
			ch := r.q.Pop()
			if ch == nil {
				t.Fatal("Pop returned nothing")
			}
			if c.wantErr == "" && ch.Err() != nil {
				t.Fatalf("good chain refused: %v", ch.Err())
			}
			if c.wantErr != "" && (ch.Err() == nil || !strings.Contains(ch.Err().Error(), c.wantErr)) {
				t.Fatalf("Err = %v, want one containing %q", ch.Err(), c.wantErr)
			}
			if ch.ReadableLen() != c.wantR || ch.WritableLen() != c.wantW {
				t.Errorf("device sees %d readable, %d writable bytes; want %d, %d",
					ch.ReadableLen(), ch.WritableLen(), c.wantR, c.wantW)
			}
			if r.m.needsReset.Load() {
				t.Error("a bad chain broke the whole device")
			}
			r.q.Push(ch)
			if got := r.peek16(rigUsed + 2); got != 1 {
				t.Errorf("used idx %d after the push, want 1", got)
			}
		})
	}
}

// TestChainLongerThanUsedLen: a chain's total length must fit the used
// ring's 32-bit len. Needs 4 GiB of (untouched, unreserved) address space.
func TestChainLongerThanUsedLen(t *testing.T) {
	layout := []vmm.MemoryRegion{{Start: 0, Size: 1<<32 + 0x10000}}
	if _, err := vmm.NewGuestMemory(layout); err != nil {
		t.Skipf("cannot map 4 GiB of address space: %v", err)
	}
	r := newRig(t, layout, 0)
	r.desc(rigDesc, 0, 0x10000, 0xffff_0000, fNext, 1)
	r.desc(rigDesc, 1, 0x8000, 0x10000, fWrite, 0)
	r.publish(0)
	ch := r.q.Pop()
	if ch == nil || ch.Err() == nil || !strings.Contains(ch.Err().Error(), "more than") {
		t.Fatalf("4 GiB chain: %v, want a length error", ch.Err())
	}
}

// TestRingCorruption: ring errors that leave no chain to answer break the
// device: DEVICE_NEEDS_RESET and a configuration interrupt (§2.1.2).
func TestRingCorruption(t *testing.T) {
	for _, c := range []struct {
		name  string
		build func(r *rig)
	}{
		{"avail idx jumps", func(r *rig) {
			r.poke(rigAvail+2, binary.LittleEndian.AppendUint16(nil, rigSize+1))
		}},
		{"head out of range", func(r *rig) { r.publish(rigSize) }},
		{"avail idx goes backwards", func(r *rig) {
			r.poke(rigAvail+2, binary.LittleEndian.AppendUint16(nil, 0xffff))
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigLayout, 0)
			c.build(r)
			if ch := r.q.Pop(); ch != nil {
				t.Fatalf("Pop returned %v from a corrupt ring", ch)
			}
			if !r.m.needsReset.Load() || r.m.interruptStatus.Load()&InterruptConfigChange == 0 || r.interrupts != 1 {
				t.Errorf("needs reset %v, interrupt status %#x, %d interrupts; want true, config change, 1",
					r.m.needsReset.Load(), r.m.interruptStatus.Load(), r.interrupts)
			}
			r.publish(0)
			if ch := r.q.Pop(); ch != nil {
				t.Error("a broken device still hands out chains")
			}
		})
	}
}

// TestAvailIdxFullQueue: exactly a queue's worth of outstanding chains is
// legal.
func TestAvailIdxFullQueue(t *testing.T) {
	r := newRig(t, rigLayout, 0)
	r.desc(rigDesc, 0, rigBufs, 16, 0, 0)
	for range rigSize {
		r.publish(0)
	}
	for i := range rigSize {
		ch := r.q.Pop()
		if ch == nil || ch.Err() != nil {
			t.Fatalf("pop %d: %v", i, ch)
		}
		r.q.Push(ch)
	}
	if r.q.Pop() != nil || r.m.needsReset.Load() {
		t.Fatal("ring not empty or device broken after a full queue")
	}
}

// TestChainIO: ReadAt, WriteAt, CopyIn and CopyOut see each part as one
// byte range across descriptors, and Written counts the filled prefix.
func TestChainIO(t *testing.T) {
	r := newRig(t, rigLayout, 0)
	r.poke(rigBufs, []byte("hello, "))
	r.poke(rigBufs+0x100, []byte("world"))
	r.desc(rigDesc, 0, rigBufs, 7, fNext, 1)
	r.desc(rigDesc, 1, rigBufs+0x100, 5, fNext, 2)
	r.desc(rigDesc, 2, rigBufs+0x200, 3, fWrite|fNext, 3)
	r.desc(rigDesc, 3, rigBufs+0x300, 4, fWrite, 0)
	r.publish(0)
	ch := r.q.Pop()
	if ch.Err() != nil {
		t.Fatal(ch.Err())
	}
	got := make([]byte, 12)
	if n, err := ch.ReadAt(got, 0); n != 12 || err != nil || string(got) != "hello, world" {
		t.Fatalf("ReadAt = %d, %v, %q", n, err, got)
	}
	if n, err := ch.ReadAt(got[:4], 10); n != 2 || err == nil {
		t.Errorf("ReadAt past the end = %d, %v; want 2, io.EOF", n, err)
	}
	if _, err := ch.WriteAt([]byte("xy"), 5); err != nil {
		t.Fatal(err)
	}
	if ch.Written() != 0 {
		t.Errorf("Written = %d after a write with a gap, want 0", ch.Written())
	}
	if _, err := ch.WriteAt([]byte("abcde"), 0); err != nil {
		t.Fatal(err)
	}
	if ch.Written() != 5 {
		t.Errorf("Written = %d, want 5 (the earlier write beyond the gap does not count)", ch.Written())
	}
	if n, err := ch.WriteAt([]byte("123"), 6); n != 1 || err == nil {
		t.Errorf("WriteAt past the end = %d, %v; want 1, short write", n, err)
	}
	var sink fakeWriterAt
	if n, err := ch.CopyOut(&sink, 100, 3, 6); n != 6 || err != nil || string(sink.b[100:]) != "lo, wo" {
		t.Errorf("CopyOut = %d, %v, %q", n, err, sink.b[100:])
	}
	if _, err := ch.CopyIn(strings.NewReader("0123456789"), 2, 0, 7); err != nil {
		t.Fatal(err)
	}
	a, _ := r.mem.Slice(rigBufs+0x200, 3)
	b, _ := r.mem.Slice(rigBufs+0x300, 4)
	if string(a)+string(b) != "2345678" {
		t.Errorf("guest buffers hold %q %q after CopyIn", a, b)
	}
	if _, err := ch.CopyIn(strings.NewReader("01"), 0, 0, 7); err == nil {
		t.Error("CopyIn from a short source succeeded")
	}
	if _, err := ch.CopyIn(strings.NewReader("0123456789"), 0, 1, 7); err == nil {
		t.Error("CopyIn past the writable part succeeded")
	}
	r.q.Push(ch)
	if got := binary.LittleEndian.Uint32(mustSlice(t, r.mem, rigUsed+8, 4)); got != 7 { // CopyIn filled 0..7
		t.Errorf("used len %d, want 7", got)
	}
}

type fakeWriterAt struct{ b []byte }

func (w *fakeWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if end := int(off) + len(p); end > len(w.b) {
		w.b = append(w.b, make([]byte, end-len(w.b))...)
	}
	return copy(w.b[off:], p), nil
}

func mustSlice(t testing.TB, mem *vmm.GuestMemory, gpa vmm.GPA, n uint64) []byte {
	b, err := mem.Slice(gpa, n)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
