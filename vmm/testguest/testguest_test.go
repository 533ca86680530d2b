package testguest

import (
	"encoding/binary"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"govmm/vmm"
)

// The programs are hand-assembled; decoding them back with x86asm checks
// every byte against the listing in their comments.
func TestProgramsMatchTheirListings(t *testing.T) {
	for _, c := range []struct {
		name string
		code []byte
		want []string // offset: instruction, in Intel syntax as x86asm prints it
	}{
		{"Counter", Counter, []string{
			"0: inc rax",
			"3: mov edi, 0x100000",
			"8: mov qword ptr [rdi], rax",
			"11: add rdi, 0x1000",
			"18: cmp rdi, 0x200000",
			"25: jnz 0x8",
			"27: jmp 0x0",
		}},
		{"Writer", Writer, []string{
			"0: mov rcx, qword ptr [0x9000]",
			"8: cmp rcx, rbx",
			"11: jz 0x0",
			"13: mov rbx, rcx",
			"16: mov esi, 0x9008",
			"21: mov rdi, qword ptr [rsi]",
			"24: test rdi, rdi",
			"27: jz 0x26",
			"29: mov qword ptr [rdi], rbx",
			"32: add rsi, 0x8",
			"36: jmp 0x15",
			"38: mov qword ptr [0x3ff000], rbx",
			"46: jmp 0x0",
		}},
	} {
		var got []string
		for off := 0; off < len(c.code); {
			inst, err := x86asm.Decode(c.code[off:], 64)
			if err != nil {
				t.Fatalf("%s+%d: %v", c.name, off, err)
			}
			// Print branch targets as offsets from the program start.
			text := x86asm.IntelSyntax(inst, uint64(off), nil)
			got = append(got, strconv.Itoa(off)+": "+text)
			off += inst.Len
		}
		if strings.Join(got, "\n") != strings.Join(c.want, "\n") {
			t.Errorf("%s decodes as\n%s\nwant\n%s", c.name, strings.Join(got, "\n"), strings.Join(c.want, "\n"))
		}
	}
}

// CheckCounter accepts exactly the memory Counter leaves behind and
// rejects one wrong page.
func TestCheckCounterFindsALostWrite(t *testing.T) {
	mem, err := vmm.NewGuestMemory([]vmm.MemoryRegion{{Start: 0, Size: MinRAM}})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	// Pass 5, paused before the store to page 10: pages 0-9 hold 5, the
	// rest 4.
	set := func(p vmm.GPA, v uint64) {
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], v)
		mem.WriteAt(b[:], int64(p))
	}
	for i := 0; i < DataPages; i++ {
		v := uint64(4)
		if i < 10 {
			v = 5
		}
		set(DataStart+vmm.GPA(i)*vmm.PageSize, v)
	}
	regs := vmm.Regs{RAX: 5, RDI: uint64(DataStart) + 10*vmm.PageSize, RIP: uint64(Code) + counterStore}
	if err := CheckCounter(mem, regs); err != nil {
		t.Fatalf("consistent memory rejected: %v", err)
	}
	// After the store (RIP at the add), page 10 must hold 5 as well.
	regs.RIP = uint64(Code) + counterAdd
	if err := CheckCounter(mem, regs); err == nil || !strings.Contains(err.Error(), "page 0x10a000 holds 4, want 5") {
		t.Errorf("lost store not found: %v", err)
	}
	regs.RIP = uint64(Code) + counterStore
	set(DataStart+100*vmm.PageSize, 3) // a page from two passes ago
	if err := CheckCounter(mem, regs); err == nil || !strings.Contains(err.Error(), "page 0x164000 holds 3, want 4") {
		t.Errorf("stale page not found: %v", err)
	}
	regs.RIP = uint64(Code) + 1
	if err := CheckCounter(mem, regs); err == nil {
		t.Error("RIP inside an instruction accepted")
	}
}
