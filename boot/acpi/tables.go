package acpi

import (
	"encoding/binary"
	"fmt"

	"govmm/devices/acpipm"
)

// DefaultBase is the guest-physical address where the machine places the
// tables: the start of the BIOS area 0xE0000-0xFFFFF, which the loader marks
// reserved in the e820 map.
const DefaultBase = 0xE0000

// Identification written into every table (ACPI 6.4 §5.2.6 "System
// Description Table Header").
const (
	oemID          = "GOVMM "   // OEMID, 6 bytes
	oemTableID     = "GOVMM   " // OEM Table ID, 8 bytes
	oemRevision    = 1
	creatorID      = "GOVM" // ASL compiler vendor ID; here the VMM itself
	creatorRev     = 1
	hypervisorID   = "GOVMM   " // FADT Hypervisor Vendor Identity, 8 bytes
	headerSize     = 36
	tableAlignment = 16
)

// MaxVCPUs is the most vCPUs the MADT can describe with xAPIC IDs: 8-bit
// IDs, 0xFF being the broadcast address.
const MaxVCPUs = 255

// Config describes the machine the tables are for.
type Config struct {
	NumVCPUs    int    // vCPUs, APIC IDs 0..NumVCPUs-1
	Base        uint64 // guest-physical address the blob will be copied to (16-byte aligned)
	PMBase      uint16 // I/O port of the acpipm register block
	PVPanicPort uint16 // I/O port of the pvpanic device
	VirtioMMIO  []VirtioMMIO
}

// VirtioMMIO is one virtio-mmio device for the DSDT to describe.
type VirtioMMIO struct {
	Base uint64 // guest-physical address of its register block, below 4 GiB
	Size uint32 // length of the register block
	GSI  uint32 // its interrupt, an IOAPIC pin (edge-triggered, active high)
}

// ioapicPins is how many GSIs the IOAPIC of the MADT (and KVM's) has.
const ioapicPins = 24

// Tables is the result of Build.
type Tables struct {
	Base uint64 // copy Data to this guest-physical address
	Data []byte // all tables, back to back
	RSDP uint64 // guest-physical address of the RSDP, for boot_params.acpi_rsdp_addr
}

// Build returns the ACPI tables for cfg.
func Build(cfg Config) (*Tables, error) {
	if cfg.NumVCPUs < 1 || cfg.NumVCPUs > MaxVCPUs {
		return nil, fmt.Errorf("acpi: %d vCPUs, want 1 to %d", cfg.NumVCPUs, MaxVCPUs)
	}
	if cfg.Base%tableAlignment != 0 {
		return nil, fmt.Errorf("acpi: base %#x is not %d-byte aligned", cfg.Base, tableAlignment)
	}
	if cfg.PMBase == 0 || uint32(cfg.PMBase)+acpipm.Size > 1<<16 {
		return nil, fmt.Errorf("acpi: PM register block at port %#x does not fit the I/O space", cfg.PMBase)
	}
	if cfg.PVPanicPort == 0 {
		return nil, fmt.Errorf("acpi: pvpanic port must not be 0")
	}

	for i, d := range cfg.VirtioMMIO {
		if d.Size == 0 || d.Base+uint64(d.Size) > 1<<32 {
			return nil, fmt.Errorf("acpi: virtio-mmio device %d at %#x+%#x is not below 4 GiB", i, d.Base, d.Size)
		}
		if d.GSI >= ioapicPins {
			return nil, fmt.Errorf("acpi: virtio-mmio device %d: GSI %d, the IOAPIC has %d pins", i, d.GSI, ioapicPins)
		}
	}
	if len(cfg.VirtioMMIO) > MaxVirtioMMIO {
		return nil, fmt.Errorf("acpi: %d virtio-mmio devices, at most %d", len(cfg.VirtioMMIO), MaxVirtioMMIO)
	}

	dsdtBody, err := dsdtAML(cfg)
	if err != nil {
		return nil, err
	}

	// Lay out: RSDP, XSDT, FADT, MADT, DSDT.
	var l layout
	rsdpOff := l.reserve(rsdpSize)
	xsdtOff := l.reserve(headerSize + 8*2)
	fadtOff := l.reserve(fadtSize)
	madt := buildMADT(cfg)
	madtOff := l.reserve(len(madt))
	dsdt := table("DSDT", dsdtRevision, dsdtBody)
	dsdtOff := l.reserve(len(dsdt))
	if cfg.Base+uint64(l.size) < cfg.Base {
		return nil, fmt.Errorf("acpi: tables at %#x wrap around the address space", cfg.Base)
	}
	gpa := func(off int) uint64 { return cfg.Base + uint64(off) }

	data := make([]byte, l.size)
	copy(data[dsdtOff:], dsdt)
	copy(data[madtOff:], madt)
	copy(data[fadtOff:], buildFADT(cfg, gpa(dsdtOff)))
	copy(data[xsdtOff:], buildXSDT(gpa(fadtOff), gpa(madtOff)))
	copy(data[rsdpOff:], buildRSDP(gpa(xsdtOff)))
	return &Tables{Base: cfg.Base, Data: data, RSDP: gpa(rsdpOff)}, nil
}

// layout hands out aligned offsets in the blob.
type layout struct{ size int }

func (l *layout) reserve(n int) int {
	off := (l.size + tableAlignment - 1) &^ (tableAlignment - 1)
	l.size = off + n
	return off
}

// table prepends a System Description Table Header to body and fills in the
// length and checksum (ACPI 6.4 §5.2.6): all bytes of the table, header
// included, must sum to zero modulo 256.
func table(sig string, revision byte, body []byte) []byte {
	t := make([]byte, headerSize+len(body))
	copy(t[0:4], sig)
	binary.LittleEndian.PutUint32(t[4:], uint32(len(t)))
	t[8] = revision
	// t[9] is the checksum, set last.
	copy(t[10:16], oemID)
	copy(t[16:24], oemTableID)
	binary.LittleEndian.PutUint32(t[24:], oemRevision)
	copy(t[28:32], creatorID)
	binary.LittleEndian.PutUint32(t[32:], creatorRev)
	copy(t[headerSize:], body)
	t[9] = checksum(t)
	return t
}

// checksum returns the byte that makes b sum to zero, assuming the
// checksum's own slot in b is still zero.
func checksum(b []byte) byte {
	var sum byte
	for _, v := range b {
		sum += v
	}
	return -sum
}

// XSDT: the header followed by 64-bit table addresses (ACPI 6.4 §5.2.8).
// The DSDT is not listed: the FADT points to it.
const xsdtRevision = 1

func buildXSDT(addrs ...uint64) []byte {
	body := make([]byte, 8*len(addrs))
	for i, a := range addrs {
		binary.LittleEndian.PutUint64(body[8*i:], a)
	}
	return table("XSDT", xsdtRevision, body)
}

// RSDP, ACPI 2.0+ form (ACPI 6.4 §5.2.5.3). It has no standard header: the
// first checksum covers the 20-byte ACPI 1.0 part, the extended checksum
// the whole structure. The 32-bit RSDT address is left 0: every OS since
// ACPI 2.0 uses the XSDT when the revision is 2 or more.
const (
	rsdpSize     = 36
	rsdpRevision = 2
)

func buildRSDP(xsdt uint64) []byte {
	r := make([]byte, rsdpSize)
	copy(r[0:8], "RSD PTR ")
	copy(r[9:15], oemID)
	r[15] = rsdpRevision
	binary.LittleEndian.PutUint32(r[20:], rsdpSize)
	binary.LittleEndian.PutUint64(r[24:], xsdt)
	r[8] = checksum(r[:20])
	r[32] = checksum(r)
	return r
}

// gas is a Generic Address Structure (ACPI 6.4 §5.2.3.2), 12 bytes.
func gas(dst []byte, spaceID, bitWidth, accessSize byte, addr uint64) {
	dst[0] = spaceID
	dst[1] = bitWidth
	dst[2] = 0 // bit offset
	dst[3] = accessSize
	binary.LittleEndian.PutUint64(dst[4:], addr)
}

// Generic Address Structure values.
const (
	gasSystemIO   = 1 // Address Space ID: system I/O
	gasAccessByte = 1 // Access Size: byte
)
