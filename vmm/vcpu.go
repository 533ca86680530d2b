package vmm

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// VCPU is one virtual CPU: a KVM vCPU file descriptor, its shared kvm_run
// page, and the state machine that lets other goroutines pause, resume and
// stop it (vcpu_run.go). The register accessors below are thin wrappers of
// the KVM_GET_*/KVM_SET_* ioctls; each names its ioctl.
type VCPU struct {
	ID  int
	vm  *VM
	fd  int
	run []byte // struct kvm_run, mmap'd from fd

	mu      sync.Mutex
	changed *sync.Cond // signalled on every state or request change
	state   VCPUState
	want    VCPUState // what other goroutines asked for
	tid     int       // OS thread running KVM_RUN, for kicks
	work    []func()  // closures to run on the vCPU thread while paused
	exit    *StopInfo // why the vCPU stopped, once it has

	// pendingCompletion: the last exit was an I/O or MMIO access that KVM
	// finishes only on the next KVM_RUN (api.rst "KVM_RUN": "for KVM_EXIT_IO,
	// KVM_EXIT_MMIO ... the corresponding operations are complete (and guest
	// state is consistent) only after userspace has re-entered the kernel
	// with KVM_RUN"). Pausing must re-enter once with immediate_exit first.
	pendingCompletion bool
}

func newVCPU(vm *VM, id, fd int, run []byte) *VCPU {
	v := &VCPU{ID: id, vm: vm, fd: fd, run: run, state: VCPUCreated, want: VCPURunning}
	v.changed = sync.NewCond(&v.mu)
	return v
}

func (v *VCPU) close() {
	unix.Munmap(v.run)
	unix.Close(v.fd)
}

// GetRegs reads the general-purpose registers (KVM_GET_REGS).
func (v *VCPU) GetRegs() (Regs, error) {
	var r Regs
	_, err := ioctlPtr(v.fd, kvmGetRegs, &r)
	return r, wrap("KVM_GET_REGS", err)
}

// SetRegs writes the general-purpose registers (KVM_SET_REGS).
func (v *VCPU) SetRegs(r Regs) error {
	_, err := ioctlPtr(v.fd, kvmSetRegs, &r)
	return wrap("KVM_SET_REGS", err)
}

// GetSregs reads segment and control registers (KVM_GET_SREGS).
func (v *VCPU) GetSregs() (Sregs, error) {
	var s Sregs
	_, err := ioctlPtr(v.fd, kvmGetSregs, &s)
	return s, wrap("KVM_GET_SREGS", err)
}

// SetSregs writes segment and control registers (KVM_SET_SREGS).
func (v *VCPU) SetSregs(s Sregs) error {
	_, err := ioctlPtr(v.fd, kvmSetSregs, &s)
	return wrap("KVM_SET_SREGS", err)
}

// GetFPU reads x87/SSE state (KVM_GET_FPU).
func (v *VCPU) GetFPU() (FPU, error) {
	var f FPU
	_, err := ioctlPtr(v.fd, kvmGetFPU, &f)
	return f, wrap("KVM_GET_FPU", err)
}

// SetFPU writes x87/SSE state (KVM_SET_FPU).
func (v *VCPU) SetFPU(f FPU) error {
	_, err := ioctlPtr(v.fd, kvmSetFPU, &f)
	return wrap("KVM_SET_FPU", err)
}

// GetLAPIC reads the in-kernel local APIC registers (KVM_GET_LAPIC).
func (v *VCPU) GetLAPIC() (LAPICState, error) {
	var l LAPICState
	_, err := ioctlPtr(v.fd, kvmGetLAPIC, &l)
	return l, wrap("KVM_GET_LAPIC", err)
}

// SetLAPIC writes the in-kernel local APIC registers (KVM_SET_LAPIC).
func (v *VCPU) SetLAPIC(l LAPICState) error {
	_, err := ioctlPtr(v.fd, kvmSetLAPIC, &l)
	return wrap("KVM_SET_LAPIC", err)
}

// GetMPState reads the vCPU's multiprocessing state (KVM_GET_MP_STATE).
func (v *VCPU) GetMPState() (MPState, error) {
	var s MPState
	_, err := ioctlPtr(v.fd, kvmGetMPState, &s)
	return s, wrap("KVM_GET_MP_STATE", err)
}

// SetMPState writes the multiprocessing state (KVM_SET_MP_STATE).
func (v *VCPU) SetMPState(s MPState) error {
	_, err := ioctlPtr(v.fd, kvmSetMPState, &s)
	return wrap("KVM_SET_MP_STATE", err)
}

// GetVCPUEvents reads pending events (KVM_GET_VCPU_EVENTS).
func (v *VCPU) GetVCPUEvents() (VCPUEvents, error) {
	var e VCPUEvents
	_, err := ioctlPtr(v.fd, kvmGetVCPUEvents, &e)
	return e, wrap("KVM_GET_VCPU_EVENTS", err)
}

// SetVCPUEvents writes pending events (KVM_SET_VCPU_EVENTS).
func (v *VCPU) SetVCPUEvents(e VCPUEvents) error {
	_, err := ioctlPtr(v.fd, kvmSetVCPUEvents, &e)
	return wrap("KVM_SET_VCPU_EVENTS", err)
}

// GetDebugRegs reads DR0-3, DR6, DR7 (KVM_GET_DEBUGREGS).
func (v *VCPU) GetDebugRegs() (DebugRegs, error) {
	var d DebugRegs
	_, err := ioctlPtr(v.fd, kvmGetDebugRegs, &d)
	return d, wrap("KVM_GET_DEBUGREGS", err)
}

// SetDebugRegs writes the debug registers (KVM_SET_DEBUGREGS).
func (v *VCPU) SetDebugRegs(d DebugRegs) error {
	_, err := ioctlPtr(v.fd, kvmSetDebugRegs, &d)
	return wrap("KVM_SET_DEBUGREGS", err)
}

// GetXSAVE reads the extended FPU state (KVM_GET_XSAVE).
func (v *VCPU) GetXSAVE() (XSAVE, error) {
	var x XSAVE
	_, err := ioctlPtr(v.fd, kvmGetXSAVE, &x)
	return x, wrap("KVM_GET_XSAVE", err)
}

// SetXSAVE writes the extended FPU state (KVM_SET_XSAVE).
func (v *VCPU) SetXSAVE(x XSAVE) error {
	_, err := ioctlPtr(v.fd, kvmSetXSAVE, &x)
	return wrap("KVM_SET_XSAVE", err)
}

// GetXCRs reads the extended control registers, XCR0 (KVM_GET_XCRS).
func (v *VCPU) GetXCRs() (XCRs, error) {
	var x XCRs
	_, err := ioctlPtr(v.fd, kvmGetXCRs, &x)
	return x, wrap("KVM_GET_XCRS", err)
}

// SetXCRs writes the extended control registers (KVM_SET_XCRS).
func (v *VCPU) SetXCRs(x XCRs) error {
	_, err := ioctlPtr(v.fd, kvmSetXCRs, &x)
	return wrap("KVM_SET_XCRS", err)
}

// GetMSRs reads the given model-specific registers (KVM_GET_MSRS).
func (v *VCPU) GetMSRs(indices []uint32) ([]MSR, error) {
	var out []MSR
	for len(indices) > 0 {
		n := min(len(indices), maxMSRs)
		m := new(msrs)
		m.NMSRs = uint32(n)
		for i, idx := range indices[:n] {
			m.Entries[i].Index = idx
		}
		got, err := ioctlPtr(v.fd, kvmGetMSRs, m)
		if err != nil {
			return nil, wrap("KVM_GET_MSRS", err)
		}
		if int(got) != n {
			return nil, fmt.Errorf("KVM_GET_MSRS: MSR %#x could not be read", m.Entries[got].Index)
		}
		out = append(out, m.Entries[:n]...)
		indices = indices[n:]
	}
	return out, nil
}

// SetMSRs writes model-specific registers (KVM_SET_MSRS). KVM returns how
// many it set, stopping at the first it refuses; that one is named in the
// error.
func (v *VCPU) SetMSRs(entries []MSR) error {
	for len(entries) > 0 {
		n := min(len(entries), maxMSRs)
		m := new(msrs)
		m.NMSRs = uint32(n)
		copy(m.Entries[:], entries[:n])
		got, err := ioctlPtr(v.fd, kvmSetMSRs, m)
		if err != nil {
			return wrap("KVM_SET_MSRS", err)
		}
		if int(got) != n {
			return fmt.Errorf("KVM_SET_MSRS: MSR %#x was refused", entries[got].Index)
		}
		entries = entries[n:]
	}
	return nil
}

// SetCPUID sets what the CPUID instruction returns in this vCPU
// (KVM_SET_CPUID2). Must be called before the first KVM_RUN.
func (v *VCPU) SetCPUID(entries []CPUIDEntry) error {
	if len(entries) > maxCPUIDEntries {
		return fmt.Errorf("KVM_SET_CPUID2: %d entries, at most %d", len(entries), maxCPUIDEntries)
	}
	c := new(cpuid2)
	c.Nent = uint32(len(entries))
	copy(c.Entries[:], entries)
	_, err := ioctlPtr(v.fd, kvmSetCPUID2, c)
	return wrap("KVM_SET_CPUID2", err)
}

// TSCKHz returns the guest TSC frequency in kHz (KVM_GET_TSC_KHZ).
func (v *VCPU) TSCKHz() (uint32, error) {
	r, err := ioctl(v.fd, kvmGetTSCKHz, 0)
	return uint32(r), wrap("KVM_GET_TSC_KHZ", err)
}

// Translate walks the guest's page tables for a guest-virtual address
// (KVM_TRANSLATE). Crash reports use it to find the code at RIP.
func (v *VCPU) Translate(gva uint64) (GPA, bool, error) {
	t := translation{LinearAddress: gva}
	if _, err := ioctlPtr(v.fd, kvmTranslate, &t); err != nil {
		return 0, false, wrap("KVM_TRANSLATE", err)
	}
	return GPA(t.PhysicalAddress), t.Valid != 0, nil
}
