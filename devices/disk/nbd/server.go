package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"slices"
	"sync"
	"syscall"
	"time"
)

// Export is what the server needs of a disk. Every disk.Disk is an Export
// (this package cannot name disk.Disk: package disk imports it to open
// nbd:// specs). An Export that also has disk.Discarder's Discard or
// disk.ZeroWriter's WriteZeroes method gets NBD_CMD_TRIM or
// NBD_CMD_WRITE_ZEROES passed on; otherwise TRIM does nothing and
// WRITE_ZEROES writes zeros.
type Export interface {
	io.ReaderAt
	io.WriterAt
	Flush() error
	Size() uint64
	ReadOnly() bool
}

type discarder interface {
	Discard(off, length int64) error
}

type zeroWriter interface {
	WriteZeroes(off, length int64, mayUnmap bool) error
}

// ErrServerClosed is returned by Serve after Close.
var ErrServerClosed = errors.New("nbd: server closed")

// Server serves Exports to NBD clients (proto.md, "Fixed newstyle
// negotiation" then "Transmission"). It answers NBD_OPT_GO, NBD_OPT_INFO,
// NBD_OPT_EXPORT_NAME, NBD_OPT_LIST and NBD_OPT_ABORT, and the commands
// READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with simple replies.
// Each connection runs its requests concurrently, with a bounded amount of
// data in flight.
//
// Everything a client sends is checked: a malformed or out-of-range request
// gets an error reply (NBD_EINVAL, NBD_ENOSPC, NBD_EPERM, NBD_EOVERFLOW)
// and the connection goes on; a client that breaks the framing (a bad
// magic number, an oversized option) is disconnected and the reason
// logged. Set the fields before the first Serve and leave them alone.
type Server struct {
	// Exports maps export names to disks; "" is the default export. The
	// server does not close them.
	Exports map[string]Export
	// Log receives one line per connection event and per failed disk
	// request; nil discards them.
	Log func(format string, args ...any)
	// MaxBlockSize is the largest read or write a client may send,
	// announced in NBD_INFO_BLOCK_SIZE; 0 means 32 MiB.
	MaxBlockSize uint32
	// HandshakeTimeout bounds the negotiation phase of a connection; 0
	// means 30 s.
	HandshakeTimeout time.Duration

	// disableGo makes the server answer NBD_OPT_GO and NBD_OPT_INFO with
	// NBD_REP_ERR_UNSUP, like a server that predates them; tests use it
	// to exercise the client's NBD_OPT_EXPORT_NAME fallback.
	disableGo bool

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
	closed    bool
	nextID    int
	wg        sync.WaitGroup // connection goroutines
}

// Per-connection bounds on requests in flight: their data buffers and
// their number.
const (
	inFlightBytes    = 64 << 20
	inFlightRequests = 64
)

func (s *Server) maxBlock() uint32 {
	if s.MaxBlockSize == 0 {
		return defaultMaxBlock
	}
	return s.MaxBlockSize
}

func (s *Server) logf(format string, args ...any) {
	if s.Log != nil {
		s.Log(format, args...)
	}
}

// Serve accepts connections on ln and serves each on its own goroutine,
// until Close or until Accept fails. It may be called for several
// listeners. After Close it returns ErrServerClosed.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	if s.listeners == nil {
		s.listeners = make(map[net.Listener]struct{})
		s.conns = make(map[net.Conn]struct{})
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return fmt.Errorf("nbd: accepting connections on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors, say: wait for connections to end
			// rather than stop serving the others.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.logf("nbd: accepting connections on %s: %v; retrying in %v", ln.Addr(), err, delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			nc.Close()
			return ErrServerClosed
		}
		s.nextID++
		id := s.nextID
		s.conns[nc] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(nc, id)
	}
}

// Close stops every Serve, closes every connection (requests in flight
// fail), and waits for the connections' goroutines to finish.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	for ln := range s.listeners {
		ln.Close()
	}
	for nc := range s.conns {
		nc.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
	return nil
}

func (s *Server) serveConn(nc net.Conn, id int) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, nc)
		s.mu.Unlock()
	}()
	defer nc.Close()
	who := fmt.Sprintf("nbd client %d", id)
	if addr := nc.RemoteAddr(); addr != nil && addr.String() != "" && addr.String() != "@" {
		who += " from " + addr.String()
	}
	err := s.handle(nc, nc.SetDeadline, who)
	if err != nil {
		s.logf("%s: %v; disconnected", who, err)
	} else {
		s.logf("%s: disconnected", who)
	}
}

// handle runs one connection from the greeting to the end, and returns why
// it ended: nil for NBD_CMD_DISC or NBD_OPT_ABORT.
func (s *Server) handle(rw io.ReadWriter, setDeadline func(time.Time) error, who string) error {
	timeout := s.HandshakeTimeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	setDeadline(time.Now().Add(timeout))
	sess, err := s.negotiate(rw)
	if err != nil || sess == nil {
		return err
	}
	setDeadline(time.Time{})
	mode := "read-write"
	if sess.readOnly {
		mode = "read-only"
	}
	s.logf("%s: using export %q (%d bytes, %s)", who, sess.name, sess.size, mode)
	sess.who = who
	return sess.transmit()
}

// transmissionFlags is what an export supports (proto.md, "Transmission
// flags"). FUA is done with a Flush after the write.
func transmissionFlags(e Export) uint16 {
	flags := uint16(transHasFlags | transSendFlush | transSendFUA)
	if e.ReadOnly() {
		return flags | transReadOnly
	}
	flags |= transSendWriteZeroes
	if _, ok := e.(discarder); ok {
		flags |= transSendTrim
	}
	return flags
}

// negotiate is the server's side of the handshake. It returns the session
// to serve, nil and nil after NBD_OPT_ABORT, or why the client was cut off.
//
// UNTRUSTED: everything read here comes from the client. Option lengths
// are bounded before allocation; a malformed option's data gets
// NBD_REP_ERR_INVALID; a broken frame ends the connection.
func (s *Server) negotiate(rw io.ReadWriter) (*session, error) {
	greeting := binary.BigEndian.AppendUint64(nil, magicNBD)
	greeting = binary.BigEndian.AppendUint64(greeting, magicIHaveOpt)
	greeting = binary.BigEndian.AppendUint16(greeting, flagFixedNewstyle|flagNoZeroes)
	if _, err := rw.Write(greeting); err != nil {
		return nil, fmt.Errorf("sending the greeting: %w", err)
	}
	var buf [16]byte
	if _, err := io.ReadFull(rw, buf[:4]); err != nil {
		return nil, fmt.Errorf("reading client flags: %w", truncated(err))
	}
	clientFlags := binary.BigEndian.Uint32(buf[:4])
	// proto.md, "Client flags": a server that does not recognise a flag
	// MUST close the connection.
	if clientFlags&^clientFlagsKnown != 0 {
		return nil, fmt.Errorf("unknown client flags %#x (not an NBD client?)", clientFlags)
	}
	if clientFlags&clientFlagFixedNewstyle == 0 {
		return nil, errors.New("the client does not speak fixed newstyle negotiation")
	}
	noZeroes := clientFlags&clientFlagNoZeroes != 0

	for {
		if _, err := io.ReadFull(rw, buf[:16]); err != nil {
			return nil, fmt.Errorf("reading an option: %w", truncated(err))
		}
		if m := binary.BigEndian.Uint64(buf[0:]); m != magicIHaveOpt {
			return nil, fmt.Errorf("bad option magic %#x (want IHAVEOPT)", m)
		}
		opt := binary.BigEndian.Uint32(buf[8:])
		length := binary.BigEndian.Uint32(buf[12:])
		if length > maxOptionPayload {
			return nil, fmt.Errorf("%s with %d bytes of data exceeds the limit of %d", optName(opt), length, maxOptionPayload)
		}
		data := make([]byte, length)
		if _, err := io.ReadFull(rw, data); err != nil {
			return nil, fmt.Errorf("reading the data of %s: %w", optName(opt), truncated(err))
		}
		reply := func(rep uint32, payload []byte) error {
			_, err := rw.Write(appendOptionReply(nil, opt, rep, payload))
			return err
		}
		var err error
		switch opt {
		case optExportName:
			// proto.md, "NBD_OPT_EXPORT_NAME": there is no error reply;
			// the server closes the connection.
			e, ok := s.Exports[string(data)]
			if !ok {
				return nil, fmt.Errorf("NBD_OPT_EXPORT_NAME for export %q, which does not exist", peerText(data))
			}
			b := binary.BigEndian.AppendUint64(nil, e.Size())
			b = binary.BigEndian.AppendUint16(b, transmissionFlags(e))
			if !noZeroes {
				b = append(b, make([]byte, exportNameReplyZeros)...)
			}
			if _, err := rw.Write(b); err != nil {
				return nil, err
			}
			return newSession(rw, string(data), e, s), nil
		case optGo, optInfo:
			if s.disableGo {
				err = reply(repErrUnsup, nil)
				break
			}
			var e Export
			var name string
			e, name, err = s.answerInfo(opt, data, reply)
			if err == nil && e != nil && opt == optGo {
				return newSession(rw, name, e, s), nil
			}
		case optList:
			err = s.answerList(data, reply)
		case optAbort:
			// proto.md, "NBD_OPT_ABORT": acknowledge, then close; the
			// client may already be gone.
			reply(repAck, nil)
			return nil, nil
		default:
			err = reply(repErrUnsup, fmt.Appendf(nil, "%s is not supported", optName(opt)))
		}
		if err != nil {
			return nil, fmt.Errorf("answering %s: %w", optName(opt), err)
		}
	}
}

// answerInfo answers NBD_OPT_INFO or NBD_OPT_GO (proto.md, "Option types:
// NBD_OPT_INFO and NBD_OPT_GO"). It returns the export once it has sent
// NBD_REP_ACK, nil after an error reply; err is only for a failed write.
//
// UNTRUSTED: the data is "name length u32, name, count u16, count × info
// type u16"; every length is checked against the data actually received.
func (s *Server) answerInfo(opt uint32, data []byte, reply func(uint32, []byte) error) (Export, string, error) {
	invalid := func(why string) (Export, string, error) {
		return nil, "", reply(repErrInvalid, []byte(why))
	}
	if len(data) < 6 {
		return invalid(fmt.Sprintf("%d bytes of data, too short", len(data)))
	}
	nameLen := uint64(binary.BigEndian.Uint32(data))
	if nameLen > uint64(len(data))-6 {
		return invalid(fmt.Sprintf("name length %d runs past the data", nameLen))
	}
	name := string(data[4 : 4+nameLen])
	rest := data[4+nameLen:]
	count := uint64(binary.BigEndian.Uint16(rest))
	if uint64(len(rest)) != 2+2*count {
		return invalid(fmt.Sprintf("%d info requests do not fit %d bytes", count, len(rest)-2))
	}
	var wantName, wantBlockSize bool
	for i := range count {
		switch binary.BigEndian.Uint16(rest[2+2*i:]) {
		case infoName:
			wantName = true
		case infoBlockSize:
			wantBlockSize = true
		}
	}
	e, ok := s.Exports[name]
	if !ok {
		return nil, "", reply(repErrUnknown, fmt.Appendf(nil, "no export named %q", peerText([]byte(name))))
	}
	info := binary.BigEndian.AppendUint16(nil, infoExport)
	info = binary.BigEndian.AppendUint64(info, e.Size())
	info = binary.BigEndian.AppendUint16(info, transmissionFlags(e))
	if err := reply(repInfo, info); err != nil {
		return nil, "", err
	}
	if wantName {
		if err := reply(repInfo, append(binary.BigEndian.AppendUint16(nil, infoName), name...)); err != nil {
			return nil, "", err
		}
	}
	if wantBlockSize {
		// Any alignment is fine (minimum 1); 4 KiB is what files and
		// page caches like best.
		b := binary.BigEndian.AppendUint16(nil, infoBlockSize)
		b = binary.BigEndian.AppendUint32(b, 1)
		b = binary.BigEndian.AppendUint32(b, defaultPreferred)
		b = binary.BigEndian.AppendUint32(b, s.maxBlock())
		if err := reply(repInfo, b); err != nil {
			return nil, "", err
		}
	}
	if err := reply(repAck, nil); err != nil {
		return nil, "", err
	}
	return e, name, nil
}

// answerList answers NBD_OPT_LIST: one NBD_REP_SERVER per export, in name
// order, then NBD_REP_ACK (proto.md, "NBD_OPT_LIST"; the option has no data).
func (s *Server) answerList(data []byte, reply func(uint32, []byte) error) error {
	if len(data) != 0 {
		return reply(repErrInvalid, []byte("NBD_OPT_LIST takes no data"))
	}
	names := make([]string, 0, len(s.Exports))
	for name := range s.Exports {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
		if err := reply(repServer, append(b, name...)); err != nil {
			return err
		}
	}
	return reply(repAck, nil)
}

// session is one connection in the transmission phase.
type session struct {
	rw       io.ReadWriter
	who      string
	name     string
	export   Export
	size     uint64
	readOnly bool
	maxBlock uint32
	log      func(format string, args ...any)

	writeMu  sync.Mutex // one reply at a time
	writeErr error      // the first failed reply; under writeMu

	budget   *budget
	handlers sync.WaitGroup
}

func newSession(rw io.ReadWriter, name string, e Export, s *Server) *session {
	return &session{
		rw: rw, name: name, export: e, size: e.Size(), readOnly: e.ReadOnly(),
		maxBlock: s.maxBlock(), log: s.logf,
		budget: newBudget(max(inFlightBytes, int64(s.maxBlock())), inFlightRequests),
	}
}

// transmit reads requests until NBD_CMD_DISC or a broken stream, running
// each on its own goroutine, and waits for them before returning.
//
// UNTRUSTED: every field of a request comes from the client; check decides
// which requests reach the disk.
func (ss *session) transmit() error {
	defer ss.handlers.Wait()
	var hdr [requestHeaderSize]byte
	for {
		if _, err := io.ReadFull(ss.rw, hdr[:]); err != nil {
			if err == io.EOF {
				return errors.New("the client closed the connection without NBD_CMD_DISC")
			}
			return fmt.Errorf("reading a request: %w", truncated(err))
		}
		magic, req := parseRequest(&hdr)
		if magic != magicRequest {
			return fmt.Errorf("bad request magic %#x (want %#x)", magic, magicRequest)
		}
		if req.cmd == cmdDisc {
			// proto.md, "NBD_CMD_DISC": finish the requests in flight,
			// then close. There is no reply.
			return nil
		}
		errno := ss.check(req)
		if req.cmd == cmdWrite && errno != 0 {
			// The payload follows whatever we think of the request: skip
			// it, a block at a time, to stay in step with the stream.
			if _, err := io.CopyN(io.Discard, ss.rw, int64(req.length)); err != nil {
				return fmt.Errorf("reading the data of a refused write: %w", truncated(err))
			}
		}
		if errno != 0 {
			ss.reply(req, errno, nil)
			continue
		}
		var buf []byte
		if req.cmd == cmdRead || req.cmd == cmdWrite {
			ss.budget.acquire(int64(req.length))
			buf = make([]byte, req.length)
		} else {
			ss.budget.acquire(0)
		}
		if req.cmd == cmdWrite {
			if _, err := io.ReadFull(ss.rw, buf); err != nil {
				ss.budget.release(int64(len(buf)))
				return fmt.Errorf("reading the data of a %d-byte write: %w", req.length, truncated(err))
			}
		}
		ss.handlers.Add(1)
		go func() {
			defer ss.handlers.Done()
			defer ss.budget.release(int64(len(buf)))
			ss.reply(req, ss.execute(req, buf), buf)
		}()
	}
}

// check validates a request before it reaches the disk, and returns the
// error to reply with, or 0.
//
// UNTRUSTED: command, flags, offset and length are the client's.
func (ss *session) check(req request) Errno {
	if req.flags&^(cmdFlagFUA|cmdFlagNoHole) != 0 {
		return EINVAL
	}
	switch req.cmd {
	case cmdFlush:
		return 0 // offset and length are meaningless, whatever they are
	case cmdRead, cmdWrite:
		// proto.md, "Block size constraints": a request above the
		// maximum block size is refused; it is also our memory bound.
		if req.length > ss.maxBlock {
			return EOVERFLOW
		}
	case cmdTrim, cmdWriteZeroes:
		// No payload, so no memory bound: the disk handles any length.
	default:
		return EINVAL // NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS... were never offered
	}
	if req.cmd != cmdRead && ss.readOnly {
		return EPERM
	}
	// The sum is computed in 64 bits from a 64-bit offset and a 32-bit
	// length, so the first test catches the wrap-around.
	end := req.offset + uint64(req.length)
	if end < req.offset || end > ss.size {
		if req.cmd == cmdRead {
			return EINVAL
		}
		// proto.md, "Error values": NBD_ENOSPC for a write-type request
		// beyond the end of the export.
		return ENOSPC
	}
	return 0
}

// execute runs a checked request on the disk.
func (ss *session) execute(req request, buf []byte) Errno {
	off, length := int64(req.offset), int64(req.length)
	var err error
	switch req.cmd {
	case cmdRead:
		var n int
		n, err = ss.export.ReadAt(buf, off)
		if err == io.EOF && n == len(buf) {
			err = nil
		}
	case cmdWrite:
		_, err = ss.export.WriteAt(buf, off)
	case cmdFlush:
		err = ss.export.Flush()
	case cmdTrim:
		if d, ok := ss.export.(discarder); ok && length > 0 {
			err = d.Discard(off, length)
		}
	case cmdWriteZeroes:
		err = ss.writeZeroes(off, length, req.flags&cmdFlagNoHole == 0)
	}
	if err == nil && req.flags&cmdFlagFUA != 0 && req.cmd != cmdRead {
		err = ss.export.Flush()
	}
	if err != nil {
		ss.log("%s: %s of %d bytes at %d on export %q failed: %v", ss.who, cmdName(req.cmd), req.length, req.offset, ss.name, err)
		return errnoFor(err)
	}
	return 0
}

func (ss *session) writeZeroes(off, length int64, mayUnmap bool) error {
	if length == 0 {
		return nil
	}
	if z, ok := ss.export.(zeroWriter); ok {
		return z.WriteZeroes(off, length, mayUnmap)
	}
	zeros := make([]byte, min(length, 1<<20))
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := ss.export.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// reply sends a simple reply, with the data of a successful read. After a
// failed write the connection is broken; the request loop notices on its
// next read.
func (ss *session) reply(req request, errno Errno, buf []byte) {
	hdr := appendSimpleReply(make([]byte, 0, replyHeaderSize), errno, req.cookie)
	bufs := net.Buffers{hdr}
	if req.cmd == cmdRead && errno == 0 {
		bufs = append(bufs, buf)
	}
	ss.writeMu.Lock()
	defer ss.writeMu.Unlock()
	if ss.writeErr != nil {
		return
	}
	if _, err := bufs.WriteTo(ss.rw); err != nil {
		ss.writeErr = err
		if c, ok := ss.rw.(io.Closer); ok {
			c.Close()
		}
	}
}

// errnoFor chooses the NBD error for a disk's error (proto.md, "Error
// values" lists the only ones a server may send).
func errnoFor(err error) Errno {
	var nbdErr Errno
	if errors.As(err, &nbdErr) {
		switch nbdErr {
		case EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN:
			return nbdErr
		}
		return EIO
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		switch errno {
		case syscall.EPERM, syscall.EACCES, syscall.EROFS:
			return EPERM
		case syscall.ENOMEM:
			return ENOMEM
		case syscall.EINVAL:
			return EINVAL
		case syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG:
			return ENOSPC
		case syscall.EOVERFLOW:
			return EOVERFLOW
		case syscall.EOPNOTSUPP:
			return ENOTSUP
		case syscall.ESHUTDOWN:
			return ESHUTDOWN
		}
		return EIO
	}
	if errors.Is(err, fs.ErrPermission) {
		return EPERM
	}
	return EIO
}

// budget bounds a connection's requests in flight: at most requests of
// them, holding at most bytes of buffers. A request larger than the whole
// budget still runs, alone.
type budget struct {
	bytes, requests int64

	mu        sync.Mutex
	cond      *sync.Cond // on mu
	usedBytes int64
	used      int64
}

func newBudget(bytes, requests int64) *budget {
	b := &budget{bytes: bytes, requests: requests}
	b.cond = sync.NewCond(&b.mu)
	return b
}

func (b *budget) acquire(n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for b.used > 0 && (b.used >= b.requests || b.usedBytes+n > b.bytes) {
		b.cond.Wait()
	}
	b.used++
	b.usedBytes += n
}

func (b *budget) release(n int64) {
	b.mu.Lock()
	b.used--
	b.usedBytes -= n
	b.mu.Unlock()
	b.cond.Broadcast()
}
