package nbd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync"
	"syscall"
	"time"
)

// ErrDisconnected is wrapped by the errors of requests that failed because
// the connection to the server was lost, and of requests made while the
// Client is reconnecting. Such a request may or may not have reached the
// disk: a failed write's range has unknown contents.
var ErrDisconnected = errors.New("disconnected from the NBD server")

// Option configures Dial.
type Option func(*options)

type options struct {
	log              func(format string, args ...any)
	readOnly         bool
	firstBackoff     time.Duration
	maxBackoff       time.Duration
	handshakeTimeout time.Duration
}

// WithLog sends the Client's events (connection lost, reconnected, gave
// up) to log, one line per call, without a trailing newline.
func WithLog(log func(format string, args ...any)) Option {
	return func(o *options) { o.log = log }
}

// WithReadOnly makes the Client refuse writes even when the export allows
// them, like a disk spec's ",readonly".
func WithReadOnly() Option {
	return func(o *options) { o.readOnly = true }
}

// WithBackoff sets the reconnect loop's delays: first before the first
// attempt, doubling after each failure up to most. The defaults are 100 ms
// and 2 s; first is at least 1 ms.
func WithBackoff(first, most time.Duration) Option {
	first = max(first, time.Millisecond)
	return func(o *options) { o.firstBackoff, o.maxBackoff = first, max(first, most) }
}

// WithHandshakeTimeout bounds each handshake (default 10 s), so that a
// server that accepts but never answers does not hang Dial or the
// reconnect loop.
func WithHandshakeTimeout(d time.Duration) Option {
	return func(o *options) { o.handshakeTimeout = d }
}

// Client is an NBD export used as a disk: it implements disk.Disk,
// disk.Discarder and disk.ZeroWriter. It is safe for concurrent use, and
// its requests are pipelined on one connection.
//
// When the connection fails, the requests in flight fail with an error
// wrapping ErrDisconnected, and so does every request until a background
// loop has reconnected to the same address and export. Nothing is ever
// retried: a write that failed is reported failed, and a write that was
// acknowledged is never sent again.
type Client struct {
	network, address, export string
	uri                      string // names the disk in errors and log lines
	opts                     options
	size                     uint64 // fixed by the first connection
	readOnly                 bool

	ctx    context.Context // cancelled by Close: stops the reconnect loop
	cancel context.CancelFunc
	wg     sync.WaitGroup // the reconnect loop

	mu   sync.Mutex
	conn *conn // nil while reconnecting
	// lostErr is why the last connection failed, while conn is nil.
	lostErr error
	// failed is set when a reconnection found a different export; the
	// Client then stays failed.
	failed error
	// lostUnflushed records that a lost connection had acknowledged
	// writes no flush covered; the next Flush reports it.
	lostUnflushed bool
	closed        bool
}

// Dial connects to the NBD server at address ("host:port" for network
// "tcp", a socket path for "unix") and opens export ("" is the server's
// default export). The context bounds the connection and the handshake
// only, not the Client's life.
func Dial(ctx context.Context, network, address, export string, opts ...Option) (*Client, error) {
	o := options{firstBackoff: 100 * time.Millisecond, maxBackoff: 2 * time.Second, handshakeTimeout: 10 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	c := &Client{network: network, address: address, export: export, uri: uri(network, address, export), opts: o}
	cn, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.size = cn.info.size
	c.readOnly = o.readOnly || cn.info.has(transReadOnly)
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.conn = cn
	go c.run(cn)
	return c, nil
}

// uri spells the address the way a disk spec does (devices/disk/spec.go).
func uri(network, address, export string) string {
	if network == "unix" {
		return "nbd+unix:///" + url.PathEscape(export) + "?socket=" + address
	}
	return "nbd://" + address + "/" + url.PathEscape(export)
}

// connect dials and negotiates one connection; it is ready but not yet
// running.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, c.network, c.address)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(c.opts.handshakeTimeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	nc.SetDeadline(deadline)
	// Cancelling ctx interrupts a handshake blocked in a read or write.
	stop := context.AfterFunc(ctx, func() { nc.SetDeadline(time.Unix(1, 0)) })
	info, err := negotiate(nc, c.export, c.address)
	stop()
	if err != nil {
		nc.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("NBD handshake with %s: %w", c.address, ctx.Err())
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return newConn(nc, info), nil
}

// run reads cn's replies until it fails, then starts reconnecting.
func (c *Client) run(cn *conn) {
	cn.readLoop()
	c.lost(cn)
}

// lost replaces a failed connection by nothing and starts the reconnect
// loop, unless the Client was closed or had already moved on.
func (c *Client) lost(cn *conn) {
	c.mu.Lock()
	if c.conn != cn {
		c.mu.Unlock()
		return
	}
	c.conn = nil
	c.lostErr = cn.cause
	if cn.unflushed() && cn.info.has(transSendFlush) {
		c.lostUnflushed = true
	}
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.wg.Add(1)
	c.mu.Unlock()
	c.logf("%s: connection lost: %v; reconnecting", c.uri, cn.cause)
	go c.reconnect()
}

// reconnect redials until it has a connection to an export of the same
// size, or the Client is closed. Attempts are spaced by the backoff,
// doubling from opts.firstBackoff to opts.maxBackoff; a failure is logged
// when it differs from the one before, so a long outage is one line.
func (c *Client) reconnect() {
	defer c.wg.Done()
	started := time.Now()
	delay := c.opts.firstBackoff
	lastErr := ""
	for {
		timer := time.NewTimer(delay)
		select {
		case <-c.ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		}
		delay = min(2*delay, c.opts.maxBackoff)
		cn, err := c.connect(c.ctx)
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			if msg := err.Error(); msg != lastErr {
				c.logf("%s: reconnecting: %v", c.uri, err)
				lastErr = msg
			}
			continue
		}
		if cn.info.size != c.size {
			// A different disk behind the same name: reading or writing
			// it at the guest's offsets would corrupt it.
			cn.nc.Close()
			err := fmt.Errorf("the export's size changed from %d to %d bytes while disconnected; refusing to use it", c.size, cn.info.size)
			c.mu.Lock()
			c.failed = err
			c.mu.Unlock()
			c.logf("%s: %v; the disk stays failed", c.uri, err)
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			cn.nc.Close()
			return
		}
		c.conn = cn
		c.mu.Unlock()
		go c.run(cn)
		c.logf("%s: reconnected after %v", c.uri, time.Since(started).Round(time.Millisecond))
		if cn.info.has(transReadOnly) && !c.readOnly {
			c.logf("%s: the export is read-only now; writes will fail", c.uri)
		}
		return
	}
}

func (c *Client) logf(format string, args ...any) {
	if c.opts.log != nil {
		c.opts.log(format, args...)
	}
}

// current returns the working connection, or why there is none.
func (c *Client) current() (*conn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch {
	case c.closed:
		return nil, fmt.Errorf("the client is closed: %w", net.ErrClosed)
	case c.failed != nil:
		return nil, c.failed
	case c.conn == nil:
		return nil, fmt.Errorf("%w (%v); reconnecting", ErrDisconnected, c.lostErr)
	}
	return c.conn, nil
}

// String is the disk's URI, e.g. nbd://127.0.0.1:10809/disk0.
func (c *Client) String() string { return c.uri }

// Size is the export's size in bytes.
func (c *Client) Size() uint64 { return c.size }

// ReadOnly reports whether the export is read-only (NBD_FLAG_READ_ONLY) or
// the Client was opened WithReadOnly.
func (c *Client) ReadOnly() bool { return c.readOnly }

// ReadAt reads len(p) bytes at off (NBD_CMD_READ). As io.ReaderAt asks, a
// read that reaches the end of the disk returns the bytes before it and
// io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("%s: read at negative offset %d", c.uri, off)
	}
	if len(p) == 0 {
		return 0, nil
	}
	if uint64(off) >= c.size {
		return 0, io.EOF
	}
	var eof error
	if rest := c.size - uint64(off); uint64(len(p)) > rest {
		p, eof = p[:rest], io.EOF
	}
	n, err := c.do("read", cmdRead, 0, off, int64(len(p)), p)
	if err != nil {
		return int(n), err
	}
	return int(n), eof
}

// WriteAt writes p at off (NBD_CMD_WRITE). A write past the end of the
// disk is refused whole.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	if err := c.checkWrite("write", off, int64(len(p))); err != nil || len(p) == 0 {
		return 0, err
	}
	n, err := c.do("write", cmdWrite, 0, off, int64(len(p)), p)
	return int(n), err
}

// Flush asks the server to make every acknowledged write durable
// (NBD_CMD_FLUSH). Without NBD_FLAG_SEND_FLUSH the server has nothing to
// flush (proto.md, "NBD_CMD_FLUSH": the client MUST NOT send it), so Flush
// succeeds.
//
// If a connection was lost with writes that no flush had covered, the
// first Flush after reconnecting fails with EIO: the server may have
// restarted without them, and the guest must not believe them durable.
func (c *Client) Flush() error {
	cn, err := c.current()
	if err != nil {
		return fmt.Errorf("%s: flush: %w", c.uri, err)
	}
	c.mu.Lock()
	lost := c.lostUnflushed
	c.lostUnflushed = false
	c.mu.Unlock()
	if lost {
		return fmt.Errorf("%s: flush: writes acknowledged before the connection was lost may not be durable: %w", c.uri, syscall.EIO)
	}
	if !cn.info.has(transSendFlush) {
		return nil
	}
	cl, err := cn.start(cmdFlush, 0, 0, 0, nil)
	if err == nil {
		err = <-cl.done
	}
	if err != nil {
		return fmt.Errorf("%s: flush: %w", c.uri, err)
	}
	return nil
}

// Discard sends NBD_CMD_TRIM, a hint that the range's contents are no
// longer needed. Without NBD_FLAG_SEND_TRIM it does nothing, which the
// disk.Discarder contract allows (reads of the range are unspecified).
func (c *Client) Discard(off, length int64) error {
	if err := c.checkWrite("discard", off, length); err != nil || length == 0 {
		return err
	}
	if cn, err := c.current(); err == nil && !cn.info.has(transSendTrim) {
		return nil
	}
	_, err := c.do("discard", cmdTrim, 0, off, length, nil)
	return err
}

// WriteZeroes zeroes a range with NBD_CMD_WRITE_ZEROES, setting
// NBD_CMD_FLAG_NO_HOLE unless mayUnmap. Without NBD_FLAG_SEND_WRITE_ZEROES
// it writes zeros, at most one request's worth of buffer at a time.
func (c *Client) WriteZeroes(off, length int64, mayUnmap bool) error {
	if err := c.checkWrite("write zeroes", off, length); err != nil || length == 0 {
		return err
	}
	cn, err := c.current()
	if err != nil {
		return fmt.Errorf("%s: write zeroes of %d bytes at %d: %w", c.uri, length, off, err)
	}
	if cn.info.has(transSendWriteZeroes) {
		var flags uint16
		if !mayUnmap {
			flags = cmdFlagNoHole
		}
		_, err := c.do("write zeroes", cmdWriteZeroes, flags, off, length, nil)
		return err
	}
	zeros := make([]byte, min(length, int64(cn.info.maxRequest)))
	for length > 0 {
		n := min(length, int64(len(zeros)))
		if _, err := c.WriteAt(zeros[:n], off); err != nil {
			return err
		}
		off, length = off+n, length-n
	}
	return nil
}

// Close ends the connection with NBD_CMD_DISC and stops reconnecting.
// Requests still in flight get up to 2 s to complete.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	cn := c.conn
	c.conn = nil
	c.mu.Unlock()
	c.cancel()
	c.wg.Wait()
	if cn != nil {
		cn.disconnect(2 * time.Second)
	}
	return nil
}

// checkWrite refuses a write-like request that the disk cannot take.
//
// UNTRUSTED: off and length come from the guest's virtio-blk requests;
// negative values are refused before the unsigned sum.
func (c *Client) checkWrite(op string, off, length int64) error {
	if c.readOnly {
		return fmt.Errorf("%s: %s refused: the disk is read-only: %w", c.uri, op, syscall.EPERM)
	}
	if off < 0 || length < 0 || uint64(off)+uint64(length) > c.size {
		return fmt.Errorf("%s: %s of %d bytes at %d is outside the disk (size %d): %w", c.uri, op, length, off, c.size, syscall.ENOSPC)
	}
	return nil
}

// do sends one logical request as as many NBD requests as the server's
// maximum block size needs, all in flight at once, and waits for them all.
// buf is the data of a read or write, nil otherwise. It returns how many
// bytes from off on completed before the first failure.
func (c *Client) do(op string, cmd, flags uint16, off, length int64, buf []byte) (int64, error) {
	fail := func(err error) error {
		return fmt.Errorf("%s: %s of %d bytes at %d: %w", c.uri, op, length, off, err)
	}
	cn, err := c.current()
	if err != nil {
		return 0, fail(err)
	}
	if cn.info.has(transReadOnly) && cmd != cmdRead {
		return 0, fail(fmt.Errorf("the export is read-only: %w", syscall.EPERM))
	}
	// proto.md, "Block size constraints": offsets and lengths are
	// multiples of the minimum block size. virtio-blk's are multiples of
	// 512; a server that wants more gets an error, not a read-modify-write.
	if bs := int64(cn.info.minBlock); off%bs != 0 || length%bs != 0 {
		return 0, fail(fmt.Errorf("not aligned to the server's minimum block size of %d bytes: %w", bs, syscall.EINVAL))
	}
	chunk := int64(cn.info.maxRequest)
	var calls []*call
	var startErr error
	for done := int64(0); done < length; done += chunk {
		n := min(chunk, length-done)
		var data []byte
		if buf != nil {
			data = buf[done : done+n]
		}
		cl, err := cn.start(cmd, flags, uint64(off+done), uint32(n), data)
		if err != nil {
			startErr = err
			break
		}
		calls = append(calls, cl)
	}
	var completed int64
	var first error
	for i, cl := range calls {
		err := <-cl.done
		if err == nil && first == nil {
			completed += min(chunk, length-int64(i)*chunk)
		} else if err != nil && first == nil {
			first = err
		}
	}
	if first == nil {
		first = startErr
	}
	if first != nil {
		return completed, fail(first)
	}
	return completed, nil
}
