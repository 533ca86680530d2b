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
