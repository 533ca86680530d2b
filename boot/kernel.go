package boot

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/u-root/u-root/pkg/boot/bzimage"
)

// Kernel is a parsed bzImage: the setup header that describes how to load
// it, and the two parts of the file (Documentation/x86/boot.rst, "THE
// ACTUAL HEADER" and "LOADING THE REST OF THE KERNEL"):
//
//	file offset 0                   (setup_sects+1)*512            end
//	│ boot sector │ real-mode setup │ protected-mode kernel (compressed) │
//	              ▲ header at 0x1f1
//
// govmm uses the 64-bit boot protocol, so the real-mode setup code is never
// run; only its header is copied into the zero page.
type Kernel struct {
	Header  bzimage.LinuxHeader
	Version string // e.g. "6.1.0-56-cloud-amd64", from the header's kernel_version string

	setupHeader []byte // bytes 0x1f1..end of header, copied verbatim into the zero page
	protected   []byte // the protected-mode kernel, loaded at 1 MiB
}

// Setup-header facts used below (boot.rst).
const (
	bootFlagOffset   = 0x1fe // boot_flag: 0xAA55
	headerMagicOff   = 0x202 // "HdrS"
	headerStart      = 0x1f1 // first setup-header byte
	headerJumpEnd    = 0x201 // byte giving the header's length past 0x202
	minProtocol      = 0x020c
	xlfKernel64      = 1 << 0 // XLF_KERNEL_64: has the 64-bit entry point at +0x200
	loadedHigh       = 1 << 0 // loadflags LOADED_HIGH: protected-mode code at 1 MiB
	headerReadLength = 0x268  // enough to cover every header field we read
)

// LoadKernel reads and parses a bzImage file.
func LoadKernel(path string) (*Kernel, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("kernel %s: no such file", path)
		}
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	k, err := ParseKernel(data)
	if err != nil {
		return nil, fmt.Errorf("kernel %s: %w", path, err)
	}
	return k, nil
}

// ParseKernel validates a bzImage held in memory. Each check names what is
// wrong, because "not a bzImage" and "a truncated download" need different
// fixes.
func ParseKernel(data []byte) (*Kernel, error) {
	if len(data) < headerReadLength {
		return nil, fmt.Errorf("not a bzImage: only %d bytes (a Linux setup header needs %d)", len(data), headerReadLength)
	}
	if binary.LittleEndian.Uint16(data[bootFlagOffset:]) != 0xaa55 {
		if bytes.HasPrefix(data, []byte("\x7fELF")) {
			return nil, errors.New("not a bzImage: this is an ELF file (an uncompressed vmlinux?); use the bzImage (arch/x86/boot/bzImage or /boot/vmlinuz-*)")
		}
		return nil, errors.New("not a bzImage: no boot sector signature 0xAA55 at offset 0x1fe")
	}
	if string(data[headerMagicOff:headerMagicOff+4]) != "HdrS" {
		return nil, errors.New("not a bzImage: no \"HdrS\" setup header magic at offset 0x202 (a pre-2.0 zImage?)")
	}
	k := &Kernel{}
	if err := binary.Read(bytes.NewReader(data), binary.LittleEndian, &k.Header); err != nil {
		return nil, fmt.Errorf("reading setup header: %w", err)
	}
	h := &k.Header
	if h.Protocolversion < minProtocol {
		return nil, fmt.Errorf("boot protocol %d.%02d is too old: govmm needs 2.12 or later (Linux 3.8+) for the 64-bit entry point",
			h.Protocolversion>>8, h.Protocolversion&0xff)
	}
	if h.XLoadFlags&xlfKernel64 == 0 {
		return nil, errors.New("this kernel has no 64-bit entry point (XLF_KERNEL_64 unset): govmm boots x86-64 kernels only")
	}
	if h.Loadflags&loadedHigh == 0 {
		return nil, errors.New("this is a zImage (loaded low); govmm needs a bzImage")
	}
	setupSects := int(h.SetupSects)
	if setupSects == 0 {
		setupSects = 4 // boot.rst: "if the setup_sects field contains 0, the real value is 4"
	}
	setupSize := (setupSects + 1) * 512
	hdrEnd := headerMagicOff + int(data[headerJumpEnd])
	if hdrEnd > setupSize || hdrEnd < headerReadLength-6 {
		return nil, fmt.Errorf("corrupt setup header: it claims to end at %#x", hdrEnd)
	}
	if setupSize >= len(data) {
		return nil, fmt.Errorf("truncated bzImage: the setup code alone should be %d bytes, the file has %d", setupSize, len(data))
	}
	// syssize counts 16-byte paragraphs of protected-mode code; a download cut
	// short is caught here rather than as a guest that dies decompressing.
	want := int64(h.Syssize) * 16
	if have := int64(len(data) - setupSize); have < want {
		return nil, fmt.Errorf("truncated bzImage: the header says the kernel is %d bytes after the setup code, the file has only %d", want, have)
	}
	if h.InitSize == 0 {
		return nil, errors.New("corrupt setup header: init_size is 0")
	}
	k.setupHeader = append([]byte(nil), data[headerStart:hdrEnd]...)
	k.protected = data[setupSize:]
	if v, err := bzimage.KVer(bytes.NewReader(data)); err == nil {
		k.Version = v
	}
	return k, nil
}

// ReleaseName is the first word of the version string: the name of the
// kernel's /lib/modules directory ("6.1.0-56-cloud-amd64").
func (k *Kernel) ReleaseName() string {
	if i := bytes.IndexByte([]byte(k.Version), ' '); i >= 0 {
		return k.Version[:i]
	}
	return k.Version
}
