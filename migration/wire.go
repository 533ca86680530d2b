package migration

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
)

// PageSize is the unit of migration: the x86 base page, which is also the
// granularity of KVM's dirty log (Documentation/virt/kvm/api.rst,
// KVM_GET_DIRTY_LOG: "one bit per page").
const PageSize = 4096

// Version is the stream version this package writes and the only one it
// reads. Any change to a message's layout bumps it; the receiver refuses
// other versions with an error naming both (QEMU's stream has a version in its
// header for the same reason: "QEVM", version 3).
const Version = 1

// magic opens every stream, so that a receiver connected to the wrong thing
// says so instead of misparsing it.
const magic = "GOVMMIG\x00"

// Limits on what a receiver accepts. Every length on the wire is checked
// against one of these before anything is allocated.
const (
	// MaxRegions bounds the memory layout in Hello. A PC has two or three
	// RAM regions (below the MMIO hole, above 4 GiB); 64 is generous.
	MaxRegions = 64
	// MaxBatchPages bounds one Pages message (1 MiB of page data): large
	// enough that the per-message overhead is noise, small enough that the
	// rate limiter runs often.
	MaxBatchPages = 256
	// PeekEvery is how many pages Send sends between two peeks at the
	// dirty log (DirtyPeeker) for the writable-working-set rule: 4 MiB,
	// Xen's batch between two XEN_DOMCTL_SHADOW_OP_PEEKs.
	PeekEvery = 1024
	// maxNameLen bounds the source's name in Hello.
	maxNameLen = 255
	// maxErrorLen bounds the text of an Error message.
	maxErrorLen = 1024
	// maxGPA is the top of x86-64's physical address space (52 bits,
	// Intel SDM vol. 3A §4.1.4 MAXPHYADDR). No region may reach past it.
	maxGPA = 1 << 52
)

// msgType is the first byte of every frame.
type msgType uint8

// Source → destination.
const (
	msgHello    msgType = 0x01 // memory layout, page size, source name
	msgPages    msgType = 0x02 // a batch of pages
	msgRoundEnd msgType = 0x03 // end of a round: round number, pages in it
	msgState    msgType = 0x04 // the machine's opaque state blob
	msgGo       msgType = 0x05 // commit: the destination may now run the guest
	msgVerify   msgType = 0x06 // CRC-32C of every page after the final round (Options.Verify)
)

// Destination → source.
const (
	msgAccept   msgType = 0x81 // Hello accepted, memory prepared
	msgRestored msgType = 0x82 // state restored, vCPUs NOT running
	msgResumed  msgType = 0x83 // vCPUs running on the destination
)

// msgError travels both ways: the sender of it gives up and says why.
const msgError msgType = 0x7f

func (t msgType) String() string {
	switch t {
	case msgHello:
		return "Hello"
	case msgPages:
		return "Pages"
	case msgRoundEnd:
		return "RoundEnd"
	case msgState:
		return "State"
	case msgGo:
		return "Go"
	case msgVerify:
		return "Verify"
	case msgAccept:
		return "Accept"
	case msgRestored:
		return "Restored"
	case msgResumed:
		return "Resumed"
	case msgError:
		return "Error"
	}
	return fmt.Sprintf("message type %#02x", uint8(t))
}

// Frame layout, all integers big-endian (network order):
//
//	type    u8
//	length  u32          payload bytes
//	payload [length]byte
//	crc     u32          CRC-32C (Castagnoli) of type, length and payload
//
// The CRC covers every message, so a flipped bit in a page, a length or the
// state blob is caught before it is used. CRC-32C is what iSCSI and ext4 use
// for the same job and is computed in hardware (SSE4.2) by hash/crc32.
const (
	frameHeader  = 5
	frameTrailer = 4
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// pageFlagZero, in the low bits of a page entry's GPA, says the page is all
// zeroes and no data follows (QEMU: RAM_SAVE_FLAG_ZERO). The other low bits
// are reserved and must be zero.
const (
	pageFlagZero  = 1
	pageFlagsMask = PageSize - 1
	pageEntryHdr  = 8
)

// maxPayload is the largest payload the receiver of a message accepts.
// maxState is the receiver's limit on the state blob.
// maxVerify is the Verify payload for the layout announced in Hello (0
// before Hello).
func maxPayload(t msgType, maxState, maxVerify int) (int, bool) {
	switch t {
	case msgVerify:
		return maxVerify, true
	case msgHello:
		return 4 + 4 + MaxRegions*16 + 2 + maxNameLen, true
	case msgPages:
		return 4 + MaxBatchPages*(pageEntryHdr+PageSize), true
	case msgRoundEnd:
		return 12, true
	case msgState:
		return maxState, true
	case msgGo, msgAccept, msgRestored, msgResumed:
		return 0, true
	case msgError:
		return maxErrorLen, true
	}
	return 0, false
}

// frameWriter builds one frame at a time in a reused buffer and writes it
// with a single Write, so a Pages batch costs no allocation and a frame is
// never interleaved with anything else.
type frameWriter struct {
	w   io.Writer
	buf []byte
	n   uint64 // bytes written so far (the report's wire bytes)
	// broken is set when a write fails: part of a frame may have gone, so
	// the stream is out of step and nothing more is written to it.
	broken bool
}

// begin starts a frame of type t; append the payload to fw.buf.
func (fw *frameWriter) begin(t msgType) {
	fw.buf = append(fw.buf[:0], byte(t), 0, 0, 0, 0)
}

// finish fills in the length and checksum and writes the frame. It returns
// how many bytes of the frame reached the writer: the commit logic needs to
// know whether a Go message left whole.
func (fw *frameWriter) finish() (int, error) {
	binary.BigEndian.PutUint32(fw.buf[1:5], uint32(len(fw.buf)-frameHeader))
	fw.buf = binary.BigEndian.AppendUint32(fw.buf, crc32.Checksum(fw.buf, castagnoli))
	if fw.broken {
		return 0, errors.New("the stream broke earlier")
	}
	n, err := fw.w.Write(fw.buf)
	fw.n += uint64(n)
	if err == nil && n != len(fw.buf) {
		err = io.ErrShortWrite
	}
	if err != nil {
		fw.broken = true
	}
	return n, err
}

// writeMsg writes a frame with the given payload.
func (fw *frameWriter) writeMsg(t msgType, payload []byte) (int, error) {
	fw.begin(t)
	fw.buf = append(fw.buf, payload...)
	return fw.finish()
}

// writeError sends an Error message carrying err's text, cut to the limit.
func (fw *frameWriter) writeError(err error) error {
	if fw.broken {
		return nil
	}
	text := err.Error()
	if len(text) > maxErrorLen {
		text = text[:maxErrorLen]
	}
	_, werr := fw.writeMsg(msgError, []byte(text))
	return werr
}

// frameReader reads frames into a reused buffer.
type frameReader struct {
	r         io.Reader
	hdr       [frameHeader]byte
	buf       []byte
	n         uint64 // bytes read so far
	maxState  int
	maxVerify int // a Verify payload for the announced layout; set after Hello
}

// errClosed is returned (wrapped) when the peer closes the connection
// between two messages.
var errClosed = errors.New("connection closed by the peer")

// readFrame reads the next frame. The payload is valid until the next call.
//
// UNTRUSTED: everything read here comes from the peer. The type must be
// known, the length must be within that type's limit before any memory is
// allocated, and the checksum must match before the payload is returned.
func (fr *frameReader) readFrame() (msgType, []byte, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.EOF {
			return 0, nil, errClosed
		}
		return 0, nil, fmt.Errorf("reading a message header: %w", eofIsTruncation(err))
	}
	fr.n += frameHeader
	t := msgType(fr.hdr[0])
	length := binary.BigEndian.Uint32(fr.hdr[1:])
	limit, ok := maxPayload(t, fr.maxState, fr.maxVerify)
	if !ok {
		return 0, nil, fmt.Errorf("unknown message type %#02x (corrupt stream or a newer protocol)", fr.hdr[0])
	}
	if uint64(length) > uint64(limit) {
		return 0, nil, fmt.Errorf("%v message of %d bytes exceeds the limit of %d bytes", t, length, limit)
	}
	if err := fr.readPayload(int(length)); err != nil {
		return 0, nil, fmt.Errorf("reading a %v message of %d bytes: %w", t, length, eofIsTruncation(err))
	}
	var crcBytes [frameTrailer]byte
	if _, err := io.ReadFull(fr.r, crcBytes[:]); err != nil {
		return 0, nil, fmt.Errorf("reading the checksum of a %v message: %w", t, eofIsTruncation(err))
	}
	fr.n += uint64(length) + frameTrailer
	crc := crc32.Update(crc32.Checksum(fr.hdr[:], castagnoli), castagnoli, fr.buf)
	if got := binary.BigEndian.Uint32(crcBytes[:]); got != crc {
		return 0, nil, fmt.Errorf("checksum mismatch in a %v message of %d bytes (stream corrupted: got %#08x, computed %#08x)", t, length, got, crc)
	}
	return t, fr.buf, nil
}

// readPayload reads n bytes into fr.buf, growing it at most 1 MiB ahead of
// the data that has actually arrived: a peer that claims a 16 MiB state and
// then hangs up costs 1 MiB, not 16.
func (fr *frameReader) readPayload(n int) error {
	const chunk = 1 << 20
	fr.buf = fr.buf[:0]
	for len(fr.buf) < n {
		c := min(n-len(fr.buf), chunk)
		start := len(fr.buf)
		if cap(fr.buf) < start+c {
			grown := make([]byte, start, max(start+c, 2*cap(fr.buf)))
			copy(grown, fr.buf)
			fr.buf = grown
		}
		fr.buf = fr.buf[:start+c]
		if _, err := io.ReadFull(fr.r, fr.buf[start:]); err != nil {
			return err
		}
	}
	return nil
}

func eofIsTruncation(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.New("stream truncated (connection closed mid-message)")
	}
	return err
}

// errorText decodes an Error message for display.
//
// UNTRUSTED: the peer's text is shown to an operator; invalid UTF-8 is
// replaced, and callers print it with %q so control characters are escaped.
func errorText(payload []byte) string {
	return strings.ToValidUTF8(string(payload), "\uFFFD")
}

// preamble is the first 12 bytes of a stream: magic and version.
func preamble() []byte {
	return binary.BigEndian.AppendUint32([]byte(magic), Version)
}

// checkPreamble validates the first 12 bytes of a stream.
//
// UNTRUSTED: from the source.
func checkPreamble(p []byte) error {
	if string(p[:len(magic)]) != magic {
		return fmt.Errorf("not a govmm migration stream (starts with %q, want %q)", p[:len(magic)], magic)
	}
	if v := binary.BigEndian.Uint32(p[len(magic):]); v != Version {
		return fmt.Errorf("unsupported migration stream version %d (this govmm speaks version %d)", v, Version)
	}
	return nil
}

// Region is one contiguous run of guest RAM, in guest-physical addresses.
type Region struct {
	Start uint64 `json:"start"`
	Size  uint64 `json:"size"`
}

// ValidateLayout checks a memory layout: 1 to MaxRegions regions, each
// non-empty and page-aligned, in ascending GPA order without overlap, below
// 2^52, and in total at most maxRAM bytes (0: no limit). It returns the
// total size. Both ends of a migration use it: the source on its own layout,
// the destination on the one it receives.
func ValidateLayout(layout []Region, maxRAM uint64) (uint64, error) {
	if len(layout) == 0 {
		return 0, errors.New("memory layout has no regions")
	}
	if len(layout) > MaxRegions {
		return 0, fmt.Errorf("memory layout has %d regions (at most %d)", len(layout), MaxRegions)
	}
	var total uint64
	for i, r := range layout {
		if r.Size == 0 {
			return 0, fmt.Errorf("memory region %d at %#x is empty", i, r.Start)
		}
		if r.Start%PageSize != 0 || r.Size%PageSize != 0 {
			return 0, fmt.Errorf("memory region %d (%#x+%#x) is not page-aligned", i, r.Start, r.Size)
		}
		if r.Start >= maxGPA || r.Size > maxGPA-r.Start {
			return 0, fmt.Errorf("memory region %d (%#x+%#x) reaches past the 52-bit physical address space", i, r.Start, r.Size)
		}
		if i > 0 && r.Start < layout[i-1].Start+layout[i-1].Size {
			return 0, fmt.Errorf("memory region %d (%#x) overlaps or precedes region %d", i, r.Start, i-1)
		}
		total += r.Size // cannot overflow: every region lies below 2^52 and they are disjoint
	}
	if maxRAM > 0 && total > maxRAM {
		return 0, fmt.Errorf("guest RAM of %d MiB exceeds this destination's limit of %d MiB", total>>20, maxRAM>>20)
	}
	return total, nil
}

// hello is the first message: what the destination must prepare.
//
//	pageSize u32 | nregions u32 | nregions × (start u64, size u64) | nameLen u16 | name
type hello struct {
	pageSize uint32
	layout   []Region
	name     string
}

func appendHello(b []byte, h hello) []byte {
	b = binary.BigEndian.AppendUint32(b, h.pageSize)
	b = binary.BigEndian.AppendUint32(b, uint32(len(h.layout)))
	for _, r := range h.layout {
		b = binary.BigEndian.AppendUint64(b, r.Start)
		b = binary.BigEndian.AppendUint64(b, r.Size)
	}
	name := h.name
	if len(name) > maxNameLen {
		name = name[:maxNameLen]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(name)))
	return append(b, name...)
}

// parseHello decodes a Hello payload. It checks the encoding only; the
// caller validates the layout itself.
//
// UNTRUSTED: from the source; every count is checked against the bytes
// actually present.
func parseHello(p []byte) (hello, error) {
	var h hello
	if len(p) < 8 {
		return h, fmt.Errorf("Hello message too short (%d bytes)", len(p))
	}
	h.pageSize = binary.BigEndian.Uint32(p)
	n := binary.BigEndian.Uint32(p[4:])
	p = p[8:]
	if n > MaxRegions {
		return h, fmt.Errorf("Hello announces %d memory regions (at most %d)", n, MaxRegions)
	}
	if uint32(len(p)) < n*16+2 {
		return h, fmt.Errorf("Hello message too short for %d memory regions", n)
	}
	h.layout = make([]Region, n)
	for i := range h.layout {
		h.layout[i] = Region{Start: binary.BigEndian.Uint64(p), Size: binary.BigEndian.Uint64(p[8:])}
		p = p[16:]
	}
	nameLen := int(binary.BigEndian.Uint16(p))
	p = p[2:]
	if nameLen != len(p) {
		return h, fmt.Errorf("Hello message: name of %d bytes but %d bytes remain", nameLen, len(p))
	}
	h.name = errorText(p)
	return h, nil
}

// roundEnd closes a round: u32 round number, u64 page entries in the round.
func appendRoundEnd(b []byte, round uint32, pages uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, round)
	return binary.BigEndian.AppendUint64(b, pages)
}

// parseRoundEnd decodes a RoundEnd payload.
//
// UNTRUSTED: from the source.
func parseRoundEnd(p []byte) (round uint32, pages uint64, err error) {
	if len(p) != 12 {
		return 0, 0, fmt.Errorf("RoundEnd message of %d bytes (want 12)", len(p))
	}
	return binary.BigEndian.Uint32(p), binary.BigEndian.Uint64(p[4:]), nil
}

// Verify (Options.Verify) lets the destination check, before it restores
// anything, that its copy of guest RAM is the source's to the bit: the
// source sends, after the final round, a CRC-32C of every page in layout
// order, computed while the guest is paused.
//
//	count u32 | count × crc u32
//
// A page that differs means a write the dirty log never reported, by the
// guest (KVM) or by the VMM (a device that forgot MarkDirty): exactly the
// bugs that otherwise show up minutes later as a guest that crashes on the
// destination for no visible reason.
func verifyPayloadSize(pages uint64) int { return 4 + 4*int(pages) }

// pageCRC is the checksum Verify carries for one page. Most of an idle
// guest's RAM is zeroes, and comparing with zeroPage is far cheaper than a
// CRC (much more so under TCG, which emulates the CRC32 instruction).
func pageCRC(page []byte) uint32 {
	if bytes.Equal(page, zeroPage[:]) {
		return zeroPageCRC
	}
	return crc32.Checksum(page, castagnoli)
}

var zeroPageCRC = crc32.Checksum(zeroPage[:], castagnoli)
