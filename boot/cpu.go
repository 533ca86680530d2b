package boot

import (
	"encoding/binary"
	"fmt"

	"govmm/vmm"
)

// The CPU state at the kernel's 64-bit entry point (boot.rst, "64-bit BOOT
// PROTOCOL"): long mode with paging on, an identity map covering the kernel,
// zero page and command line, a GDT with __BOOT_CS/__BOOT_DS, interrupts
// off, and RSI pointing at the zero page. A BIOS and a boot loader would
// normally climb there from real mode; a VMM can set the registers directly.

// GDT descriptors, as the flat 64-bit segments the protocol asks for
// (Intel SDM Vol. 3A §3.4.5 "Segment Descriptors").
var gdt = []uint64{
	0,                  // 0x00 null
	0,                  // 0x08 unused
	0x00af9b000000ffff, // 0x10 __BOOT_CS: code, present, DPL0, L=1 (64-bit), G=1
	0x00cf93000000ffff, // 0x18 __BOOT_DS: data, present, writable, D/B=1, G=1
	0x0000890000000067, // 0x20 TSS: 64-bit available TSS, limit 0x67, base 0 (low half)
	0,                  // 0x28 TSS (high half of the 16-byte system descriptor)
}

func writeGDT(mem *vmm.GuestMemory) error {
	b := make([]byte, 8*len(gdt))
	for i, d := range gdt {
		binary.LittleEndian.PutUint64(b[8*i:], d)
	}
	if _, err := mem.WriteAt(b, int64(GDTAddr)); err != nil {
		return fmt.Errorf("writing GDT: %w", err)
	}
	return nil
}

// Page-table entry bits (Intel SDM Vol. 3A §4.5).
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	ptePageSize = 1 << 7 // in a PD entry: this maps a 2 MiB page
)

// writePageTables identity-maps the first 4 GiB with 2 MiB pages: one PML4
// entry → one PDPT with four entries → four page directories of 512 entries.
func writePageTables(mem *vmm.GuestMemory) error {
	le := binary.LittleEndian
	pml4 := make([]byte, vmm.PageSize)
	le.PutUint64(pml4, uint64(PDPTAddr)|ptePresent|pteWritable)
	pdpt := make([]byte, vmm.PageSize)
	pds := make([]byte, 4*vmm.PageSize)
	for i := 0; i < 4; i++ {
		le.PutUint64(pdpt[8*i:], (uint64(PDAddr)+uint64(i)*vmm.PageSize)|ptePresent|pteWritable)
	}
	for i := 0; i < 4*512; i++ {
		le.PutUint64(pds[8*i:], uint64(i)<<21|ptePresent|pteWritable|ptePageSize)
	}
	for _, w := range []struct {
		b    []byte
		addr vmm.GPA
	}{{pml4, PML4Addr}, {pdpt, PDPTAddr}, {pds, PDAddr}} {
		if _, err := mem.WriteAt(w.b, int64(w.addr)); err != nil {
			return fmt.Errorf("writing page tables: %w", err)
		}
	}
	return nil
}

// Control-register bits (Intel SDM Vol. 3A §2.5, AMD APM Vol. 2 §3.1.7).
const (
	cr0PE   = 1 << 0  // protection enable
	cr0ET   = 1 << 4  // extension type (always 1 on modern CPUs)
	cr0NE   = 1 << 5  // native x87 error reporting
	cr0PG   = 1 << 31 // paging
	cr4PAE  = 1 << 5  // physical address extension, required by long mode
	eferLME = 1 << 8  // long mode enable
	eferLMA = 1 << 10 // long mode active
)

// EntryState is the boot vCPU's register state at the kernel entry point.
func EntryState(sregs vmm.Sregs) (vmm.Regs, vmm.Sregs) {
	code := vmm.Segment{Base: 0, Limit: 0xffffffff, Selector: bootCS, Type: 0xb,
		Present: 1, S: 1, L: 1, G: 1}
	data := vmm.Segment{Base: 0, Limit: 0xffffffff, Selector: bootDS, Type: 0x3,
		Present: 1, S: 1, DB: 1, G: 1}
	sregs.CS = code
	sregs.DS, sregs.ES, sregs.FS, sregs.GS, sregs.SS = data, data, data, data, data
	sregs.TR = vmm.Segment{Selector: bootTR, Limit: 0x67, Type: 0xb, Present: 1}
	sregs.GDT = vmm.DescriptorTable{Base: uint64(GDTAddr), Limit: uint16(8*len(gdt) - 1)}
	// No IDT: interrupts stay disabled until the kernel installs its own,
	// and an exception before that should triple-fault loudly.
	sregs.IDT = vmm.DescriptorTable{}
	sregs.CR0 = cr0PE | cr0ET | cr0NE | cr0PG
	sregs.CR3 = uint64(PML4Addr)
	sregs.CR4 = cr4PAE
	sregs.EFER = eferLME | eferLMA

	regs := vmm.Regs{
		RIP:    uint64(KernelAddr) + 0x200, // startup_64: 64-bit entry is at load address + 0x200
		RSI:    uint64(ZeroPageAddr),       // boot.rst: "%rsi must hold the base address of the struct boot_params"
		RSP:    uint64(BootStackTop),
		RBP:    uint64(BootStackTop),
		RFLAGS: 0x2, // bit 1 is reserved and always 1; IF=0
	}
	return regs, sregs
}

// SetupBootVCPU puts a vCPU at the kernel's entry point.
func SetupBootVCPU(v *vmm.VCPU) error {
	sregs, err := v.GetSregs()
	if err != nil {
		return err
	}
	regs, sregs := EntryState(sregs)
	if err := v.SetSregs(sregs); err != nil {
		return err
	}
	return v.SetRegs(regs)
}
