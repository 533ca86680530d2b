package guest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// fakeBusyboxOutput is what the test program prints: the format of
// "busybox --list-full", with one entry (linuxrc) the builder must drop.
const fakeBusyboxOutput = "bin/sh\nbin/ls\nsbin/poweroff\nusr/bin/awk\nlinuxrc\n"

// makeELF returns a minimal x86-64 Linux executable that writes msg to
// stdout and exits 0, built by hand: an ELF header, one PT_LOAD mapping the
// whole file, and a PT_INTERP naming interp if interp is not empty (which
// makes it "dynamically linked" as far as the kernel is concerned).
func makeELF(t *testing.T, machine elf.Machine, interp, msg string) []byte {
	t.Helper()
	const base = 0x400000
	phnum := 1
	if interp != "" {
		phnum = 2
	}
	hdrSize := 64 + 56*phnum
	interpOff := hdrSize
	codeOff := interpOff
	if interp != "" {
		codeOff += len(interp) + 1
	}
	// write(1, msg, len(msg)); exit(0)
	code := []byte{
		0xb8, 1, 0, 0, 0, // mov eax, 1 (write)
		0xbf, 1, 0, 0, 0, // mov edi, 1
		0x48, 0x8d, 0x35, 16, 0, 0, 0, // lea rsi, [rip+16] (msg, after the code)
		0xba, 0, 0, 0, 0, // mov edx, len(msg)
		0x0f, 0x05, // syscall
		0xb8, 60, 0, 0, 0, // mov eax, 60 (exit)
		0x31, 0xff, // xor edi, edi
		0x0f, 0x05, // syscall
	}
	binary.LittleEndian.PutUint32(code[18:], uint32(len(msg)))
	size := codeOff + len(code) + len(msg)

	var buf bytes.Buffer
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(machine), Version: 1,
		Entry: base + uint64(codeOff), Phoff: 64, Ehsize: 64,
		Phentsize: 56, Phnum: uint16(phnum), Shentsize: 64,
	}
	copy(h.Ident[:], elf.ELFMAG)
	h.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	h.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	h.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	must(t, binary.Write(&buf, binary.LittleEndian, h))
	must(t, binary.Write(&buf, binary.LittleEndian, elf.Prog64{
		Type: uint32(elf.PT_LOAD), Flags: uint32(elf.PF_R | elf.PF_X),
		Vaddr: base, Paddr: base, Filesz: uint64(size), Memsz: uint64(size), Align: 0x1000,
	}))
	if interp != "" {
		must(t, binary.Write(&buf, binary.LittleEndian, elf.Prog64{
			Type: uint32(elf.PT_INTERP), Flags: uint32(elf.PF_R), Off: uint64(interpOff),
			Vaddr: base + uint64(interpOff), Filesz: uint64(len(interp) + 1), Memsz: uint64(len(interp) + 1), Align: 1,
		}))
		buf.WriteString(interp)
		buf.WriteByte(0)
	}
	buf.Write(code)
	buf.WriteString(msg)
	if buf.Len() != size {
		t.Fatalf("makeELF: size %d, want %d", buf.Len(), size)
	}
	return buf.Bytes()
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func writeFile(t *testing.T, name string, data []byte, perm os.FileMode) string {
	t.Helper()
	must(t, os.MkdirAll(filepath.Dir(name), 0o755))
	must(t, os.WriteFile(name, data, perm))
	return name
}

func TestCheckStaticELF(t *testing.T) {
	if err := checkStaticELF(bytes.NewReader(makeELF(t, elf.EM_X86_64, "", "hi"))); err != nil {
		t.Errorf("static ELF refused: %v", err)
	}
	err := checkStaticELF(bytes.NewReader(makeELF(t, elf.EM_X86_64, "/lib64/ld-linux-x86-64.so.2", "hi")))
	if !errors.Is(err, errDynamic) || !bytes.Contains([]byte(err.Error()), []byte("/lib64/ld-linux-x86-64.so.2")) {
		t.Errorf("dynamic ELF: err = %v, want errDynamic naming the loader", err)
	}
	if err := checkStaticELF(bytes.NewReader(makeELF(t, elf.EM_AARCH64, "", "hi"))); err == nil {
		t.Errorf("arm64 ELF accepted")
	}
	if err := checkStaticELF(bytes.NewReader([]byte("#!/bin/sh\necho hi\n"))); err == nil {
		t.Errorf("shell script accepted")
	}
}
