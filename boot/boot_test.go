package boot

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"govmm/vmm"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata/")

// fakeBzImage builds the smallest file that passes for a bzImage: a boot
// sector, four setup sectors holding the header and a version string, and
// payload bytes standing in for the compressed kernel.
func fakeBzImage(payload int) []byte {
	const setupSects = 4
	img := make([]byte, (setupSects+1)*512+payload)
	le := binary.LittleEndian
	img[0x1f1] = setupSects
	le.PutUint32(img[0x1f4:], uint32(payload/16)) // syssize
	le.PutUint16(img[0x1fe:], 0xaa55)             // boot_flag
	img[0x201] = 0x66                             // header ends at 0x202+0x66 = 0x268
	copy(img[0x202:], "HdrS")                     // header magic
	le.PutUint16(img[0x206:], 0x020f)             // protocol 2.15
	le.PutUint16(img[0x20e:], 0x400)              // kernel_version at 0x400+0x200
	img[0x211] = 1                                // loadflags: LOADED_HIGH
	le.PutUint32(img[0x22c:], 0x7fffffff)         // initrd_addr_max
	le.PutUint32(img[0x230:], 0x200000)           // kernel_alignment
	img[0x234] = 1                                // relocatable
	le.PutUint16(img[0x236:], 0x7f)               // xloadflags: XLF_KERNEL_64 and friends
	le.PutUint32(img[0x238:], 2047)               // cmdline_size
	le.PutUint64(img[0x258:], 0x1000000)          // pref_address
	le.PutUint32(img[0x260:], 0x2000000)          // init_size: 32 MiB
	copy(img[0x600:], "6.1.0-test-amd64 (govmm@test) #1\x00")
	for i := (setupSects + 1) * 512; i < len(img); i++ {
		img[i] = byte(i * 7)
	}
	return img
}

func TestParseFakeKernel(t *testing.T) {
	k, err := ParseKernel(fakeBzImage(4096))
	if err != nil {
		t.Fatal(err)
	}
	if k.Version != "6.1.0-test-amd64 (govmm@test) #1" || k.ReleaseName() != "6.1.0-test-amd64" {
		t.Fatalf("version %q release %q", k.Version, k.ReleaseName())
	}
	if k.Header.InitSize != 0x2000000 || len(k.protected) != 4096 || len(k.setupHeader) != 0x268-0x1f1 {
		t.Fatalf("init_size %#x protected %d header %d", k.Header.InitSize, len(k.protected), len(k.setupHeader))
	}
}

func TestParseRejectsCorruptKernels(t *testing.T) {
	good := fakeBzImage(4096)
	mutate := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), good...)) }
	cases := map[string]struct {
		img  []byte
		want string
	}{
		"empty":       {nil, "not a bzImage: only 0 bytes"},
		"text file":   {[]byte(strings.Repeat("hello\n", 200)), "no boot sector signature"},
		"ELF vmlinux": {mutate(func(b []byte) []byte { copy(b, "\x7fELF"); b[0x1fe] = 0; return b }), "ELF file"},
		"no HdrS":     {mutate(func(b []byte) []byte { copy(b[0x202:], "XXXX"); return b }), "HdrS"},
		"old protocol": {mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint16(b[0x206:], 0x0206)
			return b
		}), "boot protocol 2.06 is too old"},
		"32-bit only": {mutate(func(b []byte) []byte { b[0x236] = 0; return b }), "no 64-bit entry point"},
		"zImage":      {mutate(func(b []byte) []byte { b[0x211] = 0; return b }), "zImage"},
		"truncated":   {good[:len(good)-100], "truncated bzImage"},
		"setup only":  {good[:5*512], "truncated bzImage"},
		"no init_size": {mutate(func(b []byte) []byte {
			binary.LittleEndian.PutUint32(b[0x260:], 0)
			return b
		}), "init_size is 0"},
		"short header": {mutate(func(b []byte) []byte { b[0x201] = 0x10; return b }), "corrupt setup header"},
	}
	for name, c := range cases {
		_, err := ParseKernel(c.img)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, c.want)
		}
	}
}

func TestLoadKernelNamesMissingFile(t *testing.T) {
	_, err := LoadKernel("/nonexistent/vmlinuz")
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/vmlinuz: no such file") {
		t.Fatalf("error %v", err)
	}
}

func newMemory(t *testing.T, size uint64) *vmm.GuestMemory {
	t.Helper()
	m, err := vmm.NewGuestMemory([]vmm.MemoryRegion{{Start: 0, Size: size}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestLoadWritesBootProtocolState(t *testing.T) {
	k, err := ParseKernel(fakeBzImage(4096))
	if err != nil {
		t.Fatal(err)
	}
	mem := newMemory(t, 256<<20)
	initrd := bytes.Repeat([]byte("initrd"), 1000)
	p, err := Load(mem, k, Config{Cmdline: "console=ttyS0 quiet", Initrd: initrd, ACPIRSDP: 0xe0000})
	if err != nil {
		t.Fatal(err)
	}
	zp := make([]byte, vmm.PageSize)
	mem.ReadAt(zp, int64(ZeroPageAddr))
	le := binary.LittleEndian

	// The kernel's own header is copied, with the loader's fields filled in.
	if string(zp[0x202:0x206]) != "HdrS" || le.Uint16(zp[0x206:]) != 0x020f {
		t.Error("setup header not copied into the zero page")
	}
	if zp[0x210] != 0xff {
		t.Errorf("type_of_loader %#x", zp[0x210])
	}
	if got := le.Uint32(zp[0x228:]); got != uint32(CmdlineAddr) {
		t.Errorf("cmd_line_ptr %#x", got)
	}
	cmd := make([]byte, 20)
	mem.ReadAt(cmd, int64(CmdlineAddr))
	if string(cmd) != "console=ttyS0 quiet\x00" {
		t.Errorf("command line %q", cmd)
	}
	if got := le.Uint64(zp[0x070:]); got != 0xe0000 {
		t.Errorf("acpi_rsdp_addr %#x", got)
	}
	// initrd: page-aligned, at the top of RAM, and really there.
	rdAddr, rdSize := le.Uint32(zp[0x218:]), le.Uint32(zp[0x21c:])
	if rdSize != uint32(len(initrd)) || rdAddr%vmm.PageSize != 0 || uint64(rdAddr)+uint64(rdSize) > 256<<20 ||
		uint64(rdAddr)+uint64(rdSize) < 256<<20-vmm.PageSize || vmm.GPA(rdAddr) != p.InitrdAddr {
		t.Errorf("initrd at %#x size %d", rdAddr, rdSize)
	}
	got := make([]byte, len(initrd))
	mem.ReadAt(got, int64(rdAddr))
	if !bytes.Equal(got, initrd) {
		t.Error("initrd contents differ")
	}
	// The memory map: low RAM, the legacy hole, RAM from 1 MiB.
	want := []E820Entry{{0, 0x9fc00, E820RAM}, {0x9fc00, 0x60400, E820Reserved}, {0x100000, 255 << 20, E820RAM}}
	if int(zp[0x1e8]) != len(want) {
		t.Fatalf("%d e820 entries, want %d", zp[0x1e8], len(want))
	}
	for i, w := range want {
		off := 0x2d0 + 20*i
		g := E820Entry{le.Uint64(zp[off:]), le.Uint64(zp[off+8:]), le.Uint32(zp[off+16:])}
		if g != w {
			t.Errorf("e820[%d] = %+v, want %+v", i, g, w)
		}
	}
	// The protected-mode kernel sits at 1 MiB.
	kern := make([]byte, 4096)
	mem.ReadAt(kern, int64(KernelAddr))
	if !bytes.Equal(kern, k.protected) {
		t.Error("kernel not at 1 MiB")
	}
	// Identity map: PML4[0] → PDPT, PDPT[3] → 4th PD, PD entry 1000 maps 1000*2 MiB.
	q := func(addr vmm.GPA) uint64 { b := make([]byte, 8); mem.ReadAt(b, int64(addr)); return le.Uint64(b) }
	if q(PML4Addr) != uint64(PDPTAddr)|3 || q(PDPTAddr+24) != uint64(PDAddr+3*vmm.PageSize)|3 || q(PDAddr+8*1000) != 1000<<21|0x83 {
		t.Errorf("page tables: pml4 %#x pdpt[3] %#x pd[1000] %#x", q(PML4Addr), q(PDPTAddr+24), q(PDAddr+8*1000))
	}
	if q(GDTAddr+bootCS) != 0x00af9b000000ffff || q(GDTAddr+bootDS) != 0x00cf93000000ffff {
		t.Error("GDT lacks the boot code/data descriptors")
	}
	golden(t, "zeropage.golden", hex.Dump(zp))
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./boot -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file; if the change is intended, run go test ./boot -update and review the diff", name)
	}
}

func TestLoadRefusesTooLittleMemory(t *testing.T) {
	k, _ := ParseKernel(fakeBzImage(4096))
	mem := newMemory(t, 32<<20)
	_, err := Load(mem, k, Config{Cmdline: "x"})
	if err == nil || !strings.Contains(err.Error(), "too small") || !strings.Contains(err.Error(), "--mem") {
		t.Fatalf("error %v", err)
	}
	mem = newMemory(t, 256<<20)
	if _, err := Load(mem, k, Config{Cmdline: strings.Repeat("x", 3000)}); err == nil || !strings.Contains(err.Error(), "at most 2047") {
		t.Fatalf("long command line: %v", err)
	}
}

func TestEntryState(t *testing.T) {
	regs, sregs := EntryState(vmm.Sregs{})
	if regs.RIP != 0x100200 || regs.RSI != uint64(ZeroPageAddr) || regs.RFLAGS&(1<<9) != 0 {
		t.Errorf("regs %+v", regs)
	}
	if sregs.CS.Selector != 0x10 || sregs.CS.L != 1 || sregs.DS.Selector != 0x18 || sregs.SS.Selector != 0x18 {
		t.Errorf("segments CS %+v DS %+v", sregs.CS, sregs.DS)
	}
	if sregs.EFER != 0x500 || sregs.CR4&0x20 == 0 || sregs.CR0&0x80000001 != 0x80000001 || sregs.CR3 != uint64(PML4Addr) {
		t.Errorf("control registers cr0 %#x cr3 %#x cr4 %#x efer %#x", sregs.CR0, sregs.CR3, sregs.CR4, sregs.EFER)
	}
}

// A real Debian kernel, when the test environment provides one
// (GOVMM_TEST_KERNEL, set by .ci/run and `make test`).
func TestParseRealKernel(t *testing.T) {
	path := os.Getenv("GOVMM_TEST_KERNEL")
	if path == "" {
		t.Skip("GOVMM_TEST_KERNEL not set; `make test` sets it to a downloaded Debian kernel")
	}
	k, err := LoadKernel(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(k.ReleaseName(), "6.") || k.Header.InitSize < 16<<20 || k.Header.Protocolversion < 0x20c {
		t.Fatalf("release %q init_size %#x protocol %#x", k.ReleaseName(), k.Header.InitSize, k.Header.Protocolversion)
	}
	if !strings.Contains(filepath.Base(path), k.ReleaseName()) {
		t.Errorf("version %q does not match file name %s", k.ReleaseName(), path)
	}
	data, _ := os.ReadFile(path)
	if _, err := ParseKernel(data[:len(data)/2]); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("half a real kernel: %v", err)
	}
}
