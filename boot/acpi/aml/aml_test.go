package aml

import (
	"bytes"
	"strings"
	"testing"
)

func TestPkgLength(t *testing.T) {
	for _, c := range []struct {
		body int
		want []byte
	}{
		{0, []byte{0x01}},
		{62, []byte{0x3f}},                  // largest one-byte value, 63
		{63, []byte{0x41, 0x04}},            // 65 = 0x041: two bytes
		{0xffd, []byte{0x4f, 0xff}},         // 0xfff, largest two-byte value
		{0xffe, []byte{0x81, 0x00, 0x01}},   // 0x1001: three bytes
		{0xffffc, []byte{0x8f, 0xff, 0xff}}, // 0xfffff
		{0xffffd, []byte{0xc1, 0, 0, 0x01}}, // 0x100001: four bytes
		{maxPkgLength - 4, []byte{0xcf, 0xff, 0xff, 0xff}},
	} {
		got, err := PkgLength(c.body)
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("PkgLength(%#x) = % x, %v; want % x", c.body, got, err, c.want)
		}
		// Decoding it back must give body + its own size.
		if err == nil {
			n := int(got[0] & 0x3f)
			if len(got) > 1 {
				n = int(got[0] & 0x0f)
				for i, b := range got[1:] {
					n |= int(b) << (4 + 8*i)
				}
			}
			if n != c.body+len(got) {
				t.Errorf("PkgLength(%#x) decodes to %#x, want %#x", c.body, n, c.body+len(got))
			}
		}
	}
	if _, err := PkgLength(maxPkgLength - 3); err == nil {
		t.Error("PkgLength accepted a body too large for 28 bits")
	}
	if _, err := PkgLength(-1); err == nil {
		t.Error("PkgLength accepted a negative length")
	}
}

func TestNameString(t *testing.T) {
	for _, c := range []struct {
		path string
		want string
	}{
		{"_S5_", "_S5_"},
		{"_SB", "_SB_"},
		{`\_SB_`, `\_SB_`},
		{`\_SB.PEVT`, "\\\x2e_SB_PEVT"},
		{`\_SB.PCI0.ISA0`, "\\\x2f\x03_SB_PCI0ISA0"},
		{"^^COM1", "^^COM1"},
		{`\`, "\\\x00"},
	} {
		got, err := encodeNameString(c.path)
		if err != nil || string(got) != c.want {
			t.Errorf("encodeNameString(%q) = %q, %v; want %q", c.path, got, err, c.want)
		}
	}
	for _, bad := range []string{"", "TOOLONG", "1ABC", "a___", "A.", "A..B", `\^A`, "A-B"} {
		if got, err := encodeNameString(bad); err == nil {
			t.Errorf("encodeNameString(%q) = %q, want an error", bad, got)
		}
	}
}

func TestIntegerEncodings(t *testing.T) {
	for _, c := range []struct {
		v    uint64
		want []byte
	}{
		{0, []byte{0x00}},
		{1, []byte{0x01}},
		{5, []byte{0x0a, 0x05}},
		{0x505, []byte{0x0b, 0x05, 0x05}},
		{0xfec00000, []byte{0x0c, 0x00, 0x00, 0xc0, 0xfe}},
		{1 << 32, []byte{0x0e, 0, 0, 0, 0, 1, 0, 0, 0}},
	} {
		got, err := Encode(Integer(c.v))
		if err != nil || !bytes.Equal(got, c.want) {
			t.Errorf("Integer(%#x) = % x, %v; want % x", c.v, got, err, c.want)
		}
	}
}

func TestStringRejectsNonASCII(t *testing.T) {
	got, err := Encode(String("QEMU0001"))
	if err != nil || string(got) != "\x0dQEMU0001\x00" {
		t.Errorf("String = %q, %v", got, err)
	}
	for _, bad := range []string{"a\x00b", "caf\xc3\xa9"} {
		if _, err := Encode(String(bad)); err == nil {
			t.Errorf("String(%q) accepted", bad)
		}
	}
}

// TestS5Package checks the bytes iasl emits for
// Name (_S5_, Package (0x04) { 0x05, 0x05, Zero, Zero }).
func TestS5Package(t *testing.T) {
	got, err := Encode(Name("_S5_", Package(Integer(5), Integer(5), Integer(0), Integer(0))))
	want := []byte{
		0x08, '_', 'S', '5', '_', // NameOp _S5_
		0x12, 0x08, 0x04, // PackageOp PkgLength(8) NumElements(4)
		0x0a, 0x05, 0x0a, 0x05, 0x00, 0x00,
	}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("_S5_ = % x, %v\nwant % x", got, err, want)
	}
}

func TestDeviceWithResources(t *testing.T) {
	got, err := Encode(Device("PEVT",
		Name("_HID", String("QEMU0001")),
		Name("_CRS", ResourceTemplate(IO(0x505, 0x505, 1, 1))),
	))
	if err != nil {
		t.Fatal(err)
	}
	crs := []byte{
		0x08, '_', 'C', 'R', 'S',
		0x11, 0x0d, 0x0a, 0x0a, // BufferOp PkgLength(13) BufferSize(10)
		0x47, 0x01, 0x05, 0x05, 0x05, 0x05, 0x01, 0x01, // IO (Decode16, 0x505, 0x505, 1, 1)
		0x79, 0x00, // End Tag
	}
	hid := []byte("\x08_HID\x0dQEMU0001\x00")
	body := append(append([]byte("PEVT"), hid...), crs...)
	want := append([]byte{0x5b, 0x82, byte(len(body) + 1)}, body...)
	if !bytes.Equal(got, want) {
		t.Errorf("Device =\n% x\nwant\n% x", got, want)
	}
}

func TestLargeBodyUsesLongPkgLength(t *testing.T) {
	got, err := Encode(Buffer(make([]byte, 100)))
	if err != nil {
		t.Fatal(err)
	}
	// BufferOp, 2-byte PkgLength (100 + 2-byte BufferSize + 2 = 104 = 0x68).
	if got[0] != 0x11 || got[1] != 0x48 || got[2] != 0x06 || got[3] != 0x0a || got[4] != 100 {
		t.Errorf("Buffer(100 bytes) header = % x", got[:5])
	}
	if len(got) != 105 {
		t.Errorf("len = %d, want 105", len(got))
	}
}

func TestErrorsPropagate(t *testing.T) {
	_, err := Encode(Scope(`\_SB`, Device("PEVT", Name("bad!", Integer(1)))))
	if err == nil || !strings.Contains(err.Error(), "bad!") {
		t.Errorf("nested bad name: err = %v", err)
	}
	elems := make([]Term, 256)
	for i := range elems {
		elems[i] = Integer(0)
	}
	if _, err := Encode(Package(elems...)); err == nil {
		t.Error("Package with 256 elements accepted")
	}
}

func TestEISAID(t *testing.T) {
	got, err := Encode(EISAID("PNP0501"))
	// iasl: EisaId ("PNP0501") is 0x0105D041.
	if want := []byte{0x0c, 0x41, 0xd0, 0x05, 0x01}; err != nil || !bytes.Equal(got, want) {
		t.Errorf("EISAID(PNP0501) = % x, %v; want % x", got, err, want)
	}
	for _, bad := range []string{"PNP050", "pnp0501", "PNP05G1", "P1P0501"} {
		if _, err := Encode(EISAID(bad)); err == nil {
			t.Errorf("EISAID(%q) accepted", bad)
		}
	}
}

func TestIRQNoFlags(t *testing.T) {
	got, err := Encode(ResourceTemplate(IRQNoFlags(4)))
	if want := []byte{0x11, 0x08, 0x0a, 0x05, 0x22, 0x10, 0x00, 0x79, 0x00}; err != nil || !bytes.Equal(got, want) {
		t.Errorf("IRQNoFlags(4) template = % x, %v; want % x", got, err, want)
	}
	if _, err := Encode(ResourceTemplate(IRQNoFlags(16))); err == nil {
		t.Error("IRQNoFlags(16) accepted")
	}
}

func TestMemory32FixedAndInterrupt(t *testing.T) {
	got, err := Encode(ResourceTemplate(Memory32Fixed(0xd0000000, 0x200), InterruptEdgeHigh(16)))
	want := []byte{0x11, 0x1a, 0x0a, 0x17, // Buffer, PkgLength, BytePrefix 23
		0x86, 0x09, 0x00, 0x01, 0x00, 0x00, 0x00, 0xd0, 0x00, 0x02, 0x00, 0x00, // Memory32Fixed RW
		0x89, 0x06, 0x00, 0x03, 0x01, 0x10, 0x00, 0x00, 0x00, // Interrupt consumer|edge, 1 GSI: 16
		0x79, 0x00}
	if err != nil || !bytes.Equal(got, want) {
		t.Errorf("template = % x, %v; want % x", got, err, want)
	}
}
