package vmm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// KVM is an open /dev/kvm: the "system" file descriptor from which VMs are
// created and host capabilities are read (Documentation/virt/kvm/api.rst §3).
type KVM struct {
	fd           int
	vcpuMmapSize int
}

// DefaultDevice is where the kernel exposes KVM.
const DefaultDevice = "/dev/kvm"

// OpenKVM opens the KVM device and checks that it speaks the stable API. The
// errors are written for a person who has just typed `govmm run`: they say
// what is wrong with the host and how to fix it.
func OpenKVM(path string) (*KVM, error) {
	fd, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ENOENT):
		return nil, fmt.Errorf("%s does not exist: this host has no KVM (enable virtualization in the firmware and load kvm_intel or kvm_amd)", path)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return nil, fmt.Errorf("permission denied opening %s: add your user to the kvm group (sudo adduser $USER kvm) and log in again", path)
	case err != nil:
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	k := &KVM{fd: fd}
	v, err := ioctl(fd, kvmGetAPIVersion, 0)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("%s is not a KVM device (KVM_GET_API_VERSION: %v)", path, err)
	}
	if v != APIVersion {
		k.Close()
		return nil, fmt.Errorf("%s speaks KVM API version %d, govmm needs %d", path, v, APIVersion)
	}
	size, err := ioctl(fd, kvmGetVCPUMmapSize, 0)
	if err != nil {
		k.Close()
		return nil, fmt.Errorf("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	k.vcpuMmapSize = int(size)
	for _, c := range []struct {
		cap  uintptr
		name string
	}{
		{CapIRQChip, "KVM_CAP_IRQCHIP"},
		{CapUserMemory, "KVM_CAP_USER_MEMORY"},
		{CapImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"},
		{CapExtCPUID, "KVM_CAP_EXT_CPUID"},
	} {
		if k.CheckExtension(c.cap) <= 0 {
			k.Close()
			return nil, fmt.Errorf("this KVM lacks %s, which govmm needs", c.name)
		}
	}
	return k, nil
}

// Close releases /dev/kvm. VMs created from it stay valid.
func (k *KVM) Close() error { return unix.Close(k.fd) }

// CheckExtension returns KVM_CHECK_EXTENSION's answer for a capability: 0 if
// absent, otherwise 1 or a capability-specific value.
func (k *KVM) CheckExtension(capability uintptr) int {
	r, err := ioctl(k.fd, kvmCheckExtension, capability)
	if err != nil {
		return 0
	}
	return int(r)
}

// SupportedCPUID returns the CPUID leaves KVM can present to a guest on this
// host (KVM_GET_SUPPORTED_CPUID): the starting point of every guest's CPUID.
func (k *KVM) SupportedCPUID() ([]CPUIDEntry, error) {
	c := new(cpuid2)
	c.Nent = maxCPUIDEntries
	if _, err := ioctlPtr(k.fd, kvmGetSupportedCPUID, c); err != nil {
		return nil, fmt.Errorf("KVM_GET_SUPPORTED_CPUID: %w", err)
	}
	return append([]CPUIDEntry(nil), c.Entries[:c.Nent]...), nil
}

// MSRIndexList returns the MSRs KVM saves and restores for a vCPU
// (KVM_GET_MSR_INDEX_LIST): what live migration must carry.
func (k *KVM) MSRIndexList() ([]uint32, error) {
	l := new(msrList)
	l.NMSRs = uint32(len(l.Indices))
	if _, err := ioctlPtr(k.fd, kvmGetMSRIndexList, l); err != nil {
		return nil, fmt.Errorf("KVM_GET_MSR_INDEX_LIST: %w", err)
	}
	return append([]uint32(nil), l.Indices[:l.NMSRs]...), nil
}

// CreateVM creates an empty virtual machine: no memory, no vCPUs, no
// interrupt controllers yet.
func (k *KVM) CreateVM() (*VM, error) {
	fd, err := ioctl(k.fd, kvmCreateVM, 0)
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VM: %w", err)
	}
	return &VM{
		kvm:  k,
		fd:   int(fd),
		PIO:  NewBus("port I/O"),
		MMIO: NewBus("MMIO"),
	}, nil
}
