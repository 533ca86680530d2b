package vmm

import (
	"errors"
	"fmt"
	"slices"
)

// Saving and restoring what KVM holds of a running guest, for live migration
// and snapshots: CPUState per vCPU, VMState for the VM-wide devices inside
// KVM. Guest RAM is not part of either; it travels separately (dirty.go).
//
// Both are plain Go values with exported fields, so package machine can
// encode them. Fixed-size kernel blobs (the LAPIC page, the XSAVE area, the
// irqchip states) are []byte rather than arrays: an encoded state can then be
// the wrong size, and Validate says so instead of silently padding.
//
// Every restore runs Validate first: a saved state arrives over the network
// from another host and is treated as hostile.

// CPUState is everything KVM knows about one vCPU. (The name VCPUState is
// taken by the vCPU's run state, vcpu_run.go.)
type CPUState struct {
	Regs      Regs
	Sregs     Sregs
	FPU       FPU
	XSAVE     []byte // struct kvm_xsave, XSAVESize bytes; nil without KVM_CAP_XSAVE
	XCRs      []XCR  // XCR0...; nil without KVM_CAP_XCRS
	MSRs      []MSR  // see MSRsToSave
	LAPIC     []byte // struct kvm_lapic_state, LAPICSize bytes
	Events    VCPUEvents
	DebugRegs DebugRegs
	MPState   uint32 // KVM_MP_STATE_*
}

// VMState is the VM-wide state inside KVM: the two 8259 PICs, the IOAPIC,
// the 8254 PIT and the kvmclock epoch.
type VMState struct {
	PICMaster []byte // struct kvm_irqchip.chip for KVM_IRQCHIP_PIC_MASTER, IRQChipSize bytes
	PICSlave  []byte // ... KVM_IRQCHIP_PIC_SLAVE
	IOAPIC    []byte // ... KVM_IRQCHIP_IOAPIC
	PIT       PITState2
	Clock     ClockData
}

// Sizes of the fixed kernel blobs.
const (
	LAPICSize   = 1024 // sizeof(struct kvm_lapic_state)
	XSAVESize   = 4096 // sizeof(struct kvm_xsave)
	IRQChipSize = 512  // sizeof(kvm_irqchip.chip)
	maxXCRs     = 16   // KVM_MAX_XCRS
	maxSavedMSR = 1024 // far more than any KVM offers; bounds a hostile list
)

// Flags of KVM_GET_CLOCK/KVM_SET_CLOCK (api.rst KVM_GET_CLOCK).
const (
	ClockTSCStable = 1 << 1 // KVM_CLOCK_TSC_STABLE: the clock is the same on every vCPU
	ClockRealtime  = 1 << 2 // KVM_CLOCK_REALTIME: Realtime holds CLOCK_REALTIME at the read
	ClockHostTSC   = 1 << 3 // KVM_CLOCK_HOST_TSC: HostTSC holds the host TSC at the read
)

// Flags of struct kvm_vcpu_events (api.rst KVM_GET_VCPU_EVENTS).
const (
	eventsValidNMIPending = 1 << 0 // KVM_VCPUEVENT_VALID_NMI_PENDING
	eventsValidSIPIVector = 1 << 1 // KVM_VCPUEVENT_VALID_SIPI_VECTOR
	eventsValidShadow     = 1 << 2 // KVM_VCPUEVENT_VALID_SHADOW
	eventsValidSMM        = 1 << 3 // KVM_VCPUEVENT_VALID_SMM
	eventsValidPayload    = 1 << 4 // KVM_VCPUEVENT_VALID_PAYLOAD
	eventsValidTripleFlt  = 1 << 5 // KVM_VCPUEVENT_VALID_TRIPLE_FAULT
	eventsKnownFlags      = 1<<6 - 1
)

// MSRs that migration must carry beyond the boot set (Intel SDM Vol. 4;
// KVM's arch/x86/include/uapi/asm/kvm_para.h for the 0x4b564dxx ones).
const (
	msrTSCAdjust      = 0x3b
	msrTSCDeadline    = 0x6e0 // IA32_TSC_DEADLINE: restored after the LAPIC, see RestoreState
	msrPAT            = 0x277
	msrMTRRFix64K     = 0x250
	msrMTRRFix16K0    = 0x258
	msrMTRRFix16K1    = 0x259
	msrMTRRFix4KFirst = 0x268 // ... 0x26f
	msrMTRRVarFirst   = 0x200 // PHYSBASE0/PHYSMASK0 ... PHYSBASE7/PHYSMASK7 = 0x20f
	msrKVMWallClock   = 0x4b564d00
	msrKVMSystemTime  = 0x4b564d01
	msrKVMAsyncPF     = 0x4b564d02
	msrKVMStealTime   = 0x4b564d03
	msrKVMPVEOI       = 0x4b564d04
	msrKVMPollControl = 0x4b564d05
	msrKVMWallOld     = 0x11
	msrKVMSystemOld   = 0x12
)

// extraMSRs are saved in addition to KVM_GET_MSR_INDEX_LIST: the MTRRs,
// which that list leaves out (QEMU saves them separately too) and which
// govmm's boot code sets, plus MSRs the list may or may not include
// depending on the kernel. Duplicates are removed.
func extraMSRs() []uint32 {
	l := []uint32{
		msrIA32TSC, msrTSCAdjust, msrTSCDeadline, msrIA32MiscEnable, msrPAT,
		msrMTRRDefType, msrMTRRFix64K, msrMTRRFix16K0, msrMTRRFix16K1,
		msrIA32SysenterCS, msrIA32SysenterESP, msrIA32SysenterEIP,
		msrSTAR, msrLSTAR, msrCSTAR, msrSyscallMask, msrKernelGSBase,
		msrKVMWallClock, msrKVMSystemTime, msrKVMAsyncPF, msrKVMStealTime,
		msrKVMPVEOI, msrKVMPollControl, msrKVMWallOld, msrKVMSystemOld,
	}
	for i := uint32(0); i < 8; i++ {
		l = append(l, msrMTRRFix4KFirst+i, msrMTRRVarFirst+2*i, msrMTRRVarFirst+2*i+1)
	}
	return l
}

// MSRsToSave returns the MSRs of this vCPU that a migration carries: the
// ones KVM lists in KVM_GET_MSR_INDEX_LIST plus extraMSRs, filtered to
// those KVM_GET_MSRS actually reads for this vCPU (the list names every MSR
// the host's KVM knows; a vCPU whose CPUID lacks a feature refuses its
// MSRs). Probed one at a time, since KVM_GET_MSRS stops at the first
// refusal.
func (v *VCPU) MSRsToSave() ([]uint32, error) {
	list, err := v.vm.kvm.MSRIndexList()
	if err != nil {
		return nil, err
	}
	var out []uint32
	for _, idx := range append(list, extraMSRs()...) {
		if slices.Contains(out, idx) {
			continue
		}
		if _, err := v.GetMSRs([]uint32{idx}); err == nil {
			out = append(out, idx)
		}
	}
	return out, nil
}

// checkPaused reports an error unless the vCPU is parked: paused, or
// created and not yet run. KVM would answer a vCPU ioctl on a running vCPU
// by waiting for KVM_RUN to return, and the state would be stale at once.
func (v *VCPU) checkPaused(what string) error {
	switch s := v.State(); s {
	case VCPUPaused, VCPUCreated:
		return nil
	default:
		return fmt.Errorf("%s: vCPU %d is %s; pause it first", what, v.ID, s)
	}
}

// SaveState reads the vCPU's complete state. The vCPU must be paused (or
// not yet started); the ioctls run on its own thread through Do.
func (v *VCPU) SaveState() (CPUState, error) {
	if err := v.checkPaused("saving vCPU state"); err != nil {
		return CPUState{}, err
	}
	var s CPUState
	var err error
	v.Do(func() { s, err = v.saveState() })
	return s, err
}

func (v *VCPU) saveState() (CPUState, error) {
	var s CPUState
	var err error
	// MP state first: KVM_GET_MP_STATE makes KVM process a pending INIT or
	// SIPI, which changes registers; read those after it.
	mp, err := v.GetMPState()
	if err != nil {
		return s, err
	}
	s.MPState = mp.State
	if s.Regs, err = v.GetRegs(); err != nil {
		return s, err
	}
	if s.Sregs, err = v.GetSregs(); err != nil {
		return s, err
	}
	if s.FPU, err = v.GetFPU(); err != nil {
		return s, err
	}
	if v.vm.kvm.CheckExtension(CapXSAVE) > 0 {
		x, err := v.GetXSAVE()
		if err != nil {
			return s, err
		}
		s.XSAVE = make([]byte, XSAVESize)
		for i, w := range x.Region {
			s.XSAVE[4*i], s.XSAVE[4*i+1], s.XSAVE[4*i+2], s.XSAVE[4*i+3] = byte(w), byte(w>>8), byte(w>>16), byte(w>>24)
		}
	}
	if v.vm.kvm.CheckExtension(CapXCRs) > 0 {
		x, err := v.GetXCRs()
		if err != nil {
			return s, err
		}
		s.XCRs = append([]XCR{}, x.XCRs[:min(x.NrXCRs, maxXCRs)]...)
	}
	idx, err := v.MSRsToSave()
	if err != nil {
		return s, err
	}
	if s.MSRs, err = v.GetMSRs(idx); err != nil {
		return s, err
	}
	l, err := v.GetLAPIC()
	if err != nil {
		return s, err
	}
	s.LAPIC = append([]byte{}, l.Regs[:]...)
	if s.Events, err = v.GetVCPUEvents(); err != nil {
		return s, err
	}
	if s.DebugRegs, err = v.GetDebugRegs(); err != nil {
		return s, err
	}
	return s, nil
}

// RestoreState loads a state saved by SaveState into this vCPU, which must
// be paused or not yet started, and must already have the guest's CPUID
// (KVM_SET_CPUID2): KVM checks MSRs, XSAVE features and control-register
// bits against it.
//
// The order is QEMU's (target/i386/kvm/kvm.c kvm_arch_put_registers, with
// the APIC loaded before it as QEMU's apic device does), for these reasons:
//  1. sregs: sets EFER, CR0/CR4 and the APIC base. MSRs such as the
//     syscall ones and the LAPIC's interpretation (xAPIC or x2APIC mode)
//     depend on them.
//  2. regs, FPU, XSAVE, XCRs: plain register state.
//  3. MSRs except IA32_TSC_DEADLINE; IA32_TSC among them, so the guest's
//     TSC continues from where the source stopped it.
//  4. LAPIC (KVM_SET_LAPIC). It resets the LAPIC timer, so:
//  5. IA32_TSC_DEADLINE, only now: the deadline is armed against the
//     LAPIC restored in 4 and the TSC restored in 3.
//  6. vCPU events (pending exception, interrupt, NMI, interrupt shadow),
//     after the LAPIC so that the interrupt state they describe is not
//     clobbered by it; KVM_VCPUEVENT_VALID_NMI_PENDING and _SIPI_VECTOR are
//     set so that those fields are applied, as QEMU does.
//  7. MP state (runnable, halted...) after the events, as in QEMU.
//  8. debug registers.
func (v *VCPU) RestoreState(s CPUState) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("vCPU %d: %w", v.ID, err)
	}
	if err := v.checkPaused("restoring vCPU state"); err != nil {
		return err
	}
	var err error
	v.Do(func() { err = v.restoreState(s) })
	if err != nil {
		return fmt.Errorf("restoring vCPU %d: %w", v.ID, err)
	}
	return nil
}

func (v *VCPU) restoreState(s CPUState) error {
	if err := v.SetSregs(s.Sregs); err != nil {
		return err
	}
	if err := v.SetRegs(s.Regs); err != nil {
		return err
	}
	if err := v.SetFPU(s.FPU); err != nil {
		return err
	}
	if s.XSAVE != nil {
		var x XSAVE
		for i := range x.Region {
			b := s.XSAVE[4*i:]
			x.Region[i] = uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		}
		if err := v.SetXSAVE(x); err != nil {
			return err
		}
	}
	if s.XCRs != nil {
		x := XCRs{NrXCRs: uint32(len(s.XCRs))}
		copy(x.XCRs[:], s.XCRs)
		if err := v.SetXCRs(x); err != nil {
			return err
		}
	}
	var deadline []MSR
	var rest []MSR
	for _, m := range s.MSRs {
		if m.Index == msrTSCDeadline {
			deadline = append(deadline, m)
		} else {
			rest = append(rest, m)
		}
	}
	if err := v.SetMSRs(rest); err != nil {
		return err
	}
	var l LAPICState
	copy(l.Regs[:], s.LAPIC)
	if err := v.SetLAPIC(l); err != nil {
		return err
	}
	if err := v.SetMSRs(deadline); err != nil {
		return err
	}
	e := s.Events
	e.Flags |= eventsValidNMIPending | eventsValidSIPIVector
	if err := v.SetVCPUEvents(e); err != nil {
		return err
	}
	if err := v.SetMPState(MPState{State: s.MPState}); err != nil {
		return err
	}
	return v.SetDebugRegs(s.DebugRegs)
}

// Control-register and EFER bits Validate checks (Intel SDM Vol. 3A §2.5,
// §2.2.1).
const (
	cr0PE   = 1 << 0
	cr0PG   = 1 << 31
	cr4PAE  = 1 << 5
	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// Validate rejects states that no real vCPU can be in, with an error that
// names the field. KVM checks much of this again, but its EINVAL does not
// say which value was wrong.
//
// UNTRUSTED: s comes from a migration stream or a snapshot file.
func (s *CPUState) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if s.XSAVE != nil && len(s.XSAVE) != XSAVESize {
		bad("XSAVE area is %d bytes, want %d", len(s.XSAVE), XSAVESize)
	}
	if len(s.LAPIC) != LAPICSize {
		bad("LAPIC state is %d bytes, want %d", len(s.LAPIC), LAPICSize)
	}
	if len(s.XCRs) > maxXCRs {
		bad("%d XCRs, at most %d", len(s.XCRs), maxXCRs)
	}
	if len(s.MSRs) > maxSavedMSR {
		bad("%d MSRs, at most %d", len(s.MSRs), maxSavedMSR)
	} else {
		seen := make(map[uint32]bool, len(s.MSRs))
		for _, m := range s.MSRs {
			if seen[m.Index] {
				bad("MSR %#x appears twice", m.Index)
			}
			seen[m.Index] = true
		}
	}
	if s.MPState > MPStateSipiReceived {
		bad("MP state %d is not one of KVM_MP_STATE_RUNNABLE..SIPI_RECEIVED (0-4)", s.MPState)
	}

	sr := &s.Sregs
	for _, c := range []struct {
		name string
		seg  *Segment
	}{{"CS", &sr.CS}, {"DS", &sr.DS}, {"ES", &sr.ES}, {"FS", &sr.FS}, {"GS", &sr.GS},
		{"SS", &sr.SS}, {"TR", &sr.TR}, {"LDT", &sr.LDT}} {
		name, seg := c.name, c.seg
		if seg.Type > 15 || seg.DPL > 3 || seg.Present > 1 || seg.DB > 1 || seg.S > 1 || seg.L > 1 ||
			seg.G > 1 || seg.AVL > 1 || seg.Unusable > 1 {
			bad("segment %s has impossible attributes %+v", name, *seg)
		}
	}
	if sr.CR0&cr0PG != 0 && sr.CR0&cr0PE == 0 {
		bad("CR0 %#x: paging without protected mode", sr.CR0)
	}
	if sr.EFER&eferLMA != 0 && (sr.EFER&eferLME == 0 || sr.CR0&cr0PG == 0 || sr.CR4&cr4PAE == 0) {
		bad("EFER %#x: long mode active without LME, CR0.PG and CR4.PAE (CR0 %#x CR4 %#x)", sr.EFER, sr.CR0, sr.CR4)
	}

	e := &s.Events
	for name, b := range map[string]uint8{
		"exception.injected": e.Exception.Injected, "exception.pending": e.Exception.Pending,
		"exception.has_error_code": e.Exception.HasErrorCode, "exception_has_payload": e.ExceptionHasPayload,
		"interrupt.injected": e.Interrupt.Injected, "interrupt.soft": e.Interrupt.Soft,
		"nmi.injected": e.NMI.Injected, "nmi.pending": e.NMI.Pending, "nmi.masked": e.NMI.Masked,
		"smi.smm": e.SMI.SMM, "smi.pending": e.SMI.Pending, "smi.smm_inside_nmi": e.SMI.SMMInsideNMI,
		"smi.latched_init": e.SMI.LatchedInit, "triple_fault.pending": e.TripleFault.Pending,
	} {
		if b > 1 {
			bad("vCPU event %s = %d, want 0 or 1", name, b)
		}
	}
	if (e.Exception.Injected != 0 || e.Exception.Pending != 0) && e.Exception.Nr >= 32 {
		bad("pending exception vector %d is not an exception (0-31)", e.Exception.Nr)
	}
	if e.Interrupt.Shadow > 3 {
		bad("interrupt shadow %#x has unknown bits (KVM_X86_SHADOW_INT_MOV_SS|STI)", e.Interrupt.Shadow)
	}
	if e.Flags&^eventsKnownFlags != 0 {
		bad("vCPU events flags %#x has unknown bits", e.Flags)
	}
	if s.DebugRegs.Flags != 0 {
		bad("debug registers flags %#x, want 0", s.DebugRegs.Flags)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid vCPU state: %w", errors.Join(errs...))
	}
	return nil
}

// SaveState reads the VM-wide state held in KVM. Every vCPU must be
// paused: the irqchip and PIT change as the guest runs.
func (vm *VM) SaveState() (VMState, error) {
	for _, v := range vm.vcpus {
		if err := v.checkPaused("saving VM state"); err != nil {
			return VMState{}, err
		}
	}
	var s VMState
	for _, c := range []struct {
		id  uint32
		dst *[]byte
	}{{IRQChipPICMaster, &s.PICMaster}, {IRQChipPICSlave, &s.PICSlave}, {IRQChipIOAPIC, &s.IOAPIC}} {
		chip, err := vm.GetIRQChip(c.id)
		if err != nil {
			return s, fmt.Errorf("irqchip %d: %w", c.id, err)
		}
		*c.dst = append([]byte{}, chip.Chip[:]...)
	}
	var err error
	if s.PIT, err = vm.GetPIT(); err != nil {
		return s, err
	}
	// The clock last, closest to the moment the vCPUs stopped being
	// useful: with KVM_CLOCK_REALTIME the destination adds the time that
	// passes from here to its KVM_SET_CLOCK.
	if s.Clock, err = vm.GetClock(); err != nil {
		return s, err
	}
	return s, nil
}

// RestoreState loads a VMState. Call it after every vCPU's RestoreState,
// with the vCPUs paused or not yet started:
//
//   - The irqchips after the LAPICs: KVM_SET_IRQCHIP of the IOAPIC
//     re-evaluates its pins and may deliver to a LAPIC, which must already
//     hold its restored state (QEMU's device order: apic, then ioapic and
//     pic).
//   - The kvmclock last, right before the guest resumes (QEMU sets it when
//     the VM starts running). If s.Clock.Flags has ClockRealtime, KVM moves
//     the clock forward by the CLOCK_REALTIME time elapsed since the save
//     (api.rst KVM_SET_CLOCK), so the guest's clock counts the migration
//     downtime; this needs source and destination wall clocks in sync
//     (NTP). Clear the flag to have the clock resume where it stopped.
//     KVM_CLOCK_TSC_STABLE is informational and ignored by KVM_SET_CLOCK.
func (vm *VM) RestoreState(s VMState) error {
	if err := s.Validate(); err != nil {
		return err
	}
	for _, v := range vm.vcpus {
		if err := v.checkPaused("restoring VM state"); err != nil {
			return err
		}
	}
	for _, c := range []struct {
		id  uint32
		src []byte
	}{{IRQChipPICMaster, s.PICMaster}, {IRQChipPICSlave, s.PICSlave}, {IRQChipIOAPIC, s.IOAPIC}} {
		chip := IRQChip{ChipID: c.id}
		copy(chip.Chip[:], c.src)
		if err := vm.SetIRQChip(chip); err != nil {
			return fmt.Errorf("irqchip %d: %w", c.id, err)
		}
	}
	if err := vm.SetPIT(s.PIT); err != nil {
		return err
	}
	c := s.Clock
	c.Flags &= ClockRealtime // the only flag KVM_SET_CLOCK acts on
	return vm.SetClock(c)
}

// PIT flags and field ranges (arch/x86/include/uapi/asm/kvm.h, i8254.c).
const (
	pitFlagsHPETLegacy  = 1 << 0 // KVM_PIT_FLAGS_HPET_LEGACY
	pitFlagsSpeakerData = 1 << 1 // KVM_PIT_FLAGS_SPEAKER_DATA_ON
	pitModeUnprogrammed = 0xff
)

// Validate rejects impossible VM states.
//
// UNTRUSTED: s comes from a migration stream or a snapshot file.
func (s *VMState) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	for name, b := range map[string][]byte{"PIC master": s.PICMaster, "PIC slave": s.PICSlave, "IOAPIC": s.IOAPIC} {
		if len(b) != IRQChipSize {
			bad("%s state is %d bytes, want %d", name, len(b), IRQChipSize)
		}
	}
	for i, c := range s.PIT.Channels {
		// 8254 datasheet: six counter modes, read/write modes 1-3
		// (LSB, MSB, LSB then MSB), a 16-bit count where 0 means 65536.
		// KVM marks a channel never programmed with mode 0xff
		// (arch/x86/kvm/i8254.c kvm_pit_reset).
		if (c.Mode > 5 && c.Mode != pitModeUnprogrammed) || c.RWMode > 3 || c.BCD > 1 || c.Gate > 1 || c.Count > 0x10000 ||
			c.ReadState > 4 || c.WriteState > 4 || c.CountLatched > 4 || c.StatusLatched > 1 {
			bad("PIT channel %d has impossible values %+v", i, c)
		}
	}
	if s.PIT.Flags&^(pitFlagsHPETLegacy|pitFlagsSpeakerData) != 0 {
		bad("PIT flags %#x has unknown bits", s.PIT.Flags)
	}
	if s.Clock.Flags&^(ClockTSCStable|ClockRealtime|ClockHostTSC) != 0 {
		bad("kvmclock flags %#x has unknown bits", s.Clock.Flags)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid VM state: %w", errors.Join(errs...))
	}
	return nil
}

// GetCPUID reads what the CPUID instruction returns in this vCPU
// (KVM_GET_CPUID2): the table given to KVM_SET_CPUID2, with the bits KVM
// keeps up to date at run time (OSXSAVE, OSPKE, the APIC bit) as they are
// now. A migration sends it so that the destination presents the same CPU.
func (v *VCPU) GetCPUID() ([]CPUIDEntry, error) {
	c := new(cpuid2)
	c.Nent = maxCPUIDEntries
	if _, err := ioctlPtr(v.fd, kvmGetCPUID2, c); err != nil {
		return nil, wrap("KVM_GET_CPUID2", err)
	}
	return append([]CPUIDEntry(nil), c.Entries[:min(c.Nent, maxCPUIDEntries)]...), nil
}

// SetTSCKHz sets the guest TSC frequency (KVM_SET_TSC_KHZ), which KVM can
// do only with TSC scaling (KVM_CAP_TSC_CONTROL).
func (v *VCPU) SetTSCKHz(khz uint32) error {
	_, err := ioctl(v.fd, kvmSetTSCKHz, uintptr(khz))
	return wrap("KVM_SET_TSC_KHZ", err)
}
