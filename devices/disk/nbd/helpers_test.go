package nbd

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// memDisk is an Export in memory, with hooks for the tests.
type memDisk struct {
	mu       sync.Mutex
	data     []byte
	readOnly bool
	flushes  int
	maxLen   int // the longest single ReadAt or WriteAt
	// onRead, if set, runs in ReadAt before the lock is taken.
	onRead atomic.Pointer[func()]
}

func newMemDisk(size int) *memDisk { return &memDisk{data: make([]byte, size)} }

func (m *memDisk) Size() uint64   { return uint64(len(m.data)) }
func (m *memDisk) ReadOnly() bool { return m.readOnly }

func (m *memDisk) ReadAt(p []byte, off int64) (int, error) {
	if f := m.onRead.Load(); f != nil {
		(*f)()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.maxLen = max(m.maxLen, len(p))
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		panic(fmt.Sprintf("memDisk: read out of range (%d bytes at %d): the server should have refused it", len(p), off))
	}
	return copy(p, m.data[off:]), nil
}

func (m *memDisk) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.maxLen = max(m.maxLen, len(p))
	if off < 0 || off+int64(len(p)) > int64(len(m.data)) {
		panic(fmt.Sprintf("memDisk: write out of range (%d bytes at %d): the server should have refused it", len(p), off))
	}
	return copy(m.data[off:], p), nil
}

func (m *memDisk) Flush() error {
	m.mu.Lock()
	m.flushes++
	m.mu.Unlock()
	return nil
}

// Discard fills the range with 0xdd, which no test writes, so a test can
// tell a discard reached the disk.
func (m *memDisk) Discard(off, length int64) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for i := off; i < off+length; i++ {
		m.data[i] = 0xdd
	}
	return nil
}

func (m *memDisk) WriteZeroes(off, length int64, mayUnmap bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

func (m *memDisk) flushCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.flushes
}

func (m *memDisk) longestRequest() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.maxLen
}

func (m *memDisk) snapshot() []byte {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]byte(nil), m.data...)
}

func (m *memDisk) Close() error { return nil }

// logBuffer collects log lines.
type logBuffer struct {
	mu    sync.Mutex
	lines []string
}

func (l *logBuffer) logf(format string, args ...any) {
	l.mu.Lock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
	l.mu.Unlock()
}

// count is the number of lines so far; since(n) joins the lines after the
// first n.
func (l *logBuffer) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}

func (l *logBuffer) since(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[n:], "\n")
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// socketPath is a fresh unix socket path, short enough for sun_path's 108
// bytes even under a long TMPDIR.
func socketPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "nbd")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "s")
}

// serve starts srv on a new unix socket and returns the socket's path.
func serve(t *testing.T, srv *Server) string {
	t.Helper()
	path := socketPath(t)
	serveAt(t, srv, "unix", path)
	return path
}

func serveAt(t *testing.T, srv *Server, network, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != ErrServerClosed {
			t.Errorf("Serve: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return ln
}

func dial(t *testing.T, network, address, export string, opts ...Option) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, network, address, export, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
