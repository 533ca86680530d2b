package virtio

import (
	"fmt"
	"sync/atomic"
	"unsafe"

	"govmm/vmm"
)

// This file is the only place in package virtio that uses unsafe: the ring
// indices shared with the guest must be accessed atomically, and
// sync/atomic needs a *uint32 where GuestMemory hands out []byte.
//
// Why atomics at all: the guest's driver and the device run at the same
// time on different CPUs. The driver fills a descriptor chain and the avail
// ring entry, then stores avail->idx; the device must load avail->idx
// before it reads what the index covers, and symmetrically store used->idx
// only after the used element (virtio 1.2 §2.7.13.3 and §2.7.8, Linux
// virtio_ring.c's virtio_wmb/virtio_rmb pairs). In Go, sync/atomic
// operations are sequentially consistent: the compiler and the CPU keep
// every memory access on its side of them. Plain accesses would let the
// compiler cache, reorder or tear them.
//
// sync/atomic has no 16-bit operations, and the indices are 16 bits
// (le16). So a field is accessed through the naturally aligned 32-bit word
// that contains it: a load takes the whole word and shifts; a store is a
// compare-and-swap loop that changes only our half, so a concurrent guest
// store to the other half is never lost. The other half is the neighbouring
// field of the ring or, at a ring's edge, two bytes just outside it, which
// the CAS leaves as they are. Either way it is in the same page: guest RAM
// regions are page-aligned, so an aligned word that holds a RAM byte lies
// entirely in RAM.
//
// govmm runs on x86-64, which is little-endian like the rings: the field
// at byte offset 2 of a word is its upper half.

// le16 is a 16-bit little-endian field of a virtqueue ring in guest RAM:
// avail->flags, avail->idx, used_event, used->idx or avail_event.
type le16 struct {
	word  *uint32 // the aligned 32-bit word holding the field
	shift uint32  // 0 or 16: the field's position in the word
}

// newLE16 locates the 2-aligned field at gpa. The caller has already
// checked that the field lies in RAM; the check here only guards the
// alignment assumption that makes the atomic word access legal.
func newLE16(mem *vmm.GuestMemory, gpa vmm.GPA) (le16, error) {
	if gpa%2 != 0 {
		return le16{}, fmt.Errorf("ring field at %#x is not 2-byte aligned", uint64(gpa))
	}
	b, err := mem.Slice(gpa&^3, 4)
	if err != nil {
		return le16{}, err
	}
	p := unsafe.Pointer(&b[0])
	if uintptr(p)%4 != 0 {
		// Cannot happen: guest RAM is page-aligned host memory.
		return le16{}, fmt.Errorf("ring field at %#x: host word not 4-byte aligned", uint64(gpa))
	}
	return le16{word: (*uint32)(p), shift: uint32(gpa&2) * 8}, nil
}

func (f le16) load() uint16 {
	return uint16(atomic.LoadUint32(f.word) >> f.shift)
}

// store writes v. The CAS is a full barrier: every write before it (the
// used element) is visible to the guest before the new index, and every
// read after it (used_event, avail->idx) happens after the index is visible.
func (f le16) store(v uint16) {
	mask := uint32(0xffff) << f.shift
	for {
		old := atomic.LoadUint32(f.word)
		if atomic.CompareAndSwapUint32(f.word, old, old&^mask|uint32(v)<<f.shift) {
			return
		}
	}
}
