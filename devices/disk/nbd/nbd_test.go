package nbd

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

func TestRoundTrip(t *testing.T) {
	const size = 8 << 20
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) {
			disk := newMemDisk(size)
			srv := &Server{Exports: map[string]Export{"disk0": disk}}
			address := "127.0.0.1:0"
			if network == "unix" {
				address = socketPath(t)
			}
			ln := serveAt(t, srv, network, address)
			c := dial(t, network, ln.Addr().String(), "disk0")
			if c.Size() != size || c.ReadOnly() {
				t.Fatalf("Size, ReadOnly = %d, %v; want %d, false", c.Size(), c.ReadOnly(), size)
			}
			want := disk.snapshot()
			rng := rand.New(rand.NewPCG(3, 4))
			for range 300 {
				off := rng.IntN(size)
				n := rng.IntN(min(size-off, 300<<10) + 1)
				buf := make([]byte, n)
				if rng.IntN(2) == 0 {
					for i := range buf {
						buf[i] = byte(rng.Uint32())
					}
					if got, err := c.WriteAt(buf, int64(off)); err != nil || got != n {
						t.Fatalf("WriteAt(%d bytes at %d) = %d, %v", n, off, got, err)
					}
					copy(want[off:], buf)
				} else {
					got, err := c.ReadAt(buf, int64(off))
					if got != n || (err != nil && err != io.EOF) {
						t.Fatalf("ReadAt(%d bytes at %d) = %d, %v", n, off, got, err)
					}
					if !bytes.Equal(buf, want[off:off+n]) {
						t.Fatalf("ReadAt(%d bytes at %d) returned the wrong data", n, off)
					}
				}
			}
			flushes := disk.flushCount()
			if err := c.Flush(); err != nil || disk.flushCount() != flushes+1 {
				t.Fatalf("Flush = %v, the disk saw %d flushes", err, disk.flushCount()-flushes)
			}
			if err := c.Discard(4096, 8192); err != nil {
				t.Fatalf("Discard: %v", err)
			}
			for i := 4096; i < 4096+8192; i++ {
				want[i] = 0xdd // memDisk's mark for discarded bytes
			}
			if err := c.WriteZeroes(1<<20+3, 100000, false); err != nil {
				t.Fatalf("WriteZeroes: %v", err)
			}
			clear(want[1<<20+3 : 1<<20+3+100000])
			if !bytes.Equal(disk.snapshot(), want) {
				t.Fatal("the server's disk differs from what the client wrote")
			}
			// The end of the disk: io.ReaderAt semantics, and no write past it.
			buf := make([]byte, 1024)
			if n, err := c.ReadAt(buf, size-512); n != 512 || err != io.EOF || !bytes.Equal(buf[:512], want[size-512:]) {
				t.Errorf("ReadAt across the end = %d, %v", n, err)
			}
			if n, err := c.WriteAt(buf, size-512); n != 0 || !errors.Is(err, syscall.ENOSPC) {
				t.Errorf("WriteAt across the end = %d, %v; want ENOSPC", n, err)
			}
		})
	}
}

// Requests from many goroutines are in flight together on the one
// connection: the disk's reads wait until 16 are running at once, which
// would never happen if the client sent them one at a time.
func TestConcurrentRequests(t *testing.T) {
	const size, block, goroutines = 4 << 20, 4096, 64
	disk := newMemDisk(size)
	var running atomic.Int32
	allIn := make(chan struct{})
	var once sync.Once
	onRead := func() {
		if running.Add(1) >= 16 {
			once.Do(func() { close(allIn) })
		}
		select {
		case <-allIn:
		case <-time.After(5 * time.Second):
		}
	}
	disk.onRead.Store(&onRead)
	srv := &Server{Exports: map[string]Export{"": disk}}
	c := dial(t, "unix", serve(t, srv), "")

	var wg sync.WaitGroup
	start := time.Now()
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, block)
			if _, err := c.ReadAt(buf, int64(g*block)); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	if time.Since(start) > 4*time.Second {
		t.Fatal("reads did not run concurrently: 16 never were in flight at once")
	}
	disk.onRead.Store(nil)

	// Then a storm of mixed requests, each goroutine on its own blocks.
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 9))
			for i := range 50 {
				off := int64((g*16 + rng.IntN(16)) * block)
				buf := bytes.Repeat([]byte{byte(g), byte(i)}, block/2)
				if _, err := c.WriteAt(buf, off); err != nil {
					t.Error(err)
					return
				}
				got := make([]byte, block)
				if _, err := c.ReadAt(got, off); err != nil || !bytes.Equal(got, buf) {
					t.Errorf("goroutine %d: read back wrong data (err %v)", g, err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestReadOnly(t *testing.T) {
	ro := newMemDisk(1 << 20)
	ro.readOnly = true
	rw := newMemDisk(1 << 20)
	srv := &Server{Exports: map[string]Export{"ro": ro, "rw": rw}}
	sock := serve(t, srv)

	c := dial(t, "unix", sock, "ro")
	if !c.ReadOnly() {
		t.Fatal("a read-only export's client says ReadOnly() = false")
	}
	// WithReadOnly makes a writable export read-only on this side.
	c2 := dial(t, "unix", sock, "rw", WithReadOnly())
	for _, c := range []*Client{c, c2} {
		buf := make([]byte, 512)
		if _, err := c.ReadAt(buf, 0); err != nil {
			t.Errorf("ReadAt: %v", err)
		}
		if _, err := c.WriteAt(buf, 0); !errors.Is(err, fs.ErrPermission) || !strings.Contains(err.Error(), "read-only") {
			t.Errorf("WriteAt = %v; want a read-only error matching fs.ErrPermission", err)
		}
		if err := c.Discard(0, 512); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("Discard = %v", err)
		}
		if err := c.WriteZeroes(0, 512, true); !errors.Is(err, fs.ErrPermission) {
			t.Errorf("WriteZeroes = %v", err)
		}
		if err := c.Flush(); err != nil {
			t.Errorf("Flush = %v", err)
		}
	}
}

func TestUnknownExport(t *testing.T) {
	srv := &Server{Exports: map[string]Export{"disk0": newMemDisk(4096)}}
	ln := serveAt(t, srv, "tcp", "127.0.0.1:0")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, "tcp", ln.Addr().String(), "foo")
	want := `export "foo" not found on ` + ln.Addr().String() + ` (NBD_REP_ERR_UNKNOWN)`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Dial of an unknown export = %v; want it to contain %q", err, want)
	}

	// The same through NBD_OPT_EXPORT_NAME, where the server can only hang up.
	srv2 := &Server{Exports: srv.Exports, disableGo: true}
	sock := serve(t, srv2)
	_, err = Dial(ctx, "unix", sock, "foo")
	if err == nil || !strings.Contains(err.Error(), `export "foo" probably does not exist`) {
		t.Fatalf("Dial of an unknown export by NBD_OPT_EXPORT_NAME = %v", err)
	}
}

// A server that answers NBD_OPT_GO with NBD_REP_ERR_UNSUP still works,
// through NBD_OPT_EXPORT_NAME.
func TestExportNameFallback(t *testing.T) {
	disk := newMemDisk(1 << 20)
	srv := &Server{Exports: map[string]Export{"old": disk}, disableGo: true}
	c := dial(t, "unix", serve(t, srv), "old")
	if c.Size() != 1<<20 {
		t.Fatalf("Size = %d", c.Size())
	}
	buf := bytes.Repeat([]byte("fallback"), 512)
	if _, err := c.WriteAt(buf, 512); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(buf))
	if _, err := c.ReadAt(got, 512); err != nil || !bytes.Equal(got, buf) {
		t.Fatalf("ReadAt = %v", err)
	}
}

// Requests larger than the server's maximum block size are split, and the
// pieces reassemble.
func TestRequestSplitting(t *testing.T) {
	const size, maxBlock = 4 << 20, 64 << 10
	disk := newMemDisk(size)
	srv := &Server{Exports: map[string]Export{"": disk}, MaxBlockSize: maxBlock}
	c := dial(t, "unix", serve(t, srv), "")
	if got := c.conn.info.maxRequest; got != maxBlock {
		t.Fatalf("the client learned a maximum request of %d, want %d", got, maxBlock)
	}
	buf := make([]byte, 1<<20+512) // 16 full pieces and a short one
	for i := range buf {
		buf[i] = byte(i / 512)
	}
	if n, err := c.WriteAt(buf, 1024); err != nil || n != len(buf) {
		t.Fatalf("WriteAt = %d, %v", n, err)
	}
	got := make([]byte, len(buf))
	if n, err := c.ReadAt(got, 1024); err != nil || n != len(buf) || !bytes.Equal(got, buf) {
		t.Fatalf("ReadAt = %d, %v, equal %v", n, err, bytes.Equal(got, buf))
	}
	if got := disk.longestRequest(); got != maxBlock {
		t.Errorf("the longest request the disk saw was %d bytes, want %d", got, maxBlock)
	}
	// Zeroing has no payload but is split too.
	if err := c.WriteZeroes(0, size, true); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(disk.snapshot(), make([]byte, size)) {
		t.Error("WriteZeroes of the whole disk left data behind")
	}
}

// Without NBD_FLAG_SEND_WRITE_ZEROES and NBD_FLAG_SEND_TRIM the client
// writes zeros and skips discards.
func TestClientWithoutOptionalCommands(t *testing.T) {
	disk := &plainDisk{newMemDisk(1 << 20)}
	srv := &Server{Exports: map[string]Export{"": disk}}
	c := dial(t, "unix", serve(t, srv), "")
	c.conn.info.flags &^= transSendWriteZeroes // pretend the server lacks it
	if c.conn.info.has(transSendTrim) {
		t.Fatal("the server offered NBD_CMD_TRIM for a disk without Discard")
	}
	if _, err := c.WriteAt(bytes.Repeat([]byte{1}, 1<<20), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Discard(0, 4096); err != nil {
		t.Fatalf("Discard = %v", err)
	}
	if err := c.WriteZeroes(100, 300000, false); err != nil {
		t.Fatalf("WriteZeroes = %v", err)
	}
	want := bytes.Repeat([]byte{1}, 1<<20)
	clear(want[100 : 100+300000])
	if !bytes.Equal(disk.snapshot(), want) {
		t.Fatal("wrong contents after a discard (should be a no-op) and written zeros")
	}
}

// plainDisk hides memDisk's Discard and WriteZeroes.
type plainDisk struct{ m *memDisk }

func (p *plainDisk) ReadAt(b []byte, off int64) (int, error)  { return p.m.ReadAt(b, off) }
func (p *plainDisk) WriteAt(b []byte, off int64) (int, error) { return p.m.WriteAt(b, off) }
func (p *plainDisk) Flush() error                             { return p.m.Flush() }
func (p *plainDisk) Size() uint64                             { return p.m.Size() }
func (p *plainDisk) ReadOnly() bool                           { return false }
func (p *plainDisk) snapshot() []byte                         { return p.m.snapshot() }

// Errors from the disk reach the client as NBD errors.
func TestDiskErrors(t *testing.T) {
	srv := &Server{Exports: map[string]Export{"": &failingDisk{memDisk: newMemDisk(1 << 20)}}}
	c := dial(t, "unix", serve(t, srv), "")
	_, err := c.ReadAt(make([]byte, 512), 0)
	if !errors.Is(err, EIO) || !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "NBD_EIO") {
		t.Errorf("ReadAt on a failing disk = %v; want NBD_EIO", err)
	}
	_, err = c.WriteAt(make([]byte, 512), 0)
	if !errors.Is(err, ENOSPC) {
		t.Errorf("WriteAt on a full disk = %v; want NBD_ENOSPC", err)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("the connection should still answer, with an error")
	}
}

type failingDisk struct{ *memDisk }

func (f *failingDisk) ReadAt([]byte, int64) (int, error)  { return 0, errors.New("media error") }
func (f *failingDisk) WriteAt([]byte, int64) (int, error) { return 0, syscall.ENOSPC }

func TestCloseSendsDisc(t *testing.T) {
	var log logBuffer
	srv := &Server{Exports: map[string]Export{"": newMemDisk(4096)}, Log: log.logf}
	sock := serve(t, srv)
	c := dial(t, "unix", sock, "")
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 2*time.Second, "the server to log the disconnection", func() bool {
		return strings.Contains(log.String(), "disconnected")
	})
	if s := log.String(); strings.Contains(s, "without NBD_CMD_DISC") {
		t.Errorf("the client closed without NBD_CMD_DISC:\n%s", s)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); err == nil {
		t.Error("ReadAt after Close succeeded")
	}
	if err := c.Close(); err != nil {
		t.Errorf("a second Close = %v", err)
	}
}
