package vmm_test

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
	"time"

	"govmm/vmm"
	"govmm/vmm/testguest"
)

var stateLayout = []vmm.MemoryRegion{{Start: 0, Size: testguest.MinRAM}}

// MSRs and LAPIC registers the state test arms (Intel SDM Vol. 3A §10.5.4.1).
const (
	msrTSC                 = 0x10
	msrTSCDeadline         = 0x6e0
	lapicSVR               = 0xf0  // spurious-interrupt vector; bit 8 enables the APIC
	lapicLVTTimer          = 0x320 // bits 18:17 = 10b: TSC-deadline mode; bit 16: masked
	lapicTimerCurrentCount = 0x390
)

// armTSCDeadline puts the LAPIC timer in TSC-deadline mode (masked, so it
// never interrupts) and arms IA32_TSC_DEADLINE far in the future. KVM
// ignores that MSR unless the LAPIC is in TSC-deadline mode, and
// KVM_SET_LAPIC disarms it: a restore that set MSRs after the LAPIC, or
// the deadline before it, loses the value, and the test sees it.
func armTSCDeadline(t *testing.T, v *vmm.VCPU) uint64 {
	t.Helper()
	l, err := v.GetLAPIC()
	if err != nil {
		t.Fatal(err)
	}
	binary.LittleEndian.PutUint32(l.Regs[lapicSVR:], 0x1ff)
	binary.LittleEndian.PutUint32(l.Regs[lapicLVTTimer:], 2<<17|1<<16|0xec)
	if err := v.SetLAPIC(l); err != nil {
		t.Fatal(err)
	}
	tsc, err := v.GetMSRs([]uint32{msrTSC})
	if err != nil {
		t.Fatal(err)
	}
	deadline := tsc[0].Data + 1<<50
	if err := v.SetMSRs([]vmm.MSR{{Index: msrTSCDeadline, Data: deadline}}); err != nil {
		t.Fatal(err)
	}
	if got, err := v.GetMSRs([]uint32{msrTSCDeadline}); err != nil || got[0].Data != deadline {
		t.Skipf("this KVM does not keep a TSC deadline (read %v, %v)", got, err)
	}
	return deadline
}

// copyRAM copies guest RAM from one VM to another with the same layout,
// as a migration's memory rounds would.
func copyRAM(t *testing.T, dst, src *vmm.GuestMemory) {
	t.Helper()
	for _, r := range src.Regions() {
		from, err := src.Slice(r.Start, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		to, err := dst.Slice(r.Start, r.Size)
		if err != nil {
			t.Fatal(err)
		}
		copy(to, from)
	}
}

// Save the state of VM A, paused in the middle of the Counter loop, copy
// its RAM into a fresh VM B, restore the state there and run B: B must
// carry on the same loop from the same point, with RAM and registers
// consistent at every later pause.
func TestSaveRestoreContinuesTheGuest(t *testing.T) {
	a := newGuestVM(t, stateLayout, testguest.Counter, true)
	deadline := armTSCDeadline(t, a.vcpu)
	a.start()
	waitFor(t, "A to complete 3 passes", func() bool { return page(t, a.vm.Memory, testguest.DataEnd-vmm.PageSize) >= 3 })

	if _, err := a.vcpu.SaveState(); err == nil || !strings.Contains(err.Error(), "pause it first") {
		t.Fatalf("SaveState of a running vCPU: %v, want a 'pause it first' error", err)
	}
	if err := a.vcpu.Pause(); err != nil {
		t.Fatal(err)
	}
	cpu, err := a.vcpu.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	vmState, err := a.vm.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if err := testguest.CheckCounter(a.vm.Memory, cpu.Regs); err != nil {
		t.Fatalf("A's memory and saved registers disagree: %v", err)
	}
	if cpu.Regs.RAX < 3 || len(cpu.MSRs) == 0 || cpu.Sregs.CS.DPL != 3 {
		t.Fatalf("implausible saved state: RAX %d, %d MSRs, CPL %d", cpu.Regs.RAX, len(cpu.MSRs), cpu.Sregs.CS.DPL)
	}
	saved := map[uint32]uint64{}
	for _, m := range cpu.MSRs {
		saved[m.Index] = m.Data
	}
	if _, ok := saved[msrTSC]; !ok {
		t.Error("the saved MSRs lack IA32_TSC")
	}
	if saved[msrTSCDeadline] != deadline {
		t.Errorf("saved IA32_TSC_DEADLINE %#x, want the armed %#x", saved[msrTSCDeadline], deadline)
	}
	t.Logf("saved at RIP %#x RAX %d RDI %#x; %d MSRs; clock %d flags %#x",
		cpu.Regs.RIP, cpu.Regs.RAX, cpu.Regs.RDI, len(cpu.MSRs), vmState.Clock.Clock, vmState.Clock.Flags)

	b := newGuestVM(t, stateLayout, nil, false)
	copyRAM(t, b.vm.Memory, a.vm.Memory)
	if err := b.vcpu.RestoreState(cpu); err != nil {
		t.Fatal(err)
	}
	const downtime = 50 * time.Millisecond
	time.Sleep(downtime) // the migration's downtime, which kvmclock should count
	if err := b.vm.RestoreState(vmState); err != nil {
		t.Fatal(err)
	}
	clock, err := b.vm.GetClock()
	if err != nil {
		t.Fatal(err)
	}
	elapsed := time.Duration(clock.Clock - vmState.Clock.Clock)
	t.Logf("kvmclock advanced %v across the downtime", elapsed)
	if vmState.Clock.Flags&vmm.ClockRealtime != 0 && (elapsed < downtime || elapsed > 10*time.Second) {
		t.Errorf("kvmclock advanced %v across a %v downtime with KVM_CLOCK_REALTIME", elapsed, downtime)
	}

	// B now holds A's state: read it back.
	got, err := b.vcpu.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if got.Regs != cpu.Regs {
		t.Errorf("registers after restore:\n%+v\nwant\n%+v", got.Regs, cpu.Regs)
	}
	if got.Sregs != cpu.Sregs {
		t.Errorf("sregs after restore:\n%+v\nwant\n%+v", got.Sregs, cpu.Sregs)
	}
	if got.FPU != cpu.FPU || !bytes.Equal(got.XSAVE, cpu.XSAVE) || !slices.Equal(got.XCRs, cpu.XCRs) {
		t.Error("FPU/XSAVE/XCR state differs after restore")
	}
	// The LAPIC page, except the timer's current count, which KVM
	// computes when read (the timer here is in TSC-deadline mode, so it
	// reads 0 on both sides anyway).
	for off := 0; off < vmm.LAPICSize; off += 16 {
		if off != lapicTimerCurrentCount && !bytes.Equal(got.LAPIC[off:off+4], cpu.LAPIC[off:off+4]) {
			t.Errorf("LAPIC register %#x = % x after restore, want % x", off, got.LAPIC[off:off+4], cpu.LAPIC[off:off+4])
		}
	}
	if got.MPState != cpu.MPState || got.DebugRegs != cpu.DebugRegs || got.Events != cpu.Events {
		t.Errorf("MP state/debug regs/events differ after restore: %d %+v %+v, want %d %+v %+v",
			got.MPState, got.DebugRegs, got.Events, cpu.MPState, cpu.DebugRegs, cpu.Events)
	}
	wantMSR := map[uint32]uint64{}
	for _, m := range cpu.MSRs {
		wantMSR[m.Index] = m.Data
	}
	for _, m := range got.MSRs {
		if m.Index == msrTSC { // IA32_TSC has moved on since the restore
			if m.Data < wantMSR[m.Index] {
				t.Errorf("TSC went backwards: %d after restore, saved %d", m.Data, wantMSR[m.Index])
			}
			continue
		}
		if w, ok := wantMSR[m.Index]; !ok || w != m.Data {
			t.Errorf("MSR %#x = %#x after restore, want %#x (saved: %v)", m.Index, m.Data, w, ok)
		}
	}

	// Resume B: it must continue A's loop.
	b.start()
	waitFor(t, "B to run 3 more passes", func() bool {
		return page(t, b.vm.Memory, testguest.DataEnd-vmm.PageSize) >= cpu.Regs.RAX+3
	})
	if err := b.vcpu.Pause(); err != nil {
		t.Fatal(err)
	}
	after, err := b.vcpu.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	regs := after.Regs
	if regs.RAX < cpu.Regs.RAX+3 {
		t.Errorf("B's pass counter is %d, want at least %d", regs.RAX, cpu.Regs.RAX+3)
	}
	if err := testguest.CheckCounter(b.vm.Memory, regs); err != nil {
		t.Errorf("B's memory after running on: %v", err)
	}
}

// RestoreState validates before touching the vCPU or VM.
func TestRestoreRejectsImpossibleState(t *testing.T) {
	good := vmm.CPUState{LAPIC: make([]byte, vmm.LAPICSize), XSAVE: make([]byte, vmm.XSAVESize)}
	if err := good.Validate(); err != nil {
		t.Fatalf("zero state with right sizes rejected: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(s *vmm.CPUState)
		want string
	}{
		{"short LAPIC", func(s *vmm.CPUState) { s.LAPIC = s.LAPIC[:100] }, "LAPIC state is 100 bytes"},
		{"missing LAPIC", func(s *vmm.CPUState) { s.LAPIC = nil }, "LAPIC state is 0 bytes"},
		{"long XSAVE", func(s *vmm.CPUState) { s.XSAVE = make([]byte, 5000) }, "XSAVE area is 5000 bytes"},
		{"too many XCRs", func(s *vmm.CPUState) { s.XCRs = make([]vmm.XCR, 17) }, "17 XCRs"},
		{"duplicate MSR", func(s *vmm.CPUState) { s.MSRs = []vmm.MSR{{Index: 0x10}, {Index: 0x10}} }, "MSR 0x10 appears twice"},
		{"too many MSRs", func(s *vmm.CPUState) { s.MSRs = make([]vmm.MSR, 5000) }, "5000 MSRs"},
		{"MP state", func(s *vmm.CPUState) { s.MPState = 9 }, "MP state 9"},
		{"DPL 4", func(s *vmm.CPUState) { s.Sregs.CS.DPL = 4 }, "segment CS"},
		{"LMA without paging", func(s *vmm.CPUState) { s.Sregs.EFER = 0x500 }, "long mode active"},
		{"exception vector", func(s *vmm.CPUState) { s.Events.Exception.Pending, s.Events.Exception.Nr = 1, 40 }, "vector 40"},
		{"event flag", func(s *vmm.CPUState) { s.Events.NMI.Pending = 2 }, "nmi.pending = 2"},
		{"unknown event flags", func(s *vmm.CPUState) { s.Events.Flags = 0x100 }, "flags 0x100"},
	} {
		s := good
		s.LAPIC = append([]byte{}, good.LAPIC...)
		c.edit(&s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", c.name, err, c.want)
		}
	}

	vmGood := vmm.VMState{PICMaster: make([]byte, 512), PICSlave: make([]byte, 512), IOAPIC: make([]byte, 512)}
	if err := vmGood.Validate(); err != nil {
		t.Fatalf("zero VM state rejected: %v", err)
	}
	for _, c := range []struct {
		name string
		edit func(s *vmm.VMState)
		want string
	}{
		{"short IOAPIC", func(s *vmm.VMState) { s.IOAPIC = s.IOAPIC[:1] }, "IOAPIC state is 1 bytes"},
		{"PIT mode", func(s *vmm.VMState) { s.PIT.Channels[2].Mode = 7 }, "PIT channel 2"},
		{"PIT count", func(s *vmm.VMState) { s.PIT.Channels[0].Count = 0x20000 }, "PIT channel 0"},
		{"PIT flags", func(s *vmm.VMState) { s.PIT.Flags = 8 }, "PIT flags"},
		{"clock flags", func(s *vmm.VMState) { s.Clock.Flags = 1 }, "kvmclock flags"},
	} {
		s := vmGood
		c.edit(&s)
		err := s.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: Validate() = %v, want an error containing %q", c.name, err, c.want)
		}
	}
}
