package guest

import (
	"debug/elf"
	"errors"
	"fmt"
	"io"
)

// errDynamic is wrapped by checkStaticELF when the file asks for a dynamic
// loader, so callers can give the fix that fits (rebuild govmm, or install a
// static busybox).
var errDynamic = errors.New("dynamically linked")

// checkStaticELF returns nil if r holds an x86-64 ELF executable that runs
// without a C library, i.e. the guest can exec it from an initramfs that has
// no /lib at all.
//
// The test is the program header PT_INTERP (System V ABI, "Program
// Interpreter"): the kernel's ELF loader (fs/binfmt_elf.c) maps and starts
// that interpreter, normally /lib64/ld-linux-x86-64.so.2, which then loads
// the DT_NEEDED libraries. A static executable, including a static-pie one,
// has no PT_INTERP and starts directly.
func checkStaticELF(r io.ReaderAt) error {
	f, err := elf.NewFile(r)
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("ELF for %v %v, the guest needs ELFCLASS64 EM_X86_64", f.Class, f.Machine)
	}
	if f.Type != elf.ET_EXEC && f.Type != elf.ET_DYN {
		return fmt.Errorf("ELF type %v is not an executable", f.Type)
	}
	for _, p := range f.Progs {
		if p.Type != elf.PT_INTERP {
			continue
		}
		interp := make([]byte, p.Filesz)
		if _, err := p.ReadAt(interp, 0); err != nil {
			return fmt.Errorf("%w (unreadable PT_INTERP: %v)", errDynamic, err)
		}
		for len(interp) > 0 && interp[len(interp)-1] == 0 {
			interp = interp[:len(interp)-1]
		}
		return fmt.Errorf("%w (needs the loader %s)", errDynamic, interp)
	}
	return nil
}
