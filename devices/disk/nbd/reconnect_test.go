package nbd

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// restartableServer serves one disk at a fixed address, and can be killed
// (listener and connections closed) and started again, as a server process
// restarted by its operator would be.
type restartableServer struct {
	t       *testing.T
	network string
	address string
	srv     *Server
	done    chan struct{}
}

func (rs *restartableServer) start(disk Export) {
	rs.t.Helper()
	ln, err := net.Listen(rs.network, rs.address)
	if err != nil {
		rs.t.Fatal(err)
	}
	rs.address = ln.Addr().String()
	rs.srv = &Server{Exports: map[string]Export{"disk": disk}}
	rs.done = make(chan struct{})
	go func(srv *Server, done chan struct{}) {
		defer close(done)
		srv.Serve(ln)
	}(rs.srv, rs.done)
}

func (rs *restartableServer) kill() {
	rs.srv.Close()
	<-rs.done
}

func TestReconnect(t *testing.T) {
	for _, network := range []string{"unix", "tcp"} {
		t.Run(network, func(t *testing.T) { testReconnect(t, network) })
	}
}

func testReconnect(t *testing.T, network string) {
	const size, block = 1 << 20, 4096
	disk := newMemDisk(size)
	rs := &restartableServer{t: t, network: network, address: "127.0.0.1:0"}
	if network == "unix" {
		rs.address = socketPath(t)
	}
	rs.start(disk)
	defer rs.kill()

	var log logBuffer
	c := dial(t, network, rs.address, "disk", WithLog(log.logf), WithBackoff(10*time.Millisecond, 50*time.Millisecond))

	// Data written and flushed before the outage.
	before := bytes.Repeat([]byte("before!!"), size/8/2)
	if _, err := c.WriteAt(before, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	// I/O from several goroutines, running through the outage.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	var failures []error
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := bytes.Repeat([]byte{byte(g + 1)}, block)
			off := int64(size/2 + g*block)
			for {
				select {
				case <-stop:
					return
				default:
				}
				var err error
				if g%2 == 0 {
					_, err = c.WriteAt(buf, off)
				} else {
					_, err = c.ReadAt(make([]byte, block), 0)
				}
				if err != nil {
					mu.Lock()
					failures = append(failures, err)
					mu.Unlock()
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)

	rs.kill()
	// Every request now fails promptly with ErrDisconnected; none hangs.
	waitFor(t, 2*time.Second, "requests to fail", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(failures) >= 8
	})
	start := time.Now()
	_, err := c.ReadAt(make([]byte, block), 0)
	if !errors.Is(err, ErrDisconnected) {
		t.Errorf("a read while the server is down = %v; want ErrDisconnected", err)
	}
	if time.Since(start) > 100*time.Millisecond {
		t.Errorf("a read while the server is down took %v", time.Since(start))
	}
	if !strings.Contains(err.Error(), c.String()) {
		t.Errorf("the error %q does not name the disk %s", err, c)
	}
	mu.Lock()
	for _, err := range failures {
		if !errors.Is(err, ErrDisconnected) {
			t.Errorf("a request failed with %v; want ErrDisconnected", err)
		}
	}
	mu.Unlock()

	// Writes attempted during the outage are lost; the flushed data is not.
	rs.start(disk)
	waitFor(t, 3*time.Second, "the client to reconnect", func() bool {
		_, err := c.ReadAt(make([]byte, block), 0)
		return err == nil
	})
	close(stop)
	wg.Wait()
	got := make([]byte, size/2)
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, before) {
		t.Fatalf("the data written before the outage is not intact (err %v)", err)
	}
	after := bytes.Repeat([]byte("after"), 1000)
	if _, err := c.WriteAt(after, 12345); err != nil {
		t.Fatalf("a write after reconnecting failed: %v", err)
	}
	copy(before[12345:], after)
	if !bytes.Equal(disk.snapshot()[:size/2], before) {
		t.Fatal("the server's disk does not hold what the client wrote")
	}

	// The writers' acknowledged writes had no flush before the connection
	// was lost: the first flush says so, the next one succeeds.
	if err := c.Flush(); !errors.Is(err, syscall.EIO) || !strings.Contains(err.Error(), "may not be durable") {
		t.Errorf("the first Flush after reconnecting = %v; want EIO for unflushed writes", err)
	}
	if err := c.Flush(); err != nil {
		t.Errorf("the second Flush after reconnecting = %v", err)
	}

	logged := log.String()
	for _, want := range []string{c.String() + ": connection lost: ", "; reconnecting", c.String() + ": reconnected after"} {
		if !strings.Contains(logged, want) {
			t.Errorf("the log lacks %q:\n%s", want, logged)
		}
	}
}

// Without unflushed writes, a reconnection is invisible to Flush.
func TestReconnectAfterFlush(t *testing.T) {
	disk := newMemDisk(1 << 20)
	rs := &restartableServer{t: t, network: "unix", address: socketPath(t)}
	rs.start(disk)
	defer rs.kill()
	c := dial(t, "unix", rs.address, "disk", WithBackoff(10*time.Millisecond, 10*time.Millisecond))
	if _, err := c.WriteAt(make([]byte, 4096), 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	rs.kill()
	rs.start(disk)
	waitFor(t, 3*time.Second, "the client to reconnect", func() bool {
		return c.Flush() == nil
	})
	if err := c.Flush(); err != nil {
		t.Errorf("Flush = %v", err)
	}
}

// An export that comes back with another size is refused for good.
func TestReconnectSizeChanged(t *testing.T) {
	rs := &restartableServer{t: t, network: "unix", address: socketPath(t)}
	rs.start(newMemDisk(1 << 20))
	var log logBuffer
	c := dial(t, "unix", rs.address, "disk", WithLog(log.logf), WithBackoff(10*time.Millisecond, 10*time.Millisecond))
	rs.kill()
	rs.start(newMemDisk(2 << 20))
	defer rs.kill()
	waitFor(t, 3*time.Second, "the size change to be logged", func() bool {
		return strings.Contains(log.String(), "size changed from 1048576 to 2097152")
	})
	for range 3 {
		_, err := c.ReadAt(make([]byte, 512), 0)
		if err == nil || errors.Is(err, ErrDisconnected) || !strings.Contains(err.Error(), "size changed") {
			t.Fatalf("ReadAt after the size changed = %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(log.String(), "the disk stays failed") {
		t.Errorf("log:\n%s", log.String())
	}
}

// Close stops the reconnect loop promptly, even while the server is gone.
func TestCloseWhileReconnecting(t *testing.T) {
	rs := &restartableServer{t: t, network: "unix", address: socketPath(t)}
	rs.start(newMemDisk(4096))
	var log logBuffer
	c := dial(t, "unix", rs.address, "disk", WithLog(log.logf), WithBackoff(time.Millisecond, 5*time.Millisecond))
	rs.kill()
	waitFor(t, 2*time.Second, "a reconnect attempt", func() bool {
		return strings.Contains(log.String(), "reconnecting: ")
	})
	done := make(chan struct{})
	go func() {
		c.Close()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Close hung while the client was reconnecting")
	}
	n := log.count()
	rs.start(newMemDisk(4096))
	defer rs.kill()
	time.Sleep(50 * time.Millisecond)
	if s := log.since(n); s != "" {
		t.Errorf("the client went on after Close:\n%s", s)
	}
	if _, err := c.ReadAt(make([]byte, 512), 0); !errors.Is(err, net.ErrClosed) {
		t.Errorf("ReadAt after Close = %v; want net.ErrClosed", err)
	}
}

// A server that accepts but never speaks does not hang Dial.
func TestDialHandshakeTimeout(t *testing.T) {
	ln, err := net.Listen("unix", socketPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			defer nc.Close()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, "unix", ln.Addr().String(), "")
	if err == nil || time.Since(start) > 2*time.Second {
		t.Fatalf("Dial to a mute server = %v after %v", err, time.Since(start))
	}
	_, err = Dial(context.Background(), "unix", ln.Addr().String(), "", WithHandshakeTimeout(100*time.Millisecond))
	if err == nil || !strings.Contains(err.Error(), "timeout") {
		t.Fatalf("Dial to a mute server with a handshake timeout = %v", err)
	}
}
