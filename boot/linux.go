package boot

import (
	"encoding/binary"
	"fmt"

	"govmm/vmm"
)

// Config is what the loader needs besides the kernel.
type Config struct {
	Cmdline  string
	Initrd   []byte  // may be empty
	ACPIRSDP vmm.GPA // where the ACPI RSDP was written, or 0
}

// Placement records where Load put things, for logs and tests.
type Placement struct {
	InitrdAddr vmm.GPA
	InitrdSize uint64
	E820       []E820Entry
}

// E820Entry is one line of the BIOS memory map handed to the kernel in the
// zero page (boot_params.e820_table; zero-page.rst).
type E820Entry struct {
	Addr uint64
	Size uint64
	Type uint32
}

// E820 types (ACPI 6.4 §15 "System Address Map Interfaces").
const (
	E820RAM      = 1
	E820Reserved = 2
)

// Zero-page (struct boot_params) offsets used below
// (Documentation/x86/zero-page.rst and boot.rst).
const (
	zpACPIRSDPAddr    = 0x070
	zpExtRamdiskImage = 0x0c0
	zpExtRamdiskSize  = 0x0c4
	zpExtCmdLinePtr   = 0x0c8
	zpE820Entries     = 0x1e8
	zpVidMode         = 0x1fa
	zpTypeOfLoader    = 0x210
	zpRamdiskImage    = 0x218
	zpRamdiskSize     = 0x21c
	zpCmdLinePtr      = 0x228
	zpE820Table       = 0x2d0
	e820MaxEntries    = 128
	loaderUndefined   = 0xff // type_of_loader: "no assigned id"
	vidModeNormal     = 0xffff
)

// MinMemory is the least RAM this kernel and initrd can boot in: the kernel
// decompresses itself at 16 MiB and needs init_size bytes there, the initrd
// sits above it, and the kernel needs room to run. The figure is
// conservative, so a too-small --mem fails here with a clear message instead
// of as an out-of-memory panic inside the guest.
func MinMemory(k *Kernel, initrdSize int) uint64 {
	return uint64(kernelRunStart) + uint64(k.Header.InitSize) + alignUp(uint64(initrdSize), vmm.PageSize) + 32<<20
}

// Load writes everything the kernel expects to find in RAM at its 64-bit
// entry point: the protected-mode kernel at 1 MiB, the initrd high in low
// memory, the command line, the zero page with the memory map, a GDT and
// identity page tables. It returns where the initrd went.
func Load(mem *vmm.GuestMemory, k *Kernel, cfg Config) (Placement, error) {
	var p Placement
	if need := MinMemory(k, len(cfg.Initrd)); mem.Size() < need {
		return p, fmt.Errorf("%d MiB of memory is too small for this kernel and initrd: give at least --mem %dM",
			mem.Size()>>20, (need+(1<<20)-1)>>20)
	}
	if max := k.Header.CmdLineSize; uint32(len(cfg.Cmdline)) > max {
		return p, fmt.Errorf("kernel command line is %d bytes; this kernel accepts at most %d", len(cfg.Cmdline), max)
	}

	if _, err := mem.WriteAt(k.protected, int64(KernelAddr)); err != nil {
		return p, fmt.Errorf("loading kernel: %w", err)
	}
	if _, err := mem.WriteAt(append([]byte(cfg.Cmdline), 0), int64(CmdlineAddr)); err != nil {
		return p, fmt.Errorf("writing command line: %w", err)
	}

	p.E820 = memoryMap(mem)
	if len(cfg.Initrd) > 0 {
		addr, err := placeInitrd(mem, k, uint64(len(cfg.Initrd)))
		if err != nil {
			return p, err
		}
		if _, err := mem.WriteAt(cfg.Initrd, int64(addr)); err != nil {
			return p, fmt.Errorf("loading initrd: %w", err)
		}
		p.InitrdAddr, p.InitrdSize = addr, uint64(len(cfg.Initrd))
	}

	zp := zeroPage(k, cfg, p)
	if _, err := mem.WriteAt(zp, int64(ZeroPageAddr)); err != nil {
		return p, fmt.Errorf("writing zero page: %w", err)
	}
	if err := writeGDT(mem); err != nil {
		return p, err
	}
	if err := writePageTables(mem); err != nil {
		return p, err
	}
	return p, nil
}

// zeroPage builds struct boot_params: the kernel's own setup header, copied
// from the image as boot.rst asks ("the setup header ... should be copied
// from the kernel image"), with the fields a boot loader must fill in.
func zeroPage(k *Kernel, cfg Config, p Placement) []byte {
	zp := make([]byte, vmm.PageSize)
	copy(zp[headerStart:], k.setupHeader)
	le := binary.LittleEndian
	le.PutUint16(zp[zpVidMode:], vidModeNormal)
	zp[zpTypeOfLoader] = loaderUndefined
	le.PutUint32(zp[zpCmdLinePtr:], uint32(CmdlineAddr))
	le.PutUint32(zp[zpExtCmdLinePtr:], 0)
	le.PutUint32(zp[zpRamdiskImage:], uint32(p.InitrdAddr))
	le.PutUint32(zp[zpExtRamdiskImage:], uint32(uint64(p.InitrdAddr)>>32))
	le.PutUint32(zp[zpRamdiskSize:], uint32(p.InitrdSize))
	le.PutUint32(zp[zpExtRamdiskSize:], uint32(p.InitrdSize>>32))
	le.PutUint64(zp[zpACPIRSDPAddr:], uint64(cfg.ACPIRSDP))
	zp[zpE820Entries] = byte(len(p.E820))
	for i, e := range p.E820 {
		off := zpE820Table + 20*i
		le.PutUint64(zp[off:], e.Addr)
		le.PutUint64(zp[off+8:], e.Size)
		le.PutUint32(zp[off+16:], e.Type)
	}
	return zp
}

// memoryMap describes RAM to the kernel the way a PC BIOS does: low RAM
// up to the EBDA, the legacy hole 0x9fc00-0xfffff reserved (our ACPI tables
// live there), then RAM from 1 MiB. The MMIO hole below 4 GiB is simply
// absent, which tells Linux it may place devices there.
func memoryMap(mem *vmm.GuestMemory) []E820Entry {
	var out []E820Entry
	for _, r := range mem.Regions() {
		start, end := uint64(r.Start), uint64(r.End())
		if start < uint64(EBDAStart) {
			out = append(out, E820Entry{start, min(end, uint64(EBDAStart)) - start, E820RAM})
			if end > uint64(EBDAStart) {
				out = append(out, E820Entry{uint64(EBDAStart), uint64(LegacyEnd - EBDAStart), E820Reserved})
			}
			start = uint64(LegacyEnd)
		}
		if end > start {
			out = append(out, E820Entry{start, end - start, E820RAM})
		}
	}
	return out[:min(len(out), e820MaxEntries)]
}

// placeInitrd puts the initrd as high as the kernel allows (initrd_addr_max)
// in the low RAM region, page-aligned, as boot.rst recommends, well away
// from where the kernel decompresses itself.
func placeInitrd(mem *vmm.GuestMemory, k *Kernel, size uint64) (vmm.GPA, error) {
	limit := uint64(k.Header.InitrdAddrMax) + 1
	low := mem.Regions()[0]
	top := min(uint64(low.End()), limit, identityMapped)
	floor := uint64(kernelRunStart) + uint64(k.Header.InitSize)
	if size > top || top-size < floor {
		return 0, fmt.Errorf("initrd of %d MiB does not fit below %#x above the kernel: give more --mem", size>>20, top)
	}
	return vmm.GPA((top - size) &^ (vmm.PageSize - 1)), nil
}

func alignUp(x, a uint64) uint64 { return (x + a - 1) &^ (a - 1) }
