package nbd

import (
	"encoding/binary"
	"fmt"
	"strings"
	"syscall"
)

// The protocol's numbers, as named in proto.md. Everything on the wire is
// big-endian ("network byte order", proto.md, "Conventions").

// Magic numbers (proto.md, "Handshake" and "Transmission").
const (
	magicNBD          = 0x4e42444d41474943 // "NBDMAGIC", the first 8 bytes from the server
	magicIHaveOpt     = 0x49484156454f5054 // "IHAVEOPT": newstyle negotiation; also the prefix of every option
	magicOldstyle     = 0x0000420281861253 // cliserv_magic: an oldstyle server (not supported)
	magicOptionReply  = 0x0003e889045565a9 // prefix of every option reply
	magicRequest      = 0x25609513         // NBD_REQUEST_MAGIC
	magicSimpleReply  = 0x67446698         // NBD_SIMPLE_REPLY_MAGIC
	magicStructReply  = 0x668e33ef         // NBD_STRUCTURED_REPLY_MAGIC (never negotiated here)
	requestHeaderSize = 28                 // magic u32, flags u16, type u16, cookie u64, offset u64, length u32
	replyHeaderSize   = 16                 // magic u32, error u32, cookie u64
)

// Handshake flags, sent by the server (proto.md, "Handshake flags").
const (
	flagFixedNewstyle = 1 << 0 // NBD_FLAG_FIXED_NEWSTYLE
	flagNoZeroes      = 1 << 1 // NBD_FLAG_NO_ZEROES
)

// Client flags, the client's answer (proto.md, "Client flags").
const (
	clientFlagFixedNewstyle = 1 << 0 // NBD_FLAG_C_FIXED_NEWSTYLE
	clientFlagNoZeroes      = 1 << 1 // NBD_FLAG_C_NO_ZEROES
	clientFlagsKnown        = clientFlagFixedNewstyle | clientFlagNoZeroes
)

// Transmission flags: what the export supports, sent with its size
// (proto.md, "Transmission flags").
const (
	transHasFlags        = 1 << 0 // NBD_FLAG_HAS_FLAGS: must be set, or the other bits mean nothing
	transReadOnly        = 1 << 1 // NBD_FLAG_READ_ONLY
	transSendFlush       = 1 << 2 // NBD_FLAG_SEND_FLUSH
	transSendFUA         = 1 << 3 // NBD_FLAG_SEND_FUA
	transRotational      = 1 << 4 // NBD_FLAG_ROTATIONAL
	transSendTrim        = 1 << 5 // NBD_FLAG_SEND_TRIM
	transSendWriteZeroes = 1 << 6 // NBD_FLAG_SEND_WRITE_ZEROES
)

// Option types (proto.md, "Option types").
const (
	optExportName     = 1  // NBD_OPT_EXPORT_NAME
	optAbort          = 2  // NBD_OPT_ABORT
	optList           = 3  // NBD_OPT_LIST
	optStartTLS       = 5  // NBD_OPT_STARTTLS
	optInfo           = 6  // NBD_OPT_INFO
	optGo             = 7  // NBD_OPT_GO
	optStructuredRepl = 8  // NBD_OPT_STRUCTURED_REPLY
	optListMetaCtx    = 9  // NBD_OPT_LIST_META_CONTEXT
	optSetMetaCtx     = 10 // NBD_OPT_SET_META_CONTEXT
	optExtendedHdrs   = 11 // NBD_OPT_EXTENDED_HEADERS
)

// Option reply types (proto.md, "Option reply types"). Error replies have
// bit 31 set.
const (
	repAck               = 1                 // NBD_REP_ACK
	repServer            = 2                 // NBD_REP_SERVER
	repInfo              = 3                 // NBD_REP_INFO
	repFlagError         = 1 << 31           // NBD_REP_FLAG_ERROR
	repErrUnsup          = repFlagError + 1  // NBD_REP_ERR_UNSUP
	repErrPolicy         = repFlagError + 2  // NBD_REP_ERR_POLICY
	repErrInvalid        = repFlagError + 3  // NBD_REP_ERR_INVALID
	repErrPlatform       = repFlagError + 4  // NBD_REP_ERR_PLATFORM
	repErrTLSReqd        = repFlagError + 5  // NBD_REP_ERR_TLS_REQD
	repErrUnknown        = repFlagError + 6  // NBD_REP_ERR_UNKNOWN
	repErrShutdown       = repFlagError + 7  // NBD_REP_ERR_SHUTDOWN
	repErrBlockSizeReqd  = repFlagError + 8  // NBD_REP_ERR_BLOCK_SIZE_REQD
	repErrTooBig         = repFlagError + 9  // NBD_REP_ERR_TOO_BIG
	repErrExtHeaderReqd  = repFlagError + 10 // NBD_REP_ERR_EXT_HEADER_REQD
	maxOptionPayload     = 64 << 10          // our bound on an option or option reply's data
	maxExportName        = 4096              // proto.md: names are at most 4096 bytes
	exportNameReplyZeros = 124               // the zero padding after NBD_OPT_EXPORT_NAME's reply, unless NO_ZEROES
)

// Info types, the first u16 of an NBD_REP_INFO (proto.md, "Option types:
// NBD_OPT_INFO and NBD_OPT_GO").
const (
	infoExport    = 0 // NBD_INFO_EXPORT: size u64, transmission flags u16
	infoName      = 1 // NBD_INFO_NAME
	infoDesc      = 2 // NBD_INFO_DESCRIPTION
	infoBlockSize = 3 // NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum u32
)

// Request types (proto.md, "Request types").
const (
	cmdRead        = 0 // NBD_CMD_READ
	cmdWrite       = 1 // NBD_CMD_WRITE
	cmdDisc        = 2 // NBD_CMD_DISC
	cmdFlush       = 3 // NBD_CMD_FLUSH
	cmdTrim        = 4 // NBD_CMD_TRIM
	cmdCache       = 5 // NBD_CMD_CACHE
	cmdWriteZeroes = 6 // NBD_CMD_WRITE_ZEROES
)

// Command flags (proto.md, "Command flags").
const (
	cmdFlagFUA    = 1 << 0 // NBD_CMD_FLAG_FUA: durable before the reply
	cmdFlagNoHole = 1 << 1 // NBD_CMD_FLAG_NO_HOLE: WRITE_ZEROES must not deallocate
)

// Block sizes (proto.md, "Block size constraints"). Without NBD_INFO_BLOCK_SIZE
// a client "desiring maximum interoperability" uses 512-byte alignment and at
// most 32 MiB per read or write.
const (
	defaultMinBlock     = 512
	defaultPreferred    = 4096
	defaultMaxBlock     = 32 << 20
	maxMinimumBlockSize = 64 << 10 // the minimum block size is at most 64 KiB
)

func cmdName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "NBD_CMD_READ"
	case cmdWrite:
		return "NBD_CMD_WRITE"
	case cmdDisc:
		return "NBD_CMD_DISC"
	case cmdFlush:
		return "NBD_CMD_FLUSH"
	case cmdTrim:
		return "NBD_CMD_TRIM"
	case cmdCache:
		return "NBD_CMD_CACHE"
	case cmdWriteZeroes:
		return "NBD_CMD_WRITE_ZEROES"
	}
	return fmt.Sprintf("command %d", cmd)
}

func optName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredRepl:
		return "NBD_OPT_STRUCTURED_REPLY"
	case optListMetaCtx:
		return "NBD_OPT_LIST_META_CONTEXT"
	case optSetMetaCtx:
		return "NBD_OPT_SET_META_CONTEXT"
	case optExtendedHdrs:
		return "NBD_OPT_EXTENDED_HEADERS"
	}
	return fmt.Sprintf("option %d", opt)
}

func repName(rep uint32) string {
	switch rep {
	case repAck:
		return "NBD_REP_ACK"
	case repServer:
		return "NBD_REP_SERVER"
	case repInfo:
		return "NBD_REP_INFO"
	case repErrUnsup:
		return "NBD_REP_ERR_UNSUP"
	case repErrPolicy:
		return "NBD_REP_ERR_POLICY"
	case repErrInvalid:
		return "NBD_REP_ERR_INVALID"
	case repErrPlatform:
		return "NBD_REP_ERR_PLATFORM"
	case repErrTLSReqd:
		return "NBD_REP_ERR_TLS_REQD"
	case repErrUnknown:
		return "NBD_REP_ERR_UNKNOWN"
	case repErrShutdown:
		return "NBD_REP_ERR_SHUTDOWN"
	case repErrBlockSizeReqd:
		return "NBD_REP_ERR_BLOCK_SIZE_REQD"
	case repErrTooBig:
		return "NBD_REP_ERR_TOO_BIG"
	case repErrExtHeaderReqd:
		return "NBD_REP_ERR_EXT_HEADER_REQD"
	}
	if rep&repFlagError != 0 {
		return fmt.Sprintf("NBD_REP_ERR %#x", rep)
	}
	return fmt.Sprintf("reply type %d", rep)
}

// Errno is the error field of a reply (proto.md, "Error values"). The
// values are Linux errno numbers, so an Errno matches the syscall.Errno of
// the same number with errors.Is, and through it fs.ErrPermission and
// friends: errors.Is(err, fs.ErrPermission) is true for NBD_EPERM.
type Errno uint32

// The error values of proto.md. A server may only send these; a client
// treats any other value as EINVAL, as proto.md asks.
const (
	EPERM     Errno = 1   // NBD_EPERM: operation not permitted (a write to a read-only export)
	EIO       Errno = 5   // NBD_EIO
	ENOMEM    Errno = 12  // NBD_ENOMEM
	EINVAL    Errno = 22  // NBD_EINVAL
	ENOSPC    Errno = 28  // NBD_ENOSPC: past the end of the export
	EOVERFLOW Errno = 75  // NBD_EOVERFLOW: request larger than the maximum block size
	ENOTSUP   Errno = 95  // NBD_ENOTSUP
	ESHUTDOWN Errno = 108 // NBD_ESHUTDOWN: the server is shutting down
)

func (e Errno) name() string {
	switch e {
	case EPERM:
		return "NBD_EPERM"
	case EIO:
		return "NBD_EIO"
	case ENOMEM:
		return "NBD_ENOMEM"
	case EINVAL:
		return "NBD_EINVAL"
	case ENOSPC:
		return "NBD_ENOSPC"
	case EOVERFLOW:
		return "NBD_EOVERFLOW"
	case ENOTSUP:
		return "NBD_ENOTSUP"
	case ESHUTDOWN:
		return "NBD_ESHUTDOWN"
	}
	return fmt.Sprintf("NBD error %d", uint32(e))
}

func (e Errno) Error() string {
	switch e {
	case EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN:
		return fmt.Sprintf("%s (%s)", e.name(), syscall.Errno(e).Error())
	}
	return e.name()
}

// Is makes errors.Is(err, syscall.EIO) and errors.Is(err, fs.ErrPermission)
// work on an Errno.
func (e Errno) Is(target error) bool {
	if t, ok := target.(syscall.Errno); ok {
		return uint32(t) == uint32(e)
	}
	return syscall.Errno(e).Is(target)
}

// request is one transmission-phase request header (proto.md, "Request
// message").
type request struct {
	flags  uint16
	cmd    uint16
	cookie uint64
	offset uint64
	length uint32
}

func (r request) append(b []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, magicRequest)
	b = binary.BigEndian.AppendUint16(b, r.flags)
	b = binary.BigEndian.AppendUint16(b, r.cmd)
	b = binary.BigEndian.AppendUint64(b, r.cookie)
	b = binary.BigEndian.AppendUint64(b, r.offset)
	return binary.BigEndian.AppendUint32(b, r.length)
}

// parseRequest decodes a request header; the caller checks the magic.
func parseRequest(b *[requestHeaderSize]byte) (magic uint32, r request) {
	magic = binary.BigEndian.Uint32(b[0:])
	r.flags = binary.BigEndian.Uint16(b[4:])
	r.cmd = binary.BigEndian.Uint16(b[6:])
	r.cookie = binary.BigEndian.Uint64(b[8:])
	r.offset = binary.BigEndian.Uint64(b[16:])
	r.length = binary.BigEndian.Uint32(b[24:])
	return magic, r
}

// appendSimpleReply encodes a simple reply header (proto.md, "Simple reply
// message"); a successful NBD_CMD_READ's data follows it.
func appendSimpleReply(b []byte, errno Errno, cookie uint64) []byte {
	b = binary.BigEndian.AppendUint32(b, magicSimpleReply)
	b = binary.BigEndian.AppendUint32(b, uint32(errno))
	return binary.BigEndian.AppendUint64(b, cookie)
}

// appendOption encodes a client's option (proto.md, "Option haggling").
func appendOption(b []byte, opt uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicIHaveOpt)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// appendOptionReply encodes a server's option reply.
func appendOptionReply(b []byte, opt, rep uint32, data []byte) []byte {
	b = binary.BigEndian.AppendUint64(b, magicOptionReply)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, rep)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// goData encodes the data of NBD_OPT_GO and NBD_OPT_INFO: the export name
// with its length, then the info types the client asks for.
func goData(export string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(export)))
	b = append(b, export...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, info := range infos {
		b = binary.BigEndian.AppendUint16(b, info)
	}
	return b
}

// peerText makes text from the peer printable: invalid UTF-8 replaced, at
// most 200 bytes. Callers print it with %q, which escapes control
// characters.
//
// UNTRUSTED: free text from the peer, shown to an operator.
func peerText(b []byte) string {
	const limit = 200
	s := strings.ToValidUTF8(string(b), "\uFFFD")
	if len(s) > limit {
		s = strings.ToValidUTF8(s[:limit], "") + "..."
	}
	return s
}

func isPowerOfTwo(v uint32) bool { return v != 0 && v&(v-1) == 0 }
