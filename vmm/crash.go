package vmm

import (
	"fmt"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// CPUSnapshot is a vCPU's architectural state and the code bytes at RIP,
// taken when it stops. It feeds the crash report a person reads when the
// guest dies, so it favours what explains a crash over completeness.
type CPUSnapshot struct {
	Valid  bool
	Regs   Regs
	Sregs  Sregs
	CodeAt uint64 // guest-virtual address of Code[0] (== RIP)
	Code   []byte // up to 64 bytes at RIP, if they are mapped
	Err    string // why part of the snapshot is missing
}

// codeBytes is how much code after RIP a crash report disassembles.
const codeBytes = 64

// snapshot captures the vCPU state; called on the vCPU thread.
func (v *VCPU) snapshot() CPUSnapshot {
	var s CPUSnapshot
	var err error
	if s.Regs, err = v.GetRegs(); err != nil {
		s.Err = err.Error()
		return s
	}
	if s.Sregs, err = v.GetSregs(); err != nil {
		s.Err = err.Error()
		return s
	}
	s.Valid = true
	s.CodeAt = s.Sregs.CS.Base + s.Regs.RIP
	gpa, ok, err := v.Translate(s.CodeAt)
	if err != nil || !ok {
		s.Err = fmt.Sprintf("RIP %#x is not mapped by the guest's page tables", s.CodeAt)
		return s
	}
	// The code may straddle a page; take what is in this page, then try
	// the next one separately, since it can map elsewhere.
	n := min(uint64(codeBytes), PageSize-uint64(gpa)%PageSize)
	if b, err := v.vm.Memory.Slice(gpa, n); err == nil {
		s.Code = append(s.Code, b...)
	}
	if rest := uint64(codeBytes) - n; rest > 0 && len(s.Code) == int(n) {
		if gpa2, ok, err := v.Translate(s.CodeAt + n); err == nil && ok {
			if b, err := v.vm.Memory.Slice(gpa2, rest); err == nil {
				s.Code = append(s.Code, b...)
			}
		}
	}
	return s
}

// cpuMode returns the x86asm decoding mode for the vCPU's current code
// segment: 64 in long mode (CS.L), else 32 or 16 by CS.D.
func (s *CPUSnapshot) cpuMode() int {
	switch {
	case s.Sregs.EFER&(1<<10) != 0 && s.Sregs.CS.L != 0:
		return 64
	case s.Sregs.CR0&1 != 0 && s.Sregs.CS.DB != 0:
		return 32
	default:
		return 16
	}
}

// Report formats the snapshot for people: registers, control registers and
// the instructions at RIP decoded with x86asm (Intel syntax, like the kernel's
// own "Code:" line but readable).
func (s *CPUSnapshot) Report() string {
	var b strings.Builder
	if !s.Valid {
		fmt.Fprintf(&b, "  (no CPU state: %s)\n", s.Err)
		return b.String()
	}
	r, sr := s.Regs, s.Sregs
	fmt.Fprintf(&b, "  RIP=%016x RFLAGS=%08x  mode=%d-bit CPL=%d\n", r.RIP, r.RFLAGS, s.cpuMode(), sr.CS.DPL)
	fmt.Fprintf(&b, "  RAX=%016x RBX=%016x RCX=%016x RDX=%016x\n", r.RAX, r.RBX, r.RCX, r.RDX)
	fmt.Fprintf(&b, "  RSI=%016x RDI=%016x RBP=%016x RSP=%016x\n", r.RSI, r.RDI, r.RBP, r.RSP)
	fmt.Fprintf(&b, "  R8 =%016x R9 =%016x R10=%016x R11=%016x\n", r.R8, r.R9, r.R10, r.R11)
	fmt.Fprintf(&b, "  R12=%016x R13=%016x R14=%016x R15=%016x\n", r.R12, r.R13, r.R14, r.R15)
	fmt.Fprintf(&b, "  CS=%04x SS=%04x DS=%04x ES=%04x FS=%04x(base %x) GS=%04x(base %x)\n",
		sr.CS.Selector, sr.SS.Selector, sr.DS.Selector, sr.ES.Selector,
		sr.FS.Selector, sr.FS.Base, sr.GS.Selector, sr.GS.Base)
	fmt.Fprintf(&b, "  CR0=%08x CR2=%016x CR3=%016x CR4=%08x EFER=%x\n", sr.CR0, sr.CR2, sr.CR3, sr.CR4, sr.EFER)
	fmt.Fprintf(&b, "  GDT=%x/%x IDT=%x/%x APIC_BASE=%x\n", sr.GDT.Base, sr.GDT.Limit, sr.IDT.Base, sr.IDT.Limit, sr.APICBase)
	if len(s.Code) == 0 {
		fmt.Fprintf(&b, "  code at RIP: unavailable (%s)\n", s.Err)
		return b.String()
	}
	fmt.Fprintf(&b, "  code at RIP:\n")
	b.WriteString(Disassemble(s.Code, s.CodeAt, s.cpuMode(), 8))
	return b.String()
}

// Disassemble decodes up to max instructions of code located at pc, one per
// line as "address: bytes  instruction".
func Disassemble(code []byte, pc uint64, mode, max int) string {
	var b strings.Builder
	for i := 0; i < max && len(code) > 0; i++ {
		inst, err := x86asm.Decode(code, mode)
		if err != nil {
			fmt.Fprintf(&b, "    %016x: % x  (undecodable: %v)\n", pc, code[:min(len(code), 8)], err)
			break
		}
		marker := "  "
		if i == 0 {
			marker = "=>"
		}
		fmt.Fprintf(&b, "  %s%016x: %-24s %s\n", marker, pc, fmt.Sprintf("% x", code[:inst.Len]), x86asm.IntelSyntax(inst, pc, nil))
		code = code[inst.Len:]
		pc += uint64(inst.Len)
	}
	return b.String()
}

// Snapshot captures a paused (or not running) vCPU's registers and the code
// at RIP, as a crash report shows them: `GET /vcpus` on the control socket
// uses it to show where a live guest is, like QEMU's `info registers`.
func (v *VCPU) Snapshot() CPUSnapshot {
	var s CPUSnapshot
	v.Do(func() { s = v.snapshot() })
	return s
}
