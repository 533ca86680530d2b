// Package testguest builds tiny guests for KVM-level tests of dirty
// logging, state save/restore and live migration: a few instructions of
// 64-bit user-mode (CPL3) code, placed in RAM with their page tables, GDT
// and TSS, and a vCPU set up to run them directly in long mode.
//
// Why CPL3 long mode: it is the only mode that runs at native speed on
// every KVM, including PVM (/dev/kvm of this project's CI machines runs
// real-mode and ring-0 code by emulating it, a million times slower; see
// shared/notes/environment.md). Three consequences shape the guests:
//   - every page-table entry has the U (user) bit;
//   - CPL3 cannot do port I/O or hlt, so the guest talks to the VMM with a
//     write to Doorbell, an address outside RAM that KVM reports as
//     KVM_EXIT_MMIO;
//   - there is no IDT: a fault triple-faults (KVM_EXIT_SHUTDOWN), which a
//     test sees as a stopped vCPU with a crash report.
//
// Page tables have their Accessed and Dirty bits preset, so that the CPU
// never writes them, and only the data pages are writable: a dirty-log test
// then sees only the pages the program writes. (KVM marks a page dirty as
// soon as it maps it writable, even for a read, when the guest's PTE is
// writable and already dirty: arch/x86/kvm/mmu/spte.c make_spte. So a
// page the guest only reads must not be mapped writable.)
//
// Memory map (guest-virtual = guest-physical, except the doorbell page):
//
//	0x1000 PML4   0x2000 PDPT   0x3000 PD   0x4000 PT (0-2 MiB)   0x5000 PT (2-4 MiB)
//	0x6000 GDT    0x7000 TSS    0x8000 code   0x9000 mailbox (Writer)
//	0x100000-0x200000 DataStart-DataEnd: the 256 pages the programs write
//	virtual 0x3ff000 → physical Doorbell (not RAM: MMIO exit)
package testguest

import (
	"encoding/binary"
	"fmt"

	"govmm/vmm"
)

// Addresses of the layout above.
const (
	PML4    vmm.GPA = 0x1000
	PDPT    vmm.GPA = 0x2000
	PD      vmm.GPA = 0x3000
	PTLow   vmm.GPA = 0x4000
	PTHigh  vmm.GPA = 0x5000
	GDT     vmm.GPA = 0x6000
	TSS     vmm.GPA = 0x7000
	Code    vmm.GPA = 0x8000
	Mailbox vmm.GPA = 0x9000

	DataStart vmm.GPA = 0x100000
	DataEnd   vmm.GPA = 0x200000
	DataPages         = int(DataEnd-DataStart) / vmm.PageSize

	// DoorbellVirt is where the program writes to reach the VMM;
	// Doorbell is the guest-physical address it maps to: in the PC's MMIO
	// hole (3-4 GiB), clear of the IOAPIC and LAPIC, and outside RAM of
	// any size up to 3 GiB.
	DoorbellVirt uint64  = 0x3ff000
	Doorbell     vmm.GPA = 0xd0000000

	// MinRAM is the RAM the layout needs, from GPA 0.
	MinRAM = uint64(DataEnd)
)

// GDT selectors (index*8 | RPL). The user segments carry RPL 3.
const (
	selUserData = 0x18 | 3
	selUserCode = 0x20 | 3
	selTSS      = 0x28
)

// Page-table entry bits (Intel SDM Vol. 3A §4.5): present, writable, user,
// accessed, dirty.
const (
	ptePresent  = 1 << 0
	pteWritable = 1 << 1
	pteUser     = 1 << 2
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	pteTable    = ptePresent | pteWritable | pteUser | pteAccessed
	pteReadOnly = ptePresent | pteUser | pteAccessed                          // code, mailbox
	ptePage     = ptePresent | pteWritable | pteUser | pteAccessed | pteDirty // data, doorbell
)

// Counter is QEMU's migration-test guest in 64-bit user mode: forever, it
// increments RAX (the pass number) and stores it into the first 8 bytes of
// every page of [DataStart, DataEnd). It never exits, so it runs at native
// speed; CheckCounter verifies memory against its registers at any pause.
//
//	+0  48 ff c0              inc rax              ; next pass
//	+3  bf 00 00 10 00        mov edi, 0x100000    ; rdi = DataStart (zero-extended)
//	+8  48 89 07              mov [rdi], rax       ; stamp the page
//	+11 48 81 c7 00 10 00 00  add rdi, 0x1000      ; next page
//	+18 48 81 ff 00 00 20 00  cmp rdi, 0x200000    ; DataEnd?
//	+25 75 ed                 jne +8               ; no: stamp it
//	+27 eb e3                 jmp +0               ; yes: next pass
var Counter = []byte{
	0x48, 0xff, 0xc0,
	0xbf, 0x00, 0x00, 0x10, 0x00,
	0x48, 0x89, 0x07,
	0x48, 0x81, 0xc7, 0x00, 0x10, 0x00, 0x00,
	0x48, 0x81, 0xff, 0x00, 0x00, 0x20, 0x00,
	0x75, 0xed,
	0xeb, 0xe3,
}

// Offsets of Counter's instructions, for CheckCounter.
const (
	counterInc   = 0
	counterMovDI = 3
	counterStore = 8
	counterAdd   = 11
	counterCmp   = 18
	counterJne   = 25
	counterJmp   = 27
)

// Writer writes the pages the VMM asks for, one round at a time, and rings
// the doorbell after each round. The VMM posts a round by writing the list
// of page addresses (8 bytes each, ending with 0) at Mailbox+8, then a new
// sequence number at Mailbox (PostRound). The program stores the sequence
// number into the first 8 bytes of each listed page, then writes it to the
// doorbell. Between rounds it only reads the mailbox, so it dirties
// nothing.
//
//	+0  48 8b 0c 25 00 90 00 00  mov rcx, [0x9000]    ; wait: rcx = posted sequence number
//	+8  48 39 d9                 cmp rcx, rbx         ; rbx = last one served
//	+11 74 f3                    je +0                ; nothing new: poll again
//	+13 48 89 cb                 mov rbx, rcx         ; serve it
//	+16 be 08 90 00 00           mov esi, 0x9008      ; rsi = the list
//	+21 48 8b 3e                 mov rdi, [rsi]       ; next: rdi = page address
//	+24 48 85 ff                 test rdi, rdi
//	+27 74 09                    jz +38               ; 0 ends the list
//	+29 48 89 1f                 mov [rdi], rbx       ; write the page
//	+32 48 83 c6 08              add rsi, 8
//	+36 eb ef                    jmp +21
//	+38 48 89 1c 25 00 f0 3f 00  mov [0x3ff000], rbx  ; doorbell: round rbx done (MMIO exit)
//	+46 eb d0                    jmp +0
var Writer = []byte{
	0x48, 0x8b, 0x0c, 0x25, 0x00, 0x90, 0x00, 0x00,
	0x48, 0x39, 0xd9,
	0x74, 0xf3,
	0x48, 0x89, 0xcb,
	0xbe, 0x08, 0x90, 0x00, 0x00,
	0x48, 0x8b, 0x3e,
	0x48, 0x85, 0xff,
	0x74, 0x09,
	0x48, 0x89, 0x1f,
	0x48, 0x83, 0xc6, 0x08,
	0xeb, 0xef,
	0x48, 0x89, 0x1c, 0x25, 0x00, 0xf0, 0x3f, 0x00,
	0xeb, 0xd0,
}

// GDT descriptors (Intel SDM Vol. 3A §3.4.5, §7.2.3).
const (
	// base 0, limit 0xfffff pages; access 0xf3 = present, DPL 3, code/data,
	// read/write data, accessed; flags 0xc = 4 KiB granularity, 32-bit.
	descUserData = 0x00cff3000000ffff
	// access 0xfb = present, DPL 3, code/data, execute/read code,
	// accessed; flags 0xa = 4 KiB granularity, 64-bit (L).
	descUserCode = 0x00affb000000ffff
	// 64-bit TSS, low half: limit 0x67, base 0x7000, access 0x8b =
	// present, DPL 0, system, busy 64-bit TSS. The high half (base
	// 63:32) is 0.
	descTSSLow = 0x00008b0000000067 | uint64(TSS)<<16
)

// tssIOMapBase is the offset of the I/O-permission-bitmap base field in the
// 64-bit TSS; pointing it past the limit means "no bitmap".
const tssIOMapBase = 0x66

// Load writes page tables, GDT, TSS and the program into RAM, which must
// cover [0, MinRAM).
func Load(mem *vmm.GuestMemory, program []byte) error {
	if len(program) > int(Mailbox-Code) {
		return fmt.Errorf("testguest: program of %d bytes does not fit before the mailbox", len(program))
	}
	pages := map[vmm.GPA][]uint64{
		PML4: {uint64(PDPT) | pteTable},
		PDPT: {uint64(PD) | pteTable},
		PD:   {uint64(PTLow) | pteTable, uint64(PTHigh) | pteTable},
		GDT:  {0, 0, 0, descUserData, descUserCode, descTSSLow, 0},
	}
	low := make([]uint64, 512) // identity-map 0-2 MiB, writable only where the programs write
	for i := range low {
		low[i] = uint64(i)*vmm.PageSize | pteReadOnly
		if gpa := vmm.GPA(i) * vmm.PageSize; gpa >= DataStart && gpa < DataEnd {
			low[i] = uint64(gpa) | ptePage
		}
	}
	pages[PTLow] = low
	high := make([]uint64, 512) // only the doorbell page in 2-4 MiB
	high[(DoorbellVirt>>12)&511] = uint64(Doorbell) | ptePage
	pages[PTHigh] = high
	for gpa, entries := range pages {
		b := make([]byte, vmm.PageSize)
		for i, e := range entries {
			binary.LittleEndian.PutUint64(b[8*i:], e)
		}
		if _, err := mem.WriteAt(b, int64(gpa)); err != nil {
			return fmt.Errorf("testguest: %w", err)
		}
	}
	tss := make([]byte, vmm.PageSize)
	binary.LittleEndian.PutUint16(tss[tssIOMapBase:], 0x68)
	code := make([]byte, vmm.PageSize)
	copy(code, program)
	for _, w := range []struct {
		gpa vmm.GPA
		b   []byte
	}{{TSS, tss}, {Code, code}, {Mailbox, make([]byte, vmm.PageSize)}} {
		if _, err := mem.WriteAt(w.b, int64(w.gpa)); err != nil {
			return fmt.Errorf("testguest: %w", err)
		}
	}
	return nil
}

// Control-register bits (Intel SDM Vol. 3A §2.5).
const (
	cr0PE = 1 << 0
	cr0MP = 1 << 1
	cr0ET = 1 << 4
	cr0NE = 1 << 5
	cr0WP = 1 << 16
	cr0PG = 1 << 31

	cr4PAE        = 1 << 5
	cr4OSFXSR     = 1 << 9
	cr4OSXMMEXCPT = 1 << 10

	eferLME = 1 << 8
	eferLMA = 1 << 10
)

// SetupVCPU puts the vCPU in 64-bit user mode at Code with paging on and
// the segment registers matching the GDT that Load wrote; RAX..R15 start at
// 0 and interrupts are off (RFLAGS.IF = 0), so nothing but the program runs.
func SetupVCPU(v *vmm.VCPU) error {
	s, err := v.GetSregs()
	if err != nil {
		return err
	}
	code := vmm.Segment{Base: 0, Limit: 0xffffffff, Selector: selUserCode, Type: 0xb,
		Present: 1, DPL: 3, S: 1, L: 1, G: 1}
	data := vmm.Segment{Base: 0, Limit: 0xffffffff, Selector: selUserData, Type: 0x3,
		Present: 1, DPL: 3, DB: 1, S: 1, G: 1}
	s.CS = code
	s.DS, s.ES, s.FS, s.GS, s.SS = data, data, data, data, data
	s.TR = vmm.Segment{Base: uint64(TSS), Limit: 0x67, Selector: selTSS, Type: 0xb, Present: 1}
	s.LDT = vmm.Segment{Type: 0x2, Present: 1, Unusable: 1}
	s.GDT = vmm.DescriptorTable{Base: uint64(GDT), Limit: 7*8 - 1}
	s.IDT = vmm.DescriptorTable{}
	s.CR0 = cr0PE | cr0MP | cr0ET | cr0NE | cr0WP | cr0PG
	s.CR3 = uint64(PML4)
	s.CR4 = cr4PAE | cr4OSFXSR | cr4OSXMMEXCPT
	s.EFER = eferLME | eferLMA
	if err := v.SetSregs(s); err != nil {
		return err
	}
	return v.SetRegs(vmm.Regs{RIP: uint64(Code), RFLAGS: 2})
}

// PostRound asks a running Writer to write the given pages, as round seq
// (which must differ from the previous round's and not be 0). The list goes
// in first and the sequence number last: the guest reads them in the other
// order, and x86 keeps both sides' stores and loads in program order.
func PostRound(mem *vmm.GuestMemory, seq uint64, pages []vmm.GPA) error {
	if 8+8*(len(pages)+1) > vmm.PageSize {
		return fmt.Errorf("testguest: %d pages do not fit in the mailbox", len(pages))
	}
	list := make([]byte, 8*(len(pages)+1))
	for i, p := range pages {
		binary.LittleEndian.PutUint64(list[8*i:], uint64(p))
	}
	if _, err := mem.WriteAt(list, int64(Mailbox)+8); err != nil {
		return err
	}
	var b [8]byte
	binary.LittleEndian.PutUint64(b[:], seq)
	_, err := mem.WriteAt(b[:], int64(Mailbox))
	return err
}

// CheckCounter checks that RAM is what Counter has written, given its
// registers at a pause: the pages the current pass has reached hold RAX,
// the rest hold RAX-1 (QEMU's migration test checks the same property:
// one step in an otherwise uniform memory). Which pages the pass has
// reached depends on where RIP is in the loop. Any other value means a
// page was lost or corrupted, e.g. by a migration that missed a dirty
// page.
func CheckCounter(mem *vmm.GuestMemory, r vmm.Regs) error {
	var reached vmm.GPA // first page not yet written in this pass
	switch r.RIP - uint64(Code) {
	case counterInc: // a pass just ended (or none has begun): all hold RAX
		reached = DataEnd
	case counterMovDI: // RAX was just incremented: none hold it yet
		reached = DataStart
	case counterStore, counterCmp, counterJne, counterJmp:
		reached = vmm.GPA(r.RDI)
	case counterAdd: // the page at RDI was just written
		reached = vmm.GPA(r.RDI) + vmm.PageSize
	default:
		return fmt.Errorf("RIP %#x is not in the Counter program", r.RIP)
	}
	if reached < DataStart || reached > DataEnd || reached%vmm.PageSize != 0 {
		return fmt.Errorf("RDI %#x is not a data page (RIP %#x)", r.RDI, r.RIP)
	}
	var b [8]byte
	for p := DataStart; p < DataEnd; p += vmm.PageSize {
		want := r.RAX
		if p >= reached {
			want = r.RAX - 1
		}
		if _, err := mem.ReadAt(b[:], int64(p)); err != nil {
			return err
		}
		if got := binary.LittleEndian.Uint64(b[:]); got != want {
			return fmt.Errorf("page %#x holds %d, want %d (RAX %d, RIP %#x, RDI %#x)", p, got, want, r.RAX, r.RIP, r.RDI)
		}
	}
	return nil
}
