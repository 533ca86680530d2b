package vmm

import (
	"encoding/binary"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Eventfds let KVM and a device goroutine talk without the vCPU thread in
// between (Documentation/virt/kvm/api.rst, KVM_IOEVENTFD and KVM_IRQFD):
//
//   - ioeventfd: a guest write to a chosen address (a virtio queue's notify
//     register) does not exit to govmm at all. KVM signals an eventfd and
//     re-enters the guest at once; a device goroutine blocked on the
//     eventfd wakes up and serves the queue.
//   - irqfd: a device goroutine signals an eventfd and KVM injects the
//     interrupt of a GSI, again without stopping any vCPU.
//
// This is how virtio devices reach their speed: the vCPU only ever runs
// the guest, and I/O happens alongside it.

// EventFD is a Linux eventfd (man 2 eventfd): a 64-bit counter that Signal
// adds to and Wait drains.
type EventFD struct {
	file *os.File // non-blocking, so Wait parks the goroutine, not the thread
	fd   int      // the raw descriptor, for KVM (file.Fd would make it blocking)
}

// NewEventFD creates an eventfd with a zero counter.
func NewEventFD() (*EventFD, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("eventfd: %w", err)
	}
	return &EventFD{file: os.NewFile(uintptr(fd), "eventfd"), fd: fd}, nil
}

// Signal adds one to the counter, waking a Wait (and, for an irqfd,
// raising the interrupt).
func (e *EventFD) Signal() error {
	var one [8]byte
	binary.NativeEndian.PutUint64(one[:], 1)
	_, err := e.file.Write(one[:])
	return err
}

// Wait blocks until the counter is non-zero, then resets it and returns
// how many signals it held. Several signals collapse into one wake-up, which
// is what a queue wants: one look at the ring serves them all. It fails
// once the eventfd is closed.
func (e *EventFD) Wait() (uint64, error) {
	var buf [8]byte
	if _, err := e.file.Read(buf[:]); err != nil {
		return 0, err
	}
	return binary.NativeEndian.Uint64(buf[:]), nil
}

// Close releases the eventfd; a blocked Wait returns an error.
func (e *EventFD) Close() error { return e.file.Close() }

// Flags of struct kvm_irqfd and struct kvm_ioeventfd.
const (
	irqfdFlagDeassign         = 1 << 0 // KVM_IRQFD_FLAG_DEASSIGN
	ioeventfdFlagDataMatch    = 1 << 0 // KVM_IOEVENTFD_FLAG_DATAMATCH
	ioeventfdFlagPIO          = 1 << 1 // KVM_IOEVENTFD_FLAG_PIO
	ioeventfdFlagDeassign     = 1 << 2 // KVM_IOEVENTFD_FLAG_DEASSIGN
	ioeventfdMaxDataMatchSize = 8
)

// AttachIRQFD makes a Signal on e raise GSI gsi as an edge: KVM sets the
// line and clears it again, which suits a virtio-mmio interrupt the
// guest acknowledges through the device's InterruptACK register.
func (vm *VM) AttachIRQFD(e *EventFD, gsi uint32) error {
	arg := irqfd{FD: uint32(e.fd), GSI: gsi}
	_, err := ioctlPtr(vm.fd, kvmIRQFD, &arg)
	return wrap(fmt.Sprintf("KVM_IRQFD gsi %d", gsi), err)
}

// DetachIRQFD undoes AttachIRQFD.
func (vm *VM) DetachIRQFD(e *EventFD, gsi uint32) error {
	arg := irqfd{FD: uint32(e.fd), GSI: gsi, Flags: irqfdFlagDeassign}
	_, err := ioctlPtr(vm.fd, kvmIRQFD, &arg)
	return wrap(fmt.Sprintf("KVM_IRQFD deassign gsi %d", gsi), err)
}

// IOEventFD says which guest write KVM turns into a Signal.
type IOEventFD struct {
	Addr      uint64 // guest-physical address (or I/O port with PIO)
	Len       uint32 // access size to match: 1, 2, 4 or 8
	DataMatch uint64 // only a write of exactly this value matches
	PIO       bool   // Addr is an I/O port, not an MMIO address
}

func (c IOEventFD) kvm(e *EventFD, flags uint32) (ioeventfd, error) {
	switch c.Len {
	case 1, 2, 4, ioeventfdMaxDataMatchSize:
	default:
		return ioeventfd{}, fmt.Errorf("ioeventfd at %#x: access size %d, want 1, 2, 4 or 8", c.Addr, c.Len)
	}
	flags |= ioeventfdFlagDataMatch
	if c.PIO {
		flags |= ioeventfdFlagPIO
	}
	return ioeventfd{DataMatch: c.DataMatch, Addr: c.Addr, Len: c.Len, FD: int32(e.fd), Flags: flags}, nil
}

// AttachIOEventFD makes the guest write described by c signal e instead of
// exiting to govmm. Writes that do not match (another value, another size)
// still exit and reach the bus as usual.
func (vm *VM) AttachIOEventFD(e *EventFD, c IOEventFD) error {
	arg, err := c.kvm(e, 0)
	if err != nil {
		return err
	}
	_, err = ioctlPtr(vm.fd, kvmIOEventFD, &arg)
	return wrap(fmt.Sprintf("KVM_IOEVENTFD %#x/%d=%d", c.Addr, c.Len, c.DataMatch), err)
}

// DetachIOEventFD undoes AttachIOEventFD.
func (vm *VM) DetachIOEventFD(e *EventFD, c IOEventFD) error {
	arg, err := c.kvm(e, ioeventfdFlagDeassign)
	if err != nil {
		return err
	}
	_, err = ioctlPtr(vm.fd, kvmIOEventFD, &arg)
	return wrap(fmt.Sprintf("KVM_IOEVENTFD deassign %#x", c.Addr), err)
}
