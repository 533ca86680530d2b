package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// exportInfo is what the client's handshake learns about the export.
type exportInfo struct {
	size  uint64
	flags uint16 // transmission flags; 0 when the server did not set NBD_FLAG_HAS_FLAGS
	// Block size constraints (proto.md, "Block size constraints"): offsets
	// and lengths are multiples of minBlock, and a request moves at most
	// maxRequest bytes (the server's maximum, capped at 32 MiB).
	minBlock   uint32
	maxRequest uint32
}

func (e exportInfo) has(flag uint16) bool { return e.flags&flag != 0 }

// negotiate is the client's side of the handshake (proto.md, "Fixed newstyle
// negotiation"): it reads the server's greeting, answers with its flags,
// and asks for export with NBD_OPT_GO, or NBD_OPT_EXPORT_NAME from a server
// that is not fixed newstyle or does not know NBD_OPT_GO. It returns at the
// start of the transmission phase. where names the server in errors.
//
// UNTRUSTED: every byte read here comes from the server.
func negotiate(rw io.ReadWriter, export, where string) (exportInfo, error) {
	if len(export) > maxExportName {
		return exportInfo{}, fmt.Errorf("export name of %d bytes is longer than NBD's limit of %d", len(export), maxExportName)
	}
	var greeting [18]byte // NBDMAGIC u64, IHAVEOPT u64, handshake flags u16
	if _, err := io.ReadFull(rw, greeting[:16]); err != nil {
		return exportInfo{}, fmt.Errorf("reading the NBD greeting from %s: %w", where, truncated(err))
	}
	if m := binary.BigEndian.Uint64(greeting[0:]); m != magicNBD {
		return exportInfo{}, fmt.Errorf("%s is not an NBD server (it starts with %q, want \"NBDMAGIC\")", where, greeting[:8])
	}
	switch m := binary.BigEndian.Uint64(greeting[8:]); m {
	case magicIHaveOpt:
	case magicOldstyle:
		return exportInfo{}, fmt.Errorf("%s speaks oldstyle NBD negotiation, which has no export names; only newstyle is supported", where)
	default:
		return exportInfo{}, fmt.Errorf("%s: unknown NBD negotiation style %#x (want IHAVEOPT)", where, m)
	}
	if _, err := io.ReadFull(rw, greeting[16:]); err != nil {
		return exportInfo{}, fmt.Errorf("reading the handshake flags from %s: %w", where, truncated(err))
	}
	serverFlags := binary.BigEndian.Uint16(greeting[16:])
	fixed := serverFlags&flagFixedNewstyle != 0
	noZeroes := serverFlags&flagNoZeroes != 0

	// proto.md, "Client flags": set only the flags the server offered.
	var clientFlags uint32
	if fixed {
		clientFlags |= clientFlagFixedNewstyle
	}
	if noZeroes {
		clientFlags |= clientFlagNoZeroes
	}
	if _, err := rw.Write(binary.BigEndian.AppendUint32(nil, clientFlags)); err != nil {
		return exportInfo{}, fmt.Errorf("sending client flags to %s: %w", where, err)
	}
	if !fixed {
		// Plain newstyle: a server that may close the connection on any
		// option it does not know, so ask only for the export.
		return exportName(rw, export, where, noZeroes)
	}
	info, err := optionGo(rw, export, where)
	if errors.Is(err, errGoUnsupported) {
		// proto.md, "NBD_OPT_GO": "a client MAY fall back to
		// NBD_OPT_EXPORT_NAME" when the server replies NBD_REP_ERR_UNSUP.
		return exportName(rw, export, where, noZeroes)
	}
	return info, err
}

var errGoUnsupported = errors.New("server does not support NBD_OPT_GO")

// optionGo sends NBD_OPT_GO and reads its replies: zero or more NBD_REP_INFO,
// then NBD_REP_ACK, or one error reply (proto.md, "Option types: NBD_OPT_INFO
// and NBD_OPT_GO"). NBD_INFO_EXPORT is always sent by the server; the client
// asks for NBD_INFO_BLOCK_SIZE too.
func optionGo(rw io.ReadWriter, export, where string) (exportInfo, error) {
	if _, err := rw.Write(appendOption(nil, optGo, goData(export, infoBlockSize))); err != nil {
		return exportInfo{}, fmt.Errorf("sending NBD_OPT_GO to %s: %w", where, err)
	}
	info := exportInfo{minBlock: 1, maxRequest: defaultMaxBlock}
	haveExport := false
	for {
		opt, rep, data, err := readOptionReply(rw)
		if err != nil {
			return exportInfo{}, fmt.Errorf("reading the reply to NBD_OPT_GO from %s: %w", where, err)
		}
		if opt != optGo {
			return exportInfo{}, fmt.Errorf("%s answered %s to NBD_OPT_GO (protocol violation)", where, optName(opt))
		}
		switch {
		case rep == repInfo:
			if err := info.parseInfo(data, &haveExport); err != nil {
				return exportInfo{}, fmt.Errorf("%s: bad NBD_REP_INFO: %w", where, err)
			}
		case rep == repAck:
			if !haveExport {
				return exportInfo{}, fmt.Errorf("%s acknowledged NBD_OPT_GO without sending NBD_INFO_EXPORT (protocol violation)", where)
			}
			return info, nil
		case rep == repErrUnsup:
			return exportInfo{}, errGoUnsupported
		case rep&repFlagError != 0:
			return exportInfo{}, optionError(rep, data, export, where)
		default:
			return exportInfo{}, fmt.Errorf("%s sent %s to NBD_OPT_GO (protocol violation)", where, repName(rep))
		}
	}
}

// parseInfo reads one NBD_REP_INFO payload into info. Unknown info types
// are ignored, as proto.md asks of clients.
//
// UNTRUSTED: lengths and values are checked before use.
func (info *exportInfo) parseInfo(data []byte, haveExport *bool) error {
	if len(data) < 2 {
		return fmt.Errorf("%d bytes, too short for an info type", len(data))
	}
	switch t := binary.BigEndian.Uint16(data); t {
	case infoExport:
		if len(data) != 12 {
			return fmt.Errorf("NBD_INFO_EXPORT of %d bytes, want 12", len(data))
		}
		size := binary.BigEndian.Uint64(data[2:])
		if size > math.MaxInt64 {
			return fmt.Errorf("export size %d is larger than 2^63-1", size)
		}
		info.size = size
		info.flags = binary.BigEndian.Uint16(data[10:])
		if info.flags&transHasFlags == 0 {
			info.flags = 0
		}
		*haveExport = true
	case infoBlockSize:
		if len(data) != 14 {
			return fmt.Errorf("NBD_INFO_BLOCK_SIZE of %d bytes, want 14", len(data))
		}
		minimum := binary.BigEndian.Uint32(data[2:])
		preferred := binary.BigEndian.Uint32(data[6:])
		maximum := binary.BigEndian.Uint32(data[10:])
		// proto.md, "Block size constraints": the minimum is a power of
		// two up to 64 KiB, the preferred a power of two at least the
		// minimum, the maximum a multiple of the minimum (or 2^32-1).
		if !isPowerOfTwo(minimum) || minimum > maxMinimumBlockSize {
			return fmt.Errorf("minimum block size %d is not a power of two up to 64 KiB", minimum)
		}
		if !isPowerOfTwo(preferred) || preferred < minimum {
			return fmt.Errorf("preferred block size %d is not a power of two at least the minimum %d", preferred, minimum)
		}
		if maximum < minimum || (maximum%minimum != 0 && maximum != math.MaxUint32) {
			return fmt.Errorf("maximum block size %d is not a multiple of the minimum %d", maximum, minimum)
		}
		info.minBlock = minimum
		limit := min(maximum, defaultMaxBlock)
		info.maxRequest = limit - limit%minimum
	}
	return nil
}

// optionError turns an error reply into a sentence naming the export and
// the server.
func optionError(rep uint32, data []byte, export, where string) error {
	said := ""
	if len(data) > 0 {
		said = fmt.Sprintf("; the server says %q", peerText(data))
	}
	switch rep {
	case repErrUnknown:
		return fmt.Errorf("export %q not found on %s (%s)%s", export, where, repName(rep), said)
	case repErrTLSReqd:
		return fmt.Errorf("%s requires TLS for export %q, which govmm does not speak (%s)%s", where, export, repName(rep), said)
	case repErrPolicy:
		return fmt.Errorf("%s refuses export %q by policy (%s)%s", where, export, repName(rep), said)
	}
	return fmt.Errorf("%s refused export %q (%s)%s", where, export, repName(rep), said)
}

// exportName asks for the export the old way (proto.md, "NBD_OPT_EXPORT_NAME"):
// the reply is the size, the transmission flags, and 124 zero bytes unless
// both sides agreed on NO_ZEROES. A server that does not have the export
// just closes the connection.
func exportName(rw io.ReadWriter, export, where string, noZeroes bool) (exportInfo, error) {
	if _, err := rw.Write(appendOption(nil, optExportName, []byte(export))); err != nil {
		return exportInfo{}, fmt.Errorf("sending NBD_OPT_EXPORT_NAME to %s: %w", where, err)
	}
	var reply [10 + exportNameReplyZeros]byte
	n := 10
	if !noZeroes {
		n += exportNameReplyZeros
	}
	if _, err := io.ReadFull(rw, reply[:n]); err != nil {
		if errors.Is(err, io.EOF) {
			return exportInfo{}, fmt.Errorf("%s closed the connection after NBD_OPT_EXPORT_NAME: export %q probably does not exist", where, export)
		}
		return exportInfo{}, fmt.Errorf("reading the reply to NBD_OPT_EXPORT_NAME from %s: %w", where, truncated(err))
	}
	size := binary.BigEndian.Uint64(reply[0:])
	if size > math.MaxInt64 {
		return exportInfo{}, fmt.Errorf("%s: export size %d is larger than 2^63-1", where, size)
	}
	flags := binary.BigEndian.Uint16(reply[8:])
	if flags&transHasFlags == 0 {
		flags = 0
	}
	return exportInfo{size: size, flags: flags, minBlock: 1, maxRequest: defaultMaxBlock}, nil
}

// readOptionReply reads one option reply (proto.md, "Option reply").
//
// UNTRUSTED: the length is bounded before anything is allocated.
func readOptionReply(r io.Reader) (opt, rep uint32, data []byte, err error) {
	var hdr [20]byte // magic u64, option u32, reply type u32, length u32
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return 0, 0, nil, truncated(err)
	}
	if m := binary.BigEndian.Uint64(hdr[0:]); m != magicOptionReply {
		return 0, 0, nil, fmt.Errorf("bad option reply magic %#x (want %#x)", m, magicOptionReply)
	}
	opt = binary.BigEndian.Uint32(hdr[8:])
	rep = binary.BigEndian.Uint32(hdr[12:])
	length := binary.BigEndian.Uint32(hdr[16:])
	if length > maxOptionPayload {
		return 0, 0, nil, fmt.Errorf("option reply of %d bytes exceeds the limit of %d", length, maxOptionPayload)
	}
	data = make([]byte, length)
	if _, err := io.ReadFull(r, data); err != nil {
		return 0, 0, nil, truncated(err)
	}
	return opt, rep, data, nil
}

// truncated names an end of stream in the middle of a message.
func truncated(err error) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return fmt.Errorf("connection closed mid-message: %w", io.ErrUnexpectedEOF)
	}
	return err
}
