package virtio

import (
	"encoding/binary"
	"testing"

	"govmm/vmm"
)

// FuzzChain gives the queue code arbitrary descriptor tables, avail ring
// entries, indirect tables and avail indices. Whatever the guest writes,
// Pop and Push must not panic, and every buffer handed to the device must
// be exactly the guest RAM it claims to be: inside one region, as
// vmm.GuestMemory.Slice maps it.
//
// data is laid out as: the descriptor table (rigSize × 16 bytes), the
// avail ring's entries (rigSize × 2), then whatever lands at rigTable,
// where indirect tables can be.
func FuzzChain(f *testing.F) {
	desc := func(addr uint64, n uint32, flags, next uint16) []byte {
		var b [16]byte
		binary.LittleEndian.PutUint64(b[0:], addr)
		binary.LittleEndian.PutUint32(b[8:], n)
		binary.LittleEndian.PutUint16(b[12:], flags)
		binary.LittleEndian.PutUint16(b[14:], next)
		return b[:]
	}
	seed := func(avail uint16, features uint8, descs [][]byte, ring []uint16, table [][]byte) {
		var data []byte
		for i := range rigSize {
			if i < len(descs) {
				data = append(data, descs[i]...)
			} else {
				data = append(data, make([]byte, 16)...)
			}
		}
		for i := range rigSize {
			var h uint16
			if i < len(ring) {
				h = ring[i]
			}
			data = binary.LittleEndian.AppendUint16(data, h)
		}
		for _, d := range table {
			data = append(data, d...)
		}
		f.Add(data, avail, features)
	}
	// A virtio-blk read, an indirect one, a loop, a jump, a bad index.
	seed(1, 0, [][]byte{
		desc(rigBufs, 16, fNext, 1), desc(rigBufs+0x100, 512, fNext|fWrite, 2), desc(rigBufs+0x400, 1, fWrite, 0),
	}, []uint16{0}, nil)
	seed(2, 1, [][]byte{desc(rigTable, 48, fInd, 0), desc(rigBufs, 16, fNext, 0)},
		[]uint16{0, 1}, [][]byte{
			desc(rigBufs, 16, fNext, 1), desc(rigBufs+0x100, 512, fNext|fWrite, 2), desc(0x10000-1, 2, fWrite, 0),
		})
	seed(1, 3, [][]byte{desc(rigBufs, 16, fNext, 1), desc(rigBufs, 16, fNext, 0)}, []uint16{0}, nil)
	seed(200, 0, nil, nil, nil)
	seed(3, 2, [][]byte{desc(rigHole, 16, 0, 0)}, []uint16{0, 9, 0}, nil)
	seed(1, 1, [][]byte{desc(rigTable, 32, fInd, 0)}, []uint16{0}, [][]byte{
		desc(rigTable, 16, fInd, 0), desc(0xffff_ffff_ffff_ffff, 0xffff_ffff, fWrite, 0),
	})

	f.Fuzz(func(t *testing.T, data []byte, avail uint16, features uint8) {
		var feat uint64
		if features&1 != 0 {
			feat |= FeatureIndirectDesc
		}
		if features&2 != 0 {
			feat |= FeatureEventIdx
		}
		r := newRig(t, rigLayout, feat)
		ring := data[min(len(data), 16*rigSize):]
		table := ring[min(len(ring), 2*rigSize):]
		r.poke(rigDesc, data[:min(len(data), 16*rigSize)])
		r.poke(rigAvail+4, ring[:min(len(ring), 2*rigSize)])
		r.poke(rigTable, table[:min(len(table), 0x1000)])
		r.poke(rigAvail+2, binary.LittleEndian.AppendUint16(nil, avail))

		for range 2 * rigSize {
			ch := r.q.Pop()
			if ch == nil {
				break
			}
			checkChain(t, r.mem, ch)
			// Answer as a device would: fill what is writable.
			if n := ch.WritableLen(); n > 0 {
				ch.WriteAt(make([]byte, min(n, 4096)), 0)
			}
			r.q.Push(ch)
		}
		if r.q.inFlight != 0 {
			t.Fatalf("%d chains in flight after pushing all", r.q.inFlight)
		}
	})
}

// checkChain verifies a chain's invariants.
func checkChain(t *testing.T, mem *vmm.GuestMemory, ch *Chain) {
	t.Helper()
	var count int
	var total int64
	for _, part := range []struct {
		segs []segment
		len  int64
	}{{ch.readable, ch.readableLen}, {ch.writable, ch.writableLen}} {
		var sum int64
		for _, s := range part.segs {
			want, err := mem.Slice(s.gpa, uint64(len(s.data)))
			if err != nil {
				t.Fatalf("segment %#x+%d is not RAM: %v", s.gpa, len(s.data), err)
			}
			if len(s.data) == 0 || &s.data[0] != &want[0] || len(s.data) != len(want) || cap(s.data) != cap(want) {
				t.Fatalf("segment %#x+%d does not alias guest RAM at its address", s.gpa, len(s.data))
			}
			sum += int64(len(s.data))
			count++
		}
		if sum != part.len {
			t.Fatalf("part length %d, segments add up to %d", part.len, sum)
		}
		total += sum
	}
	if count > rigSize || total > maxChainBytes {
		t.Fatalf("chain of %d buffers, %d bytes", count, total)
	}
	if ch.Err() != nil && (len(ch.readable) > 0 || len(ch.writable) > 1) {
		t.Fatalf("malformed chain (%v) exposes %d readable, %d writable buffers", ch.Err(), len(ch.readable), len(ch.writable))
	}
	if ch.head >= rigSize {
		t.Fatalf("chain head %d out of range", ch.head)
	}
}
