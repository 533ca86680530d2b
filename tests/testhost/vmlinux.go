package testhost

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/pierrec/lz4/v4"
)

// Offsets into the bzImage "setup header", kernel Documentation/arch/x86/boot.rst
// ("The Real-Mode Kernel Header"). All fields are little-endian.
const (
	hdrSetupSects    = 0x1f1 // setup_sects: 512-byte sectors of real-mode code after the boot sector
	hdrMagic         = 0x202 // header: "HdrS"
	hdrVersion       = 0x206 // version: boot protocol version, payload fields need >= 2.08
	hdrPayloadOffset = 0x248 // payload_offset: from the start of the protected-mode code
	hdrPayloadLength = 0x24c // payload_length
)

// lz4LegacyMagic starts an LZ4 "legacy frame" (lz4 -l), the format the kernel's
// lz4 decompressor expects (lib/decompress_unlz4.c).
var lz4LegacyMagic = []byte{0x02, 0x21, 0x4c, 0x18}

// ExtractVmlinux returns the uncompressed ELF kernel (vmlinux) hidden inside an
// LZ4-compressed bzImage.
//
// Why: under TCG, QEMU boots the uncompressed ELF through its PVH entry point
// and the test host skips the in-guest decompressor, which is noticeably
// slow when every instruction is emulated.
//
// Layout (boot.rst, "Details of Header Fields", payload_offset): the
// protected-mode code starts at (setup_sects+1)*512 (setup_sects 0 means 4);
// the compressed payload is payload_length bytes at payload_offset from
// there. The kernel's build appends the uncompressed size as a le32 after the
// LZ4 stream (scripts/Makefile.lib, size_append), which we use as a check.
func ExtractVmlinux(bzImage []byte) ([]byte, error) {
	if len(bzImage) < hdrPayloadLength+4 {
		return nil, errors.New("bzImage: file too short for a setup header")
	}
	if !bytes.Equal(bzImage[hdrMagic:hdrMagic+4], []byte("HdrS")) {
		return nil, errors.New(`bzImage: no "HdrS" magic at 0x202`)
	}
	if v := binary.LittleEndian.Uint16(bzImage[hdrVersion:]); v < 0x208 {
		return nil, fmt.Errorf("bzImage: boot protocol %#x has no payload fields (need >= 2.08)", v)
	}
	setupSects := int(bzImage[hdrSetupSects])
	if setupSects == 0 {
		setupSects = 4
	}
	pmStart := uint64(setupSects+1) * 512
	off := pmStart + uint64(binary.LittleEndian.Uint32(bzImage[hdrPayloadOffset:]))
	n := uint64(binary.LittleEndian.Uint32(bzImage[hdrPayloadLength:]))
	if n < 8 || off+n > uint64(len(bzImage)) {
		return nil, fmt.Errorf("bzImage: payload [%#x, +%#x) outside the %#x-byte file", off, n, len(bzImage))
	}
	payload := bzImage[off : off+n]
	if !bytes.HasPrefix(payload, lz4LegacyMagic) {
		return nil, fmt.Errorf("bzImage: payload is not LZ4 (starts % x); only LZ4 kernels are supported", payload[:4])
	}
	want := binary.LittleEndian.Uint32(payload[len(payload)-4:])
	out, err := io.ReadAll(lz4.NewReader(bytes.NewReader(payload[:len(payload)-4])))
	if err != nil {
		return nil, fmt.Errorf("bzImage: decompressing LZ4 payload: %w", err)
	}
	if uint64(len(out)) != uint64(want) {
		return nil, fmt.Errorf("bzImage: payload decompressed to %d bytes, trailer says %d", len(out), want)
	}
	if !bytes.HasPrefix(out, []byte("\x7fELF")) {
		return nil, errors.New("bzImage: decompressed payload is not an ELF file")
	}
	return out, nil
}
