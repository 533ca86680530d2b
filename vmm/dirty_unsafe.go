package vmm

import "unsafe"

// uint64sAddress is the address of a dirty bitmap's first word, as
// KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG want it (dirty_bitmap, a
// pointer carried in a __u64 field). The caller keeps the slice alive across
// the ioctl with runtime.KeepAlive: the struct holds the address as a
// plain integer, which the garbage collector does not follow. Go's heap does
// not move objects, so the address stays valid while the slice is live.
func uint64sAddress(s []uint64) uint64 {
	return uint64(uintptr(unsafe.Pointer(&s[0])))
}
