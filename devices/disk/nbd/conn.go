package nbd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"
)

// conn is one client connection in the transmission phase (proto.md,
// "Transmission"). Requests may be sent from many goroutines at once: each
// gets a fresh cookie, its header and payload are written under writeMu,
// and one reader goroutine (readLoop) matches the replies, which may come in
// any order, to the waiting calls by cookie.
//
// A conn is used until it fails; it is never repaired. The Client replaces
// a failed conn with a new one (client.go).
type conn struct {
	nc   net.Conn
	info exportInfo

	writeMu sync.Mutex // one request's header and payload at a time

	mu         sync.Mutex
	pending    map[uint64]*call // by cookie; only readLoop removes entries
	nextCookie uint64
	// err is what requests get once the connection has failed (it wraps
	// ErrDisconnected); cause is the failure itself, for the log.
	err, cause error
	// Flush accounting, for the Client's "writes lost with a connection"
	// check: writeGen counts acknowledged writes, flushedGen is the
	// writeGen that the last successful NBD_CMD_FLUSH covered.
	writeGen, flushedGen uint64

	done chan struct{} // closed when readLoop has exited and failed every pending call
}

// call is one request waiting for its reply.
type call struct {
	cmd  uint16
	data []byte     // NBD_CMD_READ: where the reply's data goes
	gen  uint64     // NBD_CMD_FLUSH: conn.writeGen when the flush was sent
	done chan error // receives exactly one result
}

func newConn(nc net.Conn, info exportInfo) *conn {
	return &conn{nc: nc, info: info, pending: make(map[uint64]*call), done: make(chan struct{})}
}

// start sends one request and returns the call to wait on. data is the
// payload of NBD_CMD_WRITE, or the buffer NBD_CMD_READ fills.
func (cn *conn) start(cmd, flags uint16, offset uint64, length uint32, data []byte) (*call, error) {
	c := &call{cmd: cmd, done: make(chan error, 1)}
	if cmd == cmdRead {
		c.data = data
	}
	cn.mu.Lock()
	if cn.err != nil {
		err := cn.err
		cn.mu.Unlock()
		return nil, err
	}
	cookie := cn.nextCookie
	cn.nextCookie++
	c.gen = cn.writeGen
	cn.pending[cookie] = c
	cn.mu.Unlock()

	hdr := request{flags: flags, cmd: cmd, cookie: cookie, offset: offset, length: length}.append(make([]byte, 0, requestHeaderSize))
	bufs := net.Buffers{hdr}
	if cmd == cmdWrite {
		bufs = append(bufs, data)
	}
	cn.writeMu.Lock()
	_, err := bufs.WriteTo(cn.nc)
	cn.writeMu.Unlock()
	if err != nil {
		// Half a request may be on the wire: the stream is unusable.
		// Closing it makes readLoop fail every pending call, this one
		// included, so the caller still just waits.
		cn.fail(fmt.Errorf("sending %s: %w", cmdName(cmd), err))
	}
	return c, nil
}

// fail marks the connection broken (the first cause wins) and closes it;
// readLoop then wakes up and fails the pending calls.
func (cn *conn) fail(cause error) {
	cn.mu.Lock()
	cn.setFailedLocked(cause)
	cn.mu.Unlock()
	cn.nc.Close()
}

func (cn *conn) setFailedLocked(cause error) {
	if cn.err == nil {
		cn.cause = cause
		cn.err = fmt.Errorf("%w: %v", ErrDisconnected, cause)
	}
}

// readLoop reads replies until the connection fails, then fails every
// pending call with an error wrapping ErrDisconnected. It is the only goroutine that reads
// from nc and the only one that removes calls from pending, so a READ's
// buffer is never written after its call has returned.
//
// UNTRUSTED: replies come from the server. The magic must be the simple
// reply's, the cookie must be one we sent, and a READ's data is exactly the
// length we asked for.
func (cn *conn) readLoop() {
	defer close(cn.done)
	cause := cn.readReplies()
	cn.mu.Lock()
	cn.setFailedLocked(cause)
	err := cn.err
	pending := cn.pending
	cn.pending = nil
	cn.mu.Unlock()
	cn.nc.Close()
	for _, c := range pending {
		c.done <- err
	}
}

func (cn *conn) readReplies() error {
	var hdr [replyHeaderSize]byte
	for {
		if _, err := io.ReadFull(cn.nc, hdr[:]); err != nil {
			if err == io.EOF {
				return errors.New("the server closed the connection")
			}
			return truncated(err)
		}
		switch m := binary.BigEndian.Uint32(hdr[0:]); m {
		case magicSimpleReply:
		case magicStructReply:
			return errors.New("structured reply, which was never negotiated (protocol violation)")
		default:
			return fmt.Errorf("bad reply magic %#x (want %#x)", m, magicSimpleReply)
		}
		errno := Errno(binary.BigEndian.Uint32(hdr[4:]))
		cookie := binary.BigEndian.Uint64(hdr[8:])

		cn.mu.Lock()
		c, ok := cn.pending[cookie]
		cn.mu.Unlock()
		if !ok {
			return fmt.Errorf("reply for cookie %d, which has no request in flight (protocol violation)", cookie)
		}
		var result error
		if errno != 0 {
			// proto.md, "Simple reply message": after an error the server
			// sends no data, even for NBD_CMD_READ. An error value the
			// client does not know is still an error (proto.md: treat it
			// as NBD_EINVAL); it keeps its number for the message.
			result = errno
		} else if c.cmd == cmdRead {
			// The call stays pending until its data is in: if the
			// connection drops now, the sweep in readLoop fails it.
			if _, err := io.ReadFull(cn.nc, c.data); err != nil {
				return fmt.Errorf("reading the %d bytes of a read reply: %w", len(c.data), truncated(err))
			}
		}
		cn.mu.Lock()
		delete(cn.pending, cookie)
		cn.mu.Unlock()
		cn.completed(c, result)
		c.done <- result
	}
}

// completed does the flush accounting for a finished call.
func (cn *conn) completed(c *call, err error) {
	if err != nil {
		return
	}
	cn.mu.Lock()
	switch c.cmd {
	case cmdWrite, cmdTrim, cmdWriteZeroes:
		cn.writeGen++
	case cmdFlush:
		cn.flushedGen = max(cn.flushedGen, c.gen)
	}
	cn.mu.Unlock()
}

// unflushed reports whether the server acknowledged writes on this
// connection that no flush has covered.
func (cn *conn) unflushed() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.writeGen > cn.flushedGen
}

// failed reports whether the connection has failed.
func (cn *conn) failed() bool {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	return cn.err != nil
}

// disconnect ends the connection politely (proto.md, "NBD_CMD_DISC"): the
// server finishes the requests in flight, then closes. After grace the
// connection is closed anyway.
func (cn *conn) disconnect(grace time.Duration) {
	cn.mu.Lock()
	alive := cn.err == nil
	cookie := cn.nextCookie
	cn.nextCookie++
	cn.mu.Unlock()
	if alive {
		// The server sends no reply to NBD_CMD_DISC, so the cookie is
		// never looked up.
		hdr := request{cmd: cmdDisc, cookie: cookie}.append(nil)
		cn.writeMu.Lock()
		cn.nc.SetWriteDeadline(time.Now().Add(grace))
		cn.nc.Write(hdr)
		cn.writeMu.Unlock()
		select {
		case <-cn.done:
		case <-time.After(grace):
		}
	}
	cn.fail(errors.New("the client was closed"))
	<-cn.done
}
