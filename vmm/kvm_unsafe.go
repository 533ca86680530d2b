package vmm

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// This file is the only place in package vmm that uses unsafe. KVM's ioctls
// take pointers to C structs; Go code everywhere else passes typed pointers
// (*Regs, *Sregs, ...) and ioctlPtr turns them into the raw address the
// kernel expects. The structs in kvm.go are laid out to match the C ones
// exactly (kvm_test.go checks their sizes against the ioctl numbers).

// ioctl issues an ioctl whose argument is a plain integer (or nothing).
//
// Setup ioctls such as KVM_CREATE_VM can fail with EINTR when a signal
// arrives (Go's runtime sends them for goroutine preemption); they are
// simply retried. KVM_RUN is the exception: its EINTR is how a vCPU is
// kicked, so it goes through runOnce instead.
func ioctl(fd int, request uintptr, arg uintptr) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), request, arg)
		if errno != unix.EINTR {
			return r, errnoErr(errno)
		}
	}
}

// ioctlPtr issues an ioctl whose argument is a pointer to a KVM struct,
// retrying on EINTR like ioctl. The pointee stays alive for the duration of
// the call because it is referenced by the argument (unsafe.Pointer rule 4:
// conversion in the call expression).
func ioctlPtr[T any](fd int, request uintptr, arg *T) (uintptr, error) {
	for {
		r, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), request, uintptr(unsafe.Pointer(arg)))
		if errno != unix.EINTR {
			return r, errnoErr(errno)
		}
	}
}

// runOnce issues KVM_RUN once, returning EINTR to the caller.
func runOnce(fd int) error {
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), kvmRun, 0)
	return errnoErr(errno)
}

// errnoErr turns a raw errno into an error, nil for 0.
func errnoErr(e unix.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

// hostAddress is the host virtual address of the first byte of an mmap'd
// region, as KVM_SET_USER_MEMORY_REGION wants it (userspace_addr).
func hostAddress(b []byte) uint64 {
	return uint64(uintptr(unsafe.Pointer(&b[0])))
}
