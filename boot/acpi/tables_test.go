package acpi

import (
	"bytes"
	"encoding/binary"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"govmm/devices/acpipm"
	"govmm/devices/pvpanic"
	"govmm/tests/tools"
)

var testConfig = Config{
	NumVCPUs:    3,
	Base:        DefaultBase,
	PMBase:      acpipm.DefaultBase,
	PVPanicPort: pvpanic.DefaultPort,
}

func build(t *testing.T, cfg Config) *Tables {
	t.Helper()
	tb, err := Build(cfg)
	if err != nil {
		t.Fatalf("Build: %v", err)
	}
	return tb
}

func sum(b []byte) byte {
	var s byte
	for _, v := range b {
		s += v
	}
	return s
}

// tableAt returns the table whose guest-physical address is gpa, checking
// that it lies inside the blob, has the expected signature, and sums to 0.
func tableAt(t *testing.T, tb *Tables, gpa uint64, sig string) []byte {
	t.Helper()
	if gpa < tb.Base || gpa+headerSize > tb.Base+uint64(len(tb.Data)) {
		t.Fatalf("%s pointer %#x is outside the blob [%#x, %#x)", sig, gpa, tb.Base, tb.Base+uint64(len(tb.Data)))
	}
	if gpa%8 != 0 {
		t.Errorf("%s at %#x is not 8-byte aligned", sig, gpa)
	}
	off := gpa - tb.Base
	h := tb.Data[off:]
	if got := string(h[:4]); got != sig {
		t.Fatalf("table at %#x has signature %q, want %q", gpa, got, sig)
	}
	n := binary.LittleEndian.Uint32(h[4:])
	if n < headerSize || off+uint64(n) > uint64(len(tb.Data)) {
		t.Fatalf("%s length %d runs past the blob", sig, n)
	}
	tab := h[:n]
	if s := sum(tab); s != 0 {
		t.Errorf("%s checksum: bytes sum to %#02x, want 0", sig, s)
	}
	if string(tab[10:16]) != "GOVMM " || string(tab[28:32]) != "GOVM" {
		t.Errorf("%s OEM ID %q creator %q", sig, tab[10:16], tab[28:32])
	}
	return tab
}

func TestRSDP(t *testing.T) {
	tb := build(t, testConfig)
	if tb.RSDP != DefaultBase || tb.Base != DefaultBase {
		t.Fatalf("RSDP at %#x, base %#x; want both %#x", tb.RSDP, tb.Base, DefaultBase)
	}
	r := tb.Data[tb.RSDP-tb.Base:][:36]
	if string(r[:8]) != "RSD PTR " {
		t.Errorf("RSDP signature %q", r[:8])
	}
	if s := sum(r[:20]); s != 0 {
		t.Errorf("RSDP ACPI 1.0 checksum: first 20 bytes sum to %#02x", s)
	}
	if s := sum(r); s != 0 {
		t.Errorf("RSDP extended checksum: 36 bytes sum to %#02x", s)
	}
	if r[15] != 2 {
		t.Errorf("RSDP revision %d, want 2", r[15])
	}
	if n := binary.LittleEndian.Uint32(r[20:]); n != 36 {
		t.Errorf("RSDP length %d, want 36", n)
	}
	tableAt(t, tb, binary.LittleEndian.Uint64(r[24:]), "XSDT")
}

func xsdtEntries(t *testing.T, tb *Tables) map[string][]byte {
	r := tb.Data[tb.RSDP-tb.Base:]
	x := tableAt(t, tb, binary.LittleEndian.Uint64(r[24:]), "XSDT")
	if (len(x)-headerSize)%8 != 0 {
		t.Fatalf("XSDT length %d leaves a partial pointer", len(x))
	}
	got := map[string][]byte{}
	for off := headerSize; off < len(x); off += 8 {
		gpa := binary.LittleEndian.Uint64(x[off:])
		sig := string(tb.Data[gpa-tb.Base:][:4])
		got[sig] = tableAt(t, tb, gpa, sig)
	}
	return got
}

func TestXSDTPointsAtFADTAndMADT(t *testing.T) {
	tb := build(t, testConfig)
	got := xsdtEntries(t, tb)
	if len(got) != 2 || got["FACP"] == nil || got["APIC"] == nil {
		keys := []string{}
		for k := range got {
			keys = append(keys, k)
		}
		t.Fatalf("XSDT lists %v, want FACP and APIC", keys)
	}
}

func TestFADT(t *testing.T) {
	tb := build(t, testConfig)
	f := xsdtEntries(t, tb)["FACP"]
	if len(f) != 276 || f[8] != 6 || f[131] != 4 {
		t.Fatalf("FADT length %d revision %d.%d, want 276, 6.4", len(f), f[8], f[131])
	}
	u16 := func(off int) uint16 { return binary.LittleEndian.Uint16(f[off:]) }
	u32 := func(off int) uint32 { return binary.LittleEndian.Uint32(f[off:]) }
	u64 := func(off int) uint64 { return binary.LittleEndian.Uint64(f[off:]) }

	if fl := u32(112); fl&(1<<20) == 0 || fl&(1<<10) == 0 {
		t.Errorf("FADT flags %#x lack HW_REDUCED_ACPI or RESET_REG_SUP", fl)
	}
	arch := u16(109)
	if arch&(1<<5) == 0 {
		t.Errorf("IAPC_BOOT_ARCH %#x: CMOS RTC Not Present is clear", arch)
	}
	if arch&(1<<1) != 0 {
		t.Errorf("IAPC_BOOT_ARCH %#x: 8042 set; Linux would probe the minimal i8042", arch)
	}

	checkGAS := func(name string, off int, port uint64) {
		t.Helper()
		g := f[off : off+12]
		if g[0] != 1 || g[1] != 8 || g[2] != 0 || g[3] != 1 || binary.LittleEndian.Uint64(g[4:]) != port {
			t.Errorf("%s GAS = % x, want SystemIO, 8 bits, byte access, port %#x", name, g, port)
		}
	}
	pm := uint64(acpipm.DefaultBase)
	checkGAS("RESET_REG", 116, pm+acpipm.ResetOffset)
	checkGAS("SLEEP_CONTROL_REG", 244, pm+acpipm.SleepControlOffset)
	checkGAS("SLEEP_STATUS_REG", 256, pm+acpipm.SleepStatusOffset)
	if f[128] != acpipm.ResetValue {
		t.Errorf("RESET_VALUE %#x, want %#x", f[128], acpipm.ResetValue)
	}
	if string(f[268:276]) != "GOVMM   " {
		t.Errorf("hypervisor vendor %q", f[268:276])
	}
	if u32(40) != 0 {
		t.Errorf("32-bit DSDT pointer %#x, want 0 (X_DSDT is used)", u32(40))
	}
	dsdt := tableAt(t, tb, u64(140), "DSDT")
	if dsdt[8] != 2 {
		t.Errorf("DSDT revision %d, want 2", dsdt[8])
	}
	// Everything describing the legacy fixed hardware must be 0.
	for _, r := range [][2]int{{44, 109}, {148, 244}} {
		for i := r[0]; i < r[1]; i++ {
			if f[i] != 0 {
				t.Errorf("FADT byte %d = %#x, want 0 on a hardware-reduced platform", i, f[i])
			}
		}
	}
}

func TestMADT(t *testing.T) {
	tb := build(t, testConfig)
	m := xsdtEntries(t, tb)["APIC"]
	if m[8] != 5 {
		t.Errorf("MADT revision %d, want 5", m[8])
	}
	if a := binary.LittleEndian.Uint32(m[36:]); a != 0xFEE00000 {
		t.Errorf("local APIC address %#x", a)
	}
	if fl := binary.LittleEndian.Uint32(m[40:]); fl != 1 {
		t.Errorf("MADT flags %#x, want PCAT_COMPAT", fl)
	}
	var cpus []byte
	ioapics := 0
	for off := 44; off < len(m); {
		typ, n := m[off], int(m[off+1])
		if n < 2 || off+n > len(m) {
			t.Fatalf("MADT entry at %d has bad length %d", off, n)
		}
		e := m[off : off+n]
		switch typ {
		case 0:
			if n != 8 || e[2] != e[3] || binary.LittleEndian.Uint32(e[4:]) != 1 {
				t.Errorf("local APIC entry % x", e)
			}
			cpus = append(cpus, e[3])
		case 1:
			ioapics++
			if n != 12 || e[2] != 0 || binary.LittleEndian.Uint32(e[4:]) != 0xFEC00000 || binary.LittleEndian.Uint32(e[8:]) != 0 {
				t.Errorf("I/O APIC entry % x", e)
			}
		default:
			t.Errorf("unexpected MADT entry type %d", typ)
		}
		off += n
	}
	if !bytes.Equal(cpus, []byte{0, 1, 2}) || ioapics != 1 {
		t.Errorf("MADT has APIC IDs %v and %d I/O APICs, want [0 1 2] and 1", cpus, ioapics)
	}
}

// TestDSDTBytes checks the definition block byte for byte against the AML
// that iasl 20200925 produces for the ASL in dsdt.go's comment, compiled
// with "iasl -on" (no name-path optimization, so \_SB keeps its root
// prefix, as we emit it).
func TestDSDTBytes(t *testing.T) {
	tb := build(t, testConfig)
	f := xsdtEntries(t, tb)["FACP"]
	d := tableAt(t, tb, binary.LittleEndian.Uint64(f[140:]), "DSDT")
	want := []byte{
		// Name (_S5_, Package (4) { 5, 5, Zero, Zero })
		0x08, 0x5f, 0x53, 0x35, 0x5f, 0x12, 0x08, 0x04, 0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
		// Scope (\_SB), 2-byte PkgLength 0x6b
		0x10, 0x4b, 0x06, 0x5c, 0x5f, 0x53, 0x42, 0x5f,
		// Device (COM1): _HID EisaId, _UID One, _STA 0x0F, _CRS IO + IRQNoFlags
		0x5b, 0x82, 0x32, 0x43, 0x4f, 0x4d, 0x31,
		0x08, 0x5f, 0x48, 0x49, 0x44, 0x0c, 0x41, 0xd0, 0x05, 0x01,
		0x08, 0x5f, 0x55, 0x49, 0x44, 0x01,
		0x08, 0x5f, 0x53, 0x54, 0x41, 0x0a, 0x0f,
		0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x10, 0x0a, 0x0d,
		0x47, 0x01, 0xf8, 0x03, 0xf8, 0x03, 0x01, 0x08, 0x22, 0x10, 0x00, 0x79, 0x00,
		// Device (PEVT): _HID "QEMU0001", _CRS IO, _STA 0x0F
		0x5b, 0x82, 0x2e, 0x50, 0x45, 0x56, 0x54,
		0x08, 0x5f, 0x48, 0x49, 0x44, 0x0d, 0x51, 0x45, 0x4d, 0x55, 0x30, 0x30, 0x30, 0x31, 0x00,
		0x08, 0x5f, 0x43, 0x52, 0x53, 0x11, 0x0d, 0x0a, 0x0a,
		0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, 0x79, 0x00,
		0x08, 0x5f, 0x53, 0x54, 0x41, 0x0a, 0x0f,
	}
	if got := d[headerSize:]; !bytes.Equal(got, want) {
		t.Errorf("DSDT AML =\n% x\nwant\n% x", got, want)
	}
}

func TestDSDTFollowsConfig(t *testing.T) {
	cfg := testConfig
	cfg.PVPanicPort = 0x1234
	tb := build(t, cfg)
	if !bytes.Contains(tb.Data, []byte{0x47, 0x01, 0x34, 0x12, 0x34, 0x12, 0x01, 0x01}) {
		t.Error("the DSDT's IO descriptor does not carry the configured pvpanic port")
	}
}

func TestLayoutAtOtherBase(t *testing.T) {
	cfg := testConfig
	cfg.Base = 0x9_0000
	cfg.NumVCPUs = MaxVCPUs
	tb := build(t, cfg)
	if tb.RSDP != cfg.Base {
		t.Errorf("RSDP at %#x, want %#x", tb.RSDP, cfg.Base)
	}
	got := xsdtEntries(t, tb) // every pointer is checked against the new base
	if n := len(got["APIC"]); n != headerSize+8+8*MaxVCPUs+12 {
		t.Errorf("MADT length %d for %d vCPUs", n, MaxVCPUs)
	}
}

func TestBuildRejectsBadConfig(t *testing.T) {
	for name, mutate := range map[string]func(*Config){
		"virtio above 4 GiB": func(c *Config) { c.VirtioMMIO = []VirtioMMIO{{Base: 0xffffff00, Size: 0x200, GSI: 16}} },
		"virtio no size":     func(c *Config) { c.VirtioMMIO = []VirtioMMIO{{Base: 0xd0000000, GSI: 16}} },
		"virtio GSI 24":      func(c *Config) { c.VirtioMMIO = []VirtioMMIO{{Base: 0xd0000000, Size: 0x200, GSI: 24}} },
		"no vCPUs":           func(c *Config) { c.NumVCPUs = 0 },
		"too many vCPUs":     func(c *Config) { c.NumVCPUs = MaxVCPUs + 1 },
		"unaligned base":     func(c *Config) { c.Base = DefaultBase + 4 },
		"PM base 0":          func(c *Config) { c.PMBase = 0 },
		"PM block wraps":     func(c *Config) { c.PMBase = 0xfffe },
		"pvpanic port 0":     func(c *Config) { c.PVPanicPort = 0 },
		"base wraps 2^64":    func(c *Config) { c.Base = ^uint64(0) &^ 15 },
	} {
		cfg := testConfig
		mutate(&cfg)
		if _, err := Build(cfg); err == nil {
			t.Errorf("%s: Build accepted %+v", name, cfg)
		}
	}
}

// writeTables stores each table of the blob in dir as SIG.dat, the file
// naming the ACPICA tools expect.
func writeTables(t *testing.T, tb *Tables, dir string) {
	t.Helper()
	f := xsdtEntries(t, tb)
	f["DSDT"] = tableAt(t, tb, binary.LittleEndian.Uint64(f["FACP"][140:]), "DSDT")
	f["XSDT"] = tableAt(t, tb, binary.LittleEndian.Uint64(tb.Data[tb.RSDP-tb.Base+24:]), "XSDT")
	for sig, tab := range f {
		if err := os.WriteFile(filepath.Join(dir, sig+".dat"), tab, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIASLDisassembly cross-checks the tables with ACPICA's own tools
// (Debian package acpica-tools), when installed: iasl must disassemble
// them without complaint, and acpiexec, the same interpreter Linux runs,
// must evaluate \_S5_ and the pvpanic device.
func TestIASLDisassembly(t *testing.T) {
	iasl := tools.Need(t, "iasl", "acpica-tools")
	dir := t.TempDir()
	cfg := testConfig
	cfg.VirtioMMIO = []VirtioMMIO{{Base: 0xd0000000, Size: 0x200, GSI: 16}, {Base: 0xd0001000, Size: 0x200, GSI: 17}}
	writeTables(t, build(t, cfg), dir)

	for _, sig := range []string{"DSDT", "FACP", "APIC", "XSDT"} {
		out, err := exec.Command(iasl, "-d", filepath.Join(dir, sig+".dat")).CombinedOutput()
		if err != nil {
			t.Fatalf("iasl -d %s: %v\n%s", sig, err, out)
		}
		dsl, err := os.ReadFile(filepath.Join(dir, sig+".dsl"))
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"Invalid", "Warning", "Error", "Incorrect"} {
			if strings.Contains(string(dsl), bad) {
				t.Errorf("iasl disassembly of %s mentions %q:\n%s", sig, bad, dsl)
			}
		}
		var want []string
		switch sig {
		case "DSDT":
			want = []string{"Name (_S5, Package (0x04)", "0x05,", `Scope (\_SB)`, "Device (PEVT)",
				`Name (_HID, "QEMU0001")`, "IO (Decode16", "0x0505", "Name (_STA, 0x0F)",
				"Device (COM1)", `EisaId ("PNP0501")`, "0x03F8", "IRQNoFlags ()", "{4}",
				"Device (VR00)", "Device (VR01)", `Name (_HID, "LNRO0005")`,
				"Memory32Fixed (ReadWrite,\n                    0xD0001000,", "0x00000200,",
				"Interrupt (ResourceConsumer, Edge, ActiveHigh, Exclusive, ,, )\n                {\n                    0x00000011,"}
		case "FACP":
			want = []string{"Hardware Reduced (V5) : 1", "Reset Register Supported (V2) : 1",
				"CMOS RTC Not Present (V5) : 1", "8042 Present on ports 60/64 (V2) : 0",
				"Address : 0000000000000602", "Address : 0000000000000600", "Address : 0000000000000601"}
		case "APIC":
			want = []string{"Local Apic Address : FEE00000", "Local Apic ID : 02", "Address : FEC00000"}
		case "XSDT":
			want = []string{"ACPI Table Address   1"}
		}
		for _, w := range want {
			if !strings.Contains(string(dsl), w) {
				t.Errorf("iasl disassembly of %s lacks %q", sig, w)
			}
		}
	}

	acpiexec := tools.Need(t, "acpiexec", "acpica-tools")
	out, err := exec.Command(acpiexec, "-b", `evaluate \_S5_; evaluate \_SB.PEVT._HID; evaluate \_SB.PEVT._STA; evaluate \_SB.COM1._HID; evaluate \_SB.VR01._HID`,
		filepath.Join(dir, "DSDT.dat")).CombinedOutput()
	if err != nil {
		t.Fatalf("acpiexec: %v\n%s", err, out)
	}
	for _, w := range []string{"Contains 4 Elements", "[Integer] = 0000000000000005", `[String] Length 08 = "QEMU0001"`, "[Integer] = 000000000000000F", "[Integer] = 000000000105D041", `[String] Length 08 = "LNRO0005"`} {
		if !strings.Contains(string(out), w) {
			t.Errorf("acpiexec output lacks %q:\n%s", w, out)
		}
	}
}
