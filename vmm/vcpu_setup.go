package vmm

import "encoding/binary"

// What a vCPU needs before it can run a guest kernel that expects to have
// been started by firmware: MSRs at their reset values, an FPU in its
// FNINIT state, and a local APIC wired as virtual-wire mode. This is the part
// of "firmware" a direct-boot VMM must do itself (Firecracker does the same in
// arch/src/x86_64/regs.rs and interrupts.rs).

// MSR numbers (Intel SDM Vol. 4).
const (
	msrIA32TSC         = 0x10
	msrIA32SysenterCS  = 0x174
	msrIA32SysenterESP = 0x175
	msrIA32SysenterEIP = 0x176
	msrIA32MiscEnable  = 0x1a0
	msrMTRRDefType     = 0x2ff
	msrSTAR            = 0xc0000081
	msrLSTAR           = 0xc0000082
	msrCSTAR           = 0xc0000083
	msrSyscallMask     = 0xc0000084
	msrKernelGSBase    = 0xc0000102
	miscEnableFastStr  = 1 << 0  // IA32_MISC_ENABLE.FAST_STRINGS
	mtrrEnable         = 1 << 11 // IA32_MTRR_DEF_TYPE.E
	mtrrTypeWriteBack  = 6       // default memory type WB
)

// BootMSRs are the MSR values a vCPU starts with. Linux sets the syscall
// MSRs itself; they are zeroed so a restarted vCPU does not keep stale ones.
// MTRRs default to write-back: without it Linux maps all RAM uncached
// ("mtrr: your CPUs had inconsistent variable MTRR settings" / slow boot).
func BootMSRs() []MSR {
	return []MSR{
		{Index: msrIA32SysenterCS}, {Index: msrIA32SysenterESP}, {Index: msrIA32SysenterEIP},
		{Index: msrSTAR}, {Index: msrLSTAR}, {Index: msrCSTAR}, {Index: msrSyscallMask},
		{Index: msrKernelGSBase},
		{Index: msrIA32TSC},
		{Index: msrIA32MiscEnable, Data: miscEnableFastStr},
		{Index: msrMTRRDefType, Data: mtrrEnable | mtrrTypeWriteBack},
	}
}

// BootFPU is the FPU after FNINIT: x87 control word 0x37f (all exceptions
// masked, 64-bit precision) and MXCSR 0x1f80 (SSE exceptions masked).
func BootFPU() FPU {
	return FPU{FCW: 0x37f, MXCSR: 0x1f80}
}

// Local APIC register offsets and delivery modes (Intel SDM Vol. 3A §10.5).
const (
	lapicLVTLINT0     = 0x350
	lapicLVTLINT1     = 0x360
	lapicDeliveryMask = 0x700
	lapicModeExtINT   = 0x700
	lapicModeNMI      = 0x400
)

// SetupVirtualWire programs LINT0 as ExtINT and LINT1 as NMI, which is how
// a PC BIOS leaves the boot CPU: interrupts from the 8259 PIC reach the CPU
// through LINT0 until the OS switches to the IOAPIC.
func (v *VCPU) SetupVirtualWire() error {
	l, err := v.GetLAPIC()
	if err != nil {
		return err
	}
	for _, r := range []struct{ off, mode uint32 }{{lapicLVTLINT0, lapicModeExtINT}, {lapicLVTLINT1, lapicModeNMI}} {
		val := binary.LittleEndian.Uint32(l.Regs[r.off:])
		binary.LittleEndian.PutUint32(l.Regs[r.off:], val&^lapicDeliveryMask|r.mode)
	}
	return v.SetLAPIC(l)
}

// XCR0 bits (Intel SDM Vol. 1 §13.3) that Linux never enables: MPX's
// BNDREGS and BNDCSR, dropped from the kernel in 5.6.
const (
	xcr0X87        = 1 << 0
	xcr0MPXState   = 1<<3 | 1<<4
	cpuidLeafXSAVE = 0xD // subleaf 0: EDX:EAX = XCR0 bits the CPU supports
)

// BootXCR0 is the XCR0 a vCPU starts with: every user state component the
// guest's CPUID offers, which is exactly what Linux programs with XSETBV in
// fpu__init_cpu_xstate (arch/x86/kernel/fpu/xstate.c).
//
// A real CPU resets XCR0 to 1 (x87 only), and on real hardware the
// difference is invisible: the guest's XSETBV exits to KVM, which records the
// new value. It matters under nested virtualization on QEMU's TCG, the test
// host of tests/testhost: TCG's nested SVM lets the guest's XSETBV change
// XCR0 without an exit, so KVM never learns the guest's value, reloads its
// own stale copy on every VM entry, and reports the wrong CPUID 0xD.EBX
// ("XSAVE consistency problem" at boot, then user AVX state that comes and
// goes). Starting from the value Linux will write keeps both views equal.
//
// ok is false when the CPUID has no XSAVE leaf: XCR0 is then left alone.
func BootXCR0(cpuid []CPUIDEntry) (xcr0 uint64, ok bool) {
	for _, e := range cpuid {
		if e.Function == cpuidLeafXSAVE && e.Index == 0 {
			return (uint64(e.EDX)<<32|uint64(e.EAX))&^xcr0MPXState | xcr0X87, true
		}
	}
	return 0, false
}

// SetXCR0 writes XCR0 (KVM_SET_XCRS).
func (v *VCPU) SetXCR0(value uint64) error {
	x := XCRs{NrXCRs: 1}
	x.XCRs[0] = XCR{XCR: 0, Value: value}
	return v.SetXCRs(x)
}
