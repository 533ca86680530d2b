package nbd

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"govmm/tests/tools"
)

// Interoperability with the NBD implementations Debian ships: the client
// against nbdkit and qemu-nbd, the server against qemu-io, qemu-img and
// qemu-nbd's client side. Each test starts the tool itself and skips when
// it is not installed, or fails under GOVMM_REQUIRE_TOOLS=1 (tools.Need).

// lockedBuffer collects a process's output.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startServer runs an NBD server program that listens on the unix socket
// sock, waits until the socket answers, and stops the program at cleanup.
// It returns a function that kills the program (SIGKILL) and waits for it.
func startServer(t *testing.T, sock string, program string, args ...string) (kill func()) {
	t.Helper()
	cmd := exec.Command(program, args...)
	var out lockedBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	kill = func() {
		cmd.Process.Kill()
		<-exited
	}
	t.Cleanup(kill)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if nc, err := net.Dial("unix", sock); err == nil {
			nc.Close()
			return kill
		}
		select {
		case <-exited:
			t.Fatalf("%s exited before serving: %s\n%s", program, cmd.ProcessState, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not listen on %s within 10 s:\n%s", program, sock, out.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// exercise runs random reads and writes from several goroutines, then
// zeroes, discards and flushes, checking every byte against a model.
func exercise(t *testing.T, c *Client, align int) {
	t.Helper()
	size := int(c.Size())
	want := make([]byte, size)
	got := make([]byte, size)
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatalf("reading the whole disk: %v", err)
	}
	copy(want, got)
	const goroutines = 8
	region := size / goroutines
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 77))
			base := g * region
			for range 40 {
				off := base + rng.IntN(region/align)*align
				n := (rng.IntN(min(region-(off-base), 256<<10)/align) + 1) * align
				buf := make([]byte, n)
				if rng.IntN(2) == 0 {
					for i := range buf {
						buf[i] = byte(rng.Uint32())
					}
					if _, err := c.WriteAt(buf, int64(off)); err != nil {
						t.Errorf("WriteAt(%d bytes at %d): %v", n, off, err)
						return
					}
					copy(want[off:], buf) // goroutines own disjoint regions
				} else {
					if _, err := c.ReadAt(buf, int64(off)); err != nil {
						t.Errorf("ReadAt(%d bytes at %d): %v", n, off, err)
						return
					}
					if !bytes.Equal(buf, want[off:off+n]) {
						t.Errorf("ReadAt(%d bytes at %d) returned the wrong data", n, off)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	if err := c.WriteZeroes(int64(align), int64(64*align), false); err != nil {
		t.Fatalf("WriteZeroes: %v", err)
	}
	clear(want[align : 65*align])
	if err := c.WriteZeroes(int64(size/2), int64(size/4), true); err != nil {
		t.Fatalf("WriteZeroes(mayUnmap): %v", err)
	}
	clear(want[size/2 : size/2+size/4])
	if err := c.Discard(int64(size-8*align), int64(8*align)); err != nil {
		t.Fatalf("Discard: %v", err)
	}
	if err := c.Flush(); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	if _, err := c.ReadAt(got, 0); err != nil {
		t.Fatalf("reading the whole disk: %v", err)
	}
	// The discarded tail's contents are unspecified.
	if tail := size - 8*align; !bytes.Equal(got[:tail], want[:tail]) {
		t.Fatal("the disk's contents differ from the model")
	}
}

func TestInteropNbdkit(t *testing.T) {
	nbdkit := tools.Need(t, "nbdkit", "nbdkit")
	sock := socketPath(t)
	startServer(t, sock, nbdkit, "--exit-with-parent", "-f", "-U", sock, "memory", "64M")
	c := dial(t, "unix", sock, "")
	if c.Size() != 64<<20 || c.ReadOnly() {
		t.Fatalf("Size, ReadOnly = %d, %v", c.Size(), c.ReadOnly())
	}
	if !c.conn.info.has(transSendFlush | transSendTrim | transSendWriteZeroes) {
		t.Errorf("nbdkit memory announced flags %#x; expected FLUSH, TRIM and WRITE_ZEROES", c.conn.info.flags)
	}
	exercise(t, c, 512)
}

// nbdkit's blocksize-policy filter announces (and enforces) a 4 KiB
// minimum and a 64 KiB maximum: the client splits and refuses to misalign.
func TestInteropNbdkitBlockSize(t *testing.T) {
	nbdkit := tools.Need(t, "nbdkit", "nbdkit")
	sock := socketPath(t)
	startServer(t, sock, nbdkit, "--exit-with-parent", "-f", "-U", sock, "--filter=blocksize-policy", "memory", "16M",
		"blocksize-minimum=4096", "blocksize-preferred=4096", "blocksize-maximum=65536", "blocksize-error-policy=error")
	c := dial(t, "unix", sock, "")
	if c.conn.info.minBlock != 4096 || c.conn.info.maxRequest != 65536 {
		t.Fatalf("learned minimum %d, maximum request %d; want 4096, 65536", c.conn.info.minBlock, c.conn.info.maxRequest)
	}
	exercise(t, c, 4096)
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, syscall.EINVAL) || !strings.Contains(err.Error(), "minimum block size") {
		t.Errorf("an unaligned write = %v; want EINVAL naming the minimum block size", err)
	}
}

// With --mask-handshake=0 nbdkit speaks plain newstyle: no NBD_OPT_GO, no
// NO_ZEROES; the client uses NBD_OPT_EXPORT_NAME and skips the 124 zeros.
func TestInteropNbdkitPlainNewstyle(t *testing.T) {
	nbdkit := tools.Need(t, "nbdkit", "nbdkit")
	sock := socketPath(t)
	startServer(t, sock, nbdkit, "--exit-with-parent", "-f", "-U", sock, "--mask-handshake=0", "memory", "8M")
	c := dial(t, "unix", sock, "")
	if c.Size() != 8<<20 {
		t.Fatalf("Size = %d", c.Size())
	}
	exercise(t, c, 512)
}

func TestInteropNbdkitReadOnlyAndUnknownExport(t *testing.T) {
	nbdkit := tools.Need(t, "nbdkit", "nbdkit")
	sock := socketPath(t)
	startServer(t, sock, nbdkit, "--exit-with-parent", "-f", "-U", sock, "-r", "--filter=exportname", "memory", "1M",
		"exportname=disk0", "exportname-strict=true")
	c := dial(t, "unix", sock, "disk0")
	if !c.ReadOnly() {
		t.Fatal("nbdkit -r: ReadOnly() = false")
	}
	if _, err := c.WriteAt(make([]byte, 512), 0); !errors.Is(err, fs.ErrPermission) {
		t.Errorf("WriteAt = %v; want a permission error", err)
	}
	if _, err := c.ReadAt(make([]byte, 4096), 0); err != nil {
		t.Errorf("ReadAt = %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, "unix", sock, "nope")
	if want := `export "nope" not found on ` + sock; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Dial of an unknown export = %v; want it to contain %q", err, want)
	}
}

// nbdkit killed mid-I/O and started again on the same file: requests fail
// with ErrDisconnected meanwhile, then work, and flushed data survived.
func TestInteropNbdkitReconnect(t *testing.T) {
	nbdkit := tools.Need(t, "nbdkit", "nbdkit")
	sock := socketPath(t)
	image := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(image, make([]byte, 4<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--exit-with-parent", "-f", "-U", sock, "file", image}
	kill := startServer(t, sock, nbdkit, args...)
	var log logBuffer
	c := dial(t, "unix", sock, "", WithLog(log.logf), WithBackoff(20*time.Millisecond, 100*time.Millisecond))
	data := bytes.Repeat([]byte("durable."), 1<<16)
	if _, err := c.WriteAt(data, 0); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	kill()
	os.Remove(sock) // nbdkit killed by SIGKILL leaves its socket behind
	if _, err := c.ReadAt(make([]byte, 4096), 0); !errors.Is(err, ErrDisconnected) {
		t.Errorf("ReadAt with nbdkit gone = %v; want ErrDisconnected", err)
	}
	startServer(t, sock, nbdkit, args...)
	waitFor(t, 5*time.Second, "the client to reconnect to the new nbdkit", func() bool {
		_, err := c.ReadAt(make([]byte, 4096), 0)
		return err == nil
	})
	got := make([]byte, len(data))
	if _, err := c.ReadAt(got, 0); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after reconnecting the data is not intact (err %v)", err)
	}
	if !strings.Contains(log.String(), "reconnected") {
		t.Errorf("log:\n%s", log.String())
	}
}

func TestInteropQemuNbd(t *testing.T) {
	qemuNbd := tools.Need(t, "qemu-nbd", "qemu-utils")
	dir := t.TempDir()
	image := filepath.Join(dir, "disk.img")
	initial := make([]byte, 16<<20)
	for i := range initial {
		initial[i] = byte(i >> 9)
	}
	if err := os.WriteFile(image, initial, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := socketPath(t)
	kill := startServer(t, sock, qemuNbd, "-f", "raw", "-k", sock, "-x", "disk0", "--persistent", "--shared=4", "--discard=unmap", image)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := Dial(ctx, "unix", sock, "nope")
	if want := `export "nope" not found on ` + sock + ` (NBD_REP_ERR_UNKNOWN)`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Dial of an unknown export = %v; want it to contain %q", err, want)
	}

	c := dial(t, "unix", sock, "disk0")
	if c.Size() != 16<<20 || c.ReadOnly() {
		t.Fatalf("Size, ReadOnly = %d, %v", c.Size(), c.ReadOnly())
	}
	exercise(t, c, 512)
	marker := []byte("written through qemu-nbd")
	if _, err := c.WriteAt(marker, 8<<20+1024); err != nil {
		t.Fatal(err)
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	c.Close()
	kill()
	onDisk, err := os.ReadFile(image)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[8<<20+1024:][:len(marker)], marker) {
		t.Error("the write did not reach the image file")
	}
}

// qemu's NBD client against our Server: qemu-io writes, reads back with
// pattern checks, zeroes, discards and flushes; qemu-img reads the size;
// qemu-nbd --list lists the exports.
func TestInteropQemuClients(t *testing.T) {
	qemuIO := tools.Need(t, "qemu-io", "qemu-utils")
	qemuImg := tools.Need(t, "qemu-img", "qemu-utils")
	qemuNbd := tools.Need(t, "qemu-nbd", "qemu-utils")
	disk := newMemDisk(4 << 20)
	ro := newMemDisk(1 << 20)
	ro.readOnly = true
	var log logBuffer
	srv := &Server{Exports: map[string]Export{"disk": disk, "ro": ro}, Log: log.logf}
	sock := serve(t, srv)
	uri := fmt.Sprintf("nbd+unix:///disk?socket=%s", sock)
	run := func(program string, args ...string) string {
		t.Helper()
		out, err := exec.Command(program, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s: %v\n%s\nserver log:\n%s", program, strings.Join(args, " "), err, out, log.String())
		}
		return string(out)
	}

	out := run(qemuIO, "-f", "raw",
		"-c", "write -P 0xab 4096 1M",
		"-c", "read -P 0xab 4096 1M",
		"-c", "write -z 8192 64k",
		"-c", "read -P 0 8192 64k",
		"-c", "discard 2M 64k",
		"-c", "flush",
		uri)
	if strings.Contains(out, "Pattern verification failed") || strings.Contains(out, "error") {
		t.Fatalf("qemu-io:\n%s", out)
	}
	want := make([]byte, 4<<20)
	for i := 4096; i < 4096+1<<20; i++ {
		want[i] = 0xab
	}
	clear(want[8192 : 8192+64<<10])
	for i := 2 << 20; i < 2<<20+64<<10; i++ {
		want[i] = 0xdd // memDisk's mark for discarded bytes
	}
	if !bytes.Equal(disk.snapshot(), want) {
		t.Error("the disk does not hold what qemu-io wrote")
	}
	if disk.flushCount() == 0 {
		t.Error("qemu-io's flush did not reach the disk")
	}

	out = run(qemuImg, "info", "--output=json", uri)
	if !strings.Contains(out, `"virtual-size": 4194304`) {
		t.Errorf("qemu-img info:\n%s", out)
	}

	out = run(qemuNbd, "--list", "-k", sock)
	for _, w := range []string{"exports available: 2", "export: 'disk'", "export: 'ro'", "size:  1048576"} {
		if !strings.Contains(out, w) {
			t.Errorf("qemu-nbd --list lacks %q:\n%s", w, out)
		}
	}

	// A write to the read-only export fails in qemu-io.
	outB, err := exec.Command(qemuIO, "-f", "raw", "-c", "write 0 512", fmt.Sprintf("nbd+unix:///ro?socket=%s", sock)).CombinedOutput()
	if !strings.Contains(string(outB), "ermission denied") && !strings.Contains(string(outB), "not permitted") && !strings.Contains(string(outB), "read-only") {
		t.Errorf("qemu-io write to a read-only export: %v\n%s", err, outB)
	}
	if !bytes.Equal(ro.snapshot(), make([]byte, 1<<20)) {
		t.Error("the read-only disk changed")
	}
}
