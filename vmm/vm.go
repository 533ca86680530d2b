package vmm

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// VM is one KVM virtual machine: its file descriptor, its RAM, its vCPUs and
// the two buses on which the VMM's devices answer the guest's port-I/O and
// MMIO exits. A VM knows nothing about which devices sit on its buses; the
// machine description (package machine) decides that.
type VM struct {
	kvm *KVM
	fd  int

	Memory *GuestMemory
	PIO    *Bus // x86 I/O port space, 64 KiB (KVM_EXIT_IO)
	MMIO   *Bus // guest-physical addresses not backed by RAM (KVM_EXIT_MMIO)

	vcpus []*VCPU

	dirty dirtyLogState // dirty.go: KVM dirty logging for live migration
}

// Close releases the VM. vCPUs must have stopped.
func (vm *VM) Close() error {
	for _, v := range vm.vcpus {
		v.close()
	}
	vm.vcpus = nil
	return unix.Close(vm.fd)
}

// KVM returns the system handle the VM was created from.
func (vm *VM) KVM() *KVM { return vm.kvm }

// VCPUs returns the vCPUs in id order.
func (vm *VM) VCPUs() []*VCPU { return vm.vcpus }

// SetMemory hands guest RAM to KVM, one memory slot per region
// (KVM_SET_USER_MEMORY_REGION). KVM maps the host pages into the guest's
// physical address space; the VMM keeps accessing them through mem.
func (vm *VM) SetMemory(mem *GuestMemory) error {
	for i, r := range mem.regions {
		region := userspaceMemoryRegion{
			Slot:          uint32(i),
			GuestPhysAddr: uint64(r.Start),
			MemorySize:    r.Size,
			UserspaceAddr: hostAddress(r.host),
		}
		if _, err := ioctlPtr(vm.fd, kvmSetUserMemoryRegion, &region); err != nil {
			return fmt.Errorf("KVM_SET_USER_MEMORY_REGION slot %d (%#x+%#x): %w", i, r.Start, r.Size, err)
		}
	}
	vm.Memory = mem
	return nil
}

// SetTSSAddr places the three pages Intel VMX needs for real-mode emulation
// (KVM_SET_TSS_ADDR). They must be outside RAM and any MMIO device; AMD
// ignores it, but setting it keeps one machine layout for both vendors.
func (vm *VM) SetTSSAddr(gpa GPA) error {
	if _, err := ioctl(vm.fd, kvmSetTSSAddr, uintptr(gpa)); err != nil {
		return fmt.Errorf("KVM_SET_TSS_ADDR %#x: %w", uint64(gpa), err)
	}
	return nil
}

// SetIdentityMapAddr places the page KVM on Intel uses for the identity page
// table of unpaged guest mode (KVM_SET_IDENTITY_MAP_ADDR).
func (vm *VM) SetIdentityMapAddr(gpa GPA) error {
	addr := uint64(gpa)
	if _, err := ioctlPtr(vm.fd, kvmSetIdentityMapAddr, &addr); err != nil {
		return fmt.Errorf("KVM_SET_IDENTITY_MAP_ADDR %#x: %w", addr, err)
	}
	return nil
}

// CreateIRQChip creates the in-kernel interrupt controllers: two 8259 PICs,
// an IOAPIC and a local APIC per vCPU (KVM_CREATE_IRQCHIP). Emulating them in
// the kernel keeps the hottest guest exits (EOIs, timer interrupts, HLT) out
// of the VMM. Must be called before vCPUs are created.
func (vm *VM) CreateIRQChip() error {
	if _, err := ioctl(vm.fd, kvmCreateIRQChip, 0); err != nil {
		return fmt.Errorf("KVM_CREATE_IRQCHIP: %w", err)
	}
	return nil
}

// CreatePIT creates the in-kernel 8254 timer on ports 0x40-0x43 wired to
// IRQ 0 (KVM_CREATE_PIT2). The speaker port 0x61 is answered by KVM too, as
// Linux's PIT calibration polls it.
func (vm *VM) CreatePIT() error {
	cfg := pitConfig{Flags: pitSpeakerDummy}
	if _, err := ioctlPtr(vm.fd, kvmCreatePIT2, &cfg); err != nil {
		return fmt.Errorf("KVM_CREATE_PIT2: %w", err)
	}
	return nil
}

// SetIRQLine drives an interrupt line of the in-kernel irqchip
// (KVM_IRQ_LINE). With KVM's default routing, GSI n below 16 is ISA IRQ n on
// both the PIC and IOAPIC pin n.
func (vm *VM) SetIRQLine(gsi uint32, high bool) error {
	l := irqLevel{IRQ: gsi}
	if high {
		l.Level = 1
	}
	if _, err := ioctlPtr(vm.fd, kvmIRQLine, &l); err != nil {
		return fmt.Errorf("KVM_IRQ_LINE %d=%d: %w", gsi, l.Level, err)
	}
	return nil
}

// IRQLine is one interrupt line of this VM, the form in which devices are
// given their interrupt (they only call SetLevel). Errors are impossible for a
// valid GSI once the irqchip exists, so SetLevel reports none.
type IRQLine struct {
	vm  *VM
	gsi uint32
}

// IRQ returns the interrupt line for a GSI.
func (vm *VM) IRQ(gsi uint32) IRQLine { return IRQLine{vm, gsi} }

// SetLevel raises or lowers the line.
func (l IRQLine) SetLevel(high bool) { _ = l.vm.SetIRQLine(l.gsi, high) }

// GetClock reads the kvmclock epoch shared by all vCPUs (KVM_GET_CLOCK).
func (vm *VM) GetClock() (ClockData, error) {
	var c ClockData
	_, err := ioctlPtr(vm.fd, kvmGetClock, &c)
	return c, wrap("KVM_GET_CLOCK", err)
}

// SetClock sets the kvmclock epoch (KVM_SET_CLOCK).
func (vm *VM) SetClock(c ClockData) error {
	_, err := ioctlPtr(vm.fd, kvmSetClock, &c)
	return wrap("KVM_SET_CLOCK", err)
}

// GetIRQChip reads one in-kernel interrupt controller's state.
func (vm *VM) GetIRQChip(id uint32) (IRQChip, error) {
	c := IRQChip{ChipID: id}
	_, err := ioctlPtr(vm.fd, kvmGetIRQChip, &c)
	return c, wrap("KVM_GET_IRQCHIP", err)
}

// SetIRQChip writes one in-kernel interrupt controller's state.
func (vm *VM) SetIRQChip(c IRQChip) error {
	_, err := ioctlPtr(vm.fd, kvmSetIRQChip, &c)
	return wrap("KVM_SET_IRQCHIP", err)
}

// GetPIT reads the in-kernel PIT state.
func (vm *VM) GetPIT() (PITState2, error) {
	var s PITState2
	_, err := ioctlPtr(vm.fd, kvmGetPIT2, &s)
	return s, wrap("KVM_GET_PIT2", err)
}

// SetPIT writes the in-kernel PIT state.
func (vm *VM) SetPIT(s PITState2) error {
	_, err := ioctlPtr(vm.fd, kvmSetPIT2, &s)
	return wrap("KVM_SET_PIT2", err)
}

// CreateVCPU adds vCPU number id (its initial APIC ID) and maps its kvm_run
// page, through which KVM_RUN reports every exit.
func (vm *VM) CreateVCPU(id int) (*VCPU, error) {
	fd, err := ioctl(vm.fd, kvmCreateVCPU, uintptr(id))
	if err != nil {
		return nil, fmt.Errorf("KVM_CREATE_VCPU %d: %w", id, err)
	}
	run, err := unix.Mmap(int(fd), 0, vm.kvm.vcpuMmapSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		unix.Close(int(fd))
		return nil, fmt.Errorf("mapping kvm_run of vCPU %d: %w", id, err)
	}
	v := newVCPU(vm, id, int(fd), run)
	vm.vcpus = append(vm.vcpus, v)
	return v, nil
}

func wrap(what string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", what, err)
}
