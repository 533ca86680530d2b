package vmm

import (
	"encoding/binary"
	"testing"
)

// ioctl numbers encode the size of their argument; recomputing them from
// the Go structs catches both a typo in a number and a struct whose layout
// drifted from the kernel's (binary.Size counts the declared fields only, so
// a struct that relied on Go's implicit padding would not match either).
func TestIoctlNumbersMatchStructSizes(t *testing.T) {
	const (
		none  = 0
		write = 1 // _IOC_WRITE: userspace → kernel
		read  = 2 // _IOC_READ
	)
	enc := func(dir, nr uintptr, size int) uintptr {
		return dir<<30 | uintptr(size)<<16 | 0xAE<<8 | nr
	}
	cases := []struct {
		name string
		got  uintptr
		dir  uintptr
		nr   uintptr
		arg  any
	}{
		{"KVM_GET_SUPPORTED_CPUID", kvmGetSupportedCPUID, read | write, 0x05, struct{ A, B uint32 }{}},
		{"KVM_GET_MSR_INDEX_LIST", kvmGetMSRIndexList, read | write, 0x02, uint32(0)},
		{"KVM_GET_DIRTY_LOG", kvmGetDirtyLog, write, 0x42, [2]uint64{}},
		{"KVM_SET_USER_MEMORY_REGION", kvmSetUserMemoryRegion, write, 0x46, userspaceMemoryRegion{}},
		{"KVM_SET_IDENTITY_MAP_ADDR", kvmSetIdentityMapAddr, write, 0x48, uint64(0)},
		{"KVM_IRQ_LINE", kvmIRQLine, write, 0x61, irqLevel{}},
		{"KVM_GET_IRQCHIP", kvmGetIRQChip, read | write, 0x62, IRQChip{}},
		{"KVM_SET_IRQCHIP", kvmSetIRQChip, read, 0x63, IRQChip{}},
		{"KVM_CREATE_PIT2", kvmCreatePIT2, write, 0x77, pitConfig{}},
		{"KVM_SET_CLOCK", kvmSetClock, write, 0x7b, ClockData{}},
		{"KVM_GET_CLOCK", kvmGetClock, read, 0x7c, ClockData{}},
		{"KVM_GET_PIT2", kvmGetPIT2, read, 0x9f, PITState2{}},
		{"KVM_SET_PIT2", kvmSetPIT2, write, 0xa0, PITState2{}},
		{"KVM_GET_REGS", kvmGetRegs, read, 0x81, Regs{}},
		{"KVM_SET_REGS", kvmSetRegs, write, 0x82, Regs{}},
		{"KVM_GET_SREGS", kvmGetSregs, read, 0x83, Sregs{}},
		{"KVM_SET_SREGS", kvmSetSregs, write, 0x84, Sregs{}},
		{"KVM_TRANSLATE", kvmTranslate, read | write, 0x85, translation{}},
		{"KVM_GET_MSRS", kvmGetMSRs, read | write, 0x88, struct{ A, B uint32 }{}},
		{"KVM_SET_MSRS", kvmSetMSRs, write, 0x89, struct{ A, B uint32 }{}},
		{"KVM_GET_FPU", kvmGetFPU, read, 0x8c, FPU{}},
		{"KVM_SET_FPU", kvmSetFPU, write, 0x8d, FPU{}},
		{"KVM_GET_LAPIC", kvmGetLAPIC, read, 0x8e, LAPICState{}},
		{"KVM_SET_LAPIC", kvmSetLAPIC, write, 0x8f, LAPICState{}},
		{"KVM_SET_CPUID2", kvmSetCPUID2, write, 0x90, struct{ A, B uint32 }{}},
		{"KVM_GET_MP_STATE", kvmGetMPState, read, 0x98, MPState{}},
		{"KVM_SET_MP_STATE", kvmSetMPState, write, 0x99, MPState{}},
		{"KVM_GET_VCPU_EVENTS", kvmGetVCPUEvents, read, 0x9f, VCPUEvents{}},
		{"KVM_SET_VCPU_EVENTS", kvmSetVCPUEvents, write, 0xa0, VCPUEvents{}},
		{"KVM_GET_DEBUGREGS", kvmGetDebugRegs, read, 0xa1, DebugRegs{}},
		{"KVM_SET_DEBUGREGS", kvmSetDebugRegs, write, 0xa2, DebugRegs{}},
		{"KVM_GET_XSAVE", kvmGetXSAVE, read, 0xa4, XSAVE{}},
		{"KVM_SET_XSAVE", kvmSetXSAVE, write, 0xa5, XSAVE{}},
		{"KVM_GET_XCRS", kvmGetXCRs, read, 0xa6, XCRs{}},
		{"KVM_SET_XCRS", kvmSetXCRs, write, 0xa7, XCRs{}},
		{"KVM_CLEAR_DIRTY_LOG", kvmClearDirtyLog, read | write, 0xc0, [3]uint64{}},
		{"KVM_IRQFD", kvmIRQFD, write, 0x76, irqfd{}},
		{"KVM_IOEVENTFD", kvmIOEventFD, write, 0x79, ioeventfd{}},
	}
	for _, c := range cases {
		size := binary.Size(c.arg)
		if want := enc(c.dir, c.nr, size); c.got != want {
			t.Errorf("%s = %#x, want %#x (argument size %d)", c.name, c.got, want, size)
		}
	}
	for name, n := range map[string]uintptr{
		"KVM_GET_API_VERSION": kvmGetAPIVersion, "KVM_CREATE_VM": kvmCreateVM,
		"KVM_CHECK_EXTENSION": kvmCheckExtension, "KVM_GET_VCPU_MMAP_SIZE": kvmGetVCPUMmapSize,
		"KVM_CREATE_VCPU": kvmCreateVCPU, "KVM_SET_TSS_ADDR": kvmSetTSSAddr,
		"KVM_CREATE_IRQCHIP": kvmCreateIRQChip, "KVM_RUN": kvmRun, "KVM_GET_TSC_KHZ": kvmGetTSCKHz,
	} {
		if n>>16 != none {
			t.Errorf("%s = %#x should take no argument", name, n)
		}
	}
}

// The kvm_run offsets are those of struct kvm_run in include/uapi/linux/kvm.h.
func TestKVMRunLayout(t *testing.T) {
	for name, c := range map[string][2]int{
		"exit_reason":    {runExitReason, 8},
		"io.port":        {runIOPort, 34},
		"io.data_offset": {runIODataOffset, 40},
		"mmio.data":      {runMMIOData, 40},
		"mmio.len":       {runMMIOLen, 48},
		"mmio.is_write":  {runMMIOIsWrite, 52},
	} {
		if c[0] != c[1] {
			t.Errorf("kvm_run.%s at %d, want %d", name, c[0], c[1])
		}
	}
}
