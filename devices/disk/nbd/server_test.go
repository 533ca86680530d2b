package nbd

import (
	"bytes"
	"encoding/binary"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// rawConn speaks the protocol by hand, to send what Client never would.
type rawConn struct {
	t  *testing.T
	nc net.Conn
}

func rawDial(t *testing.T, sock string) *rawConn {
	t.Helper()
	nc, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	t.Cleanup(func() { nc.Close() })
	return &rawConn{t: t, nc: nc}
}

// transmission negotiates export and returns what the server announced.
func (r *rawConn) transmission(export string) exportInfo {
	r.t.Helper()
	info, err := negotiate(r.nc, export, "test server")
	if err != nil {
		r.t.Fatal(err)
	}
	return info
}

// do sends one request and reads its simple reply.
func (r *rawConn) do(cmd, flags uint16, offset uint64, length uint32, payload []byte) (Errno, []byte) {
	r.t.Helper()
	cookie := rand.Uint64()
	msg := request{flags: flags, cmd: cmd, cookie: cookie, offset: offset, length: length}.append(nil)
	if _, err := r.nc.Write(append(msg, payload...)); err != nil {
		r.t.Fatalf("sending %s: %v", cmdName(cmd), err)
	}
	var hdr [replyHeaderSize]byte
	if _, err := io.ReadFull(r.nc, hdr[:]); err != nil {
		r.t.Fatalf("reading the reply to %s: %v", cmdName(cmd), err)
	}
	if m := binary.BigEndian.Uint32(hdr[:]); m != magicSimpleReply {
		r.t.Fatalf("reply magic %#x", m)
	}
	if got := binary.BigEndian.Uint64(hdr[8:]); got != cookie {
		r.t.Fatalf("reply cookie %d, want %d", got, cookie)
	}
	errno := Errno(binary.BigEndian.Uint32(hdr[4:]))
	var data []byte
	if cmd == cmdRead && errno == 0 {
		data = make([]byte, length)
		if _, err := io.ReadFull(r.nc, data); err != nil {
			r.t.Fatal(err)
		}
	}
	return errno, data
}

// option sends one option and returns the replies up to the first that is
// not NBD_REP_INFO or NBD_REP_SERVER.
func (r *rawConn) option(opt uint32, data []byte) (reps []uint32, payloads [][]byte) {
	r.t.Helper()
	if _, err := r.nc.Write(appendOption(nil, opt, data)); err != nil {
		r.t.Fatal(err)
	}
	for {
		gotOpt, rep, payload, err := readOptionReply(r.nc)
		if err != nil {
			r.t.Fatalf("reading the reply to %s: %v", optName(opt), err)
		}
		if gotOpt != opt {
			r.t.Fatalf("reply for %s to %s", optName(gotOpt), optName(opt))
		}
		reps, payloads = append(reps, rep), append(payloads, payload)
		if rep != repInfo && rep != repServer {
			return reps, payloads
		}
	}
}

// greet reads the greeting and sends fixed-newstyle client flags.
func (r *rawConn) greet() {
	r.t.Helper()
	greeting := make([]byte, 18)
	if _, err := io.ReadFull(r.nc, greeting); err != nil {
		r.t.Fatal(err)
	}
	r.nc.Write(binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes))
}

// Malformed and out-of-range requests get error replies, reach nothing,
// and the connection goes on.
func TestServerChecksRequests(t *testing.T) {
	const size, maxBlock = 1 << 20, 64 << 10
	disk := newMemDisk(size)
	ro := newMemDisk(size)
	ro.readOnly = true
	srv := &Server{Exports: map[string]Export{"": disk, "ro": ro}, MaxBlockSize: maxBlock}
	sock := serve(t, srv)

	r := rawDial(t, sock)
	info := r.transmission("")
	if info.size != size || info.maxRequest != maxBlock || !info.has(transSendFlush|transSendTrim|transSendWriteZeroes|transSendFUA) {
		t.Fatalf("announced %+v", info)
	}
	payload := bytes.Repeat([]byte{0xee}, 4096)
	big := make([]byte, maxBlock+512)
	tests := []struct {
		name    string
		cmd     uint16
		flags   uint16
		offset  uint64
		length  uint32
		payload []byte
		want    Errno
	}{
		{"read past the end", cmdRead, 0, size - 512, 1024, nil, EINVAL},
		{"read at the end", cmdRead, 0, size, 512, nil, EINVAL},
		{"read with a wrapping offset", cmdRead, 0, math.MaxUint64 - 100, 4096, nil, EINVAL},
		{"read above the maximum block size", cmdRead, 0, 0, maxBlock + 512, nil, EOVERFLOW},
		{"read of 4 GiB", cmdRead, 0, 0, math.MaxUint32, nil, EOVERFLOW},
		{"write past the end", cmdWrite, 0, size - 2048, 4096, payload, ENOSPC},
		{"write with a wrapping offset", cmdWrite, 0, math.MaxUint64 - 100, 4096, payload, ENOSPC},
		{"write above the maximum block size", cmdWrite, 0, 0, uint32(len(big)), big, EOVERFLOW},
		{"trim past the end", cmdTrim, 0, size, 1, nil, ENOSPC},
		{"write zeroes past the end", cmdWriteZeroes, 0, 1, size, nil, ENOSPC},
		{"unknown command", 42, 0, 0, 512, nil, EINVAL},
		{"NBD_CMD_CACHE, never offered", cmdCache, 0, 0, 512, nil, EINVAL},
		{"unknown flag", cmdRead, 1 << 9, 0, 512, nil, EINVAL},
		{"unknown flag on a write", cmdWrite, 1 << 15, 0, 4096, payload, EINVAL},
		{"valid read", cmdRead, 0, 4096, 512, nil, 0},
		{"valid write with FUA", cmdWrite, cmdFlagFUA, 0, 4096, payload, 0},
		{"flush", cmdFlush, 0, 0, 0, nil, 0},
		{"zero-length read", cmdRead, 0, size, 0, nil, 0},
	}
	for _, tt := range tests {
		got, _ := r.do(tt.cmd, tt.flags, tt.offset, tt.length, tt.payload)
		if got != tt.want {
			t.Errorf("%s: reply %v, want %v", tt.name, got, tt.want)
		}
	}
	// Only the valid write reached the disk, and FUA flushed it.
	want := make([]byte, size)
	copy(want, payload)
	if !bytes.Equal(disk.snapshot(), want) {
		t.Error("a refused write changed the disk")
	}
	if disk.flushCount() != 2 {
		t.Errorf("the disk saw %d flushes, want 2 (FUA and NBD_CMD_FLUSH)", disk.flushCount())
	}

	r2 := rawDial(t, sock)
	if info := r2.transmission("ro"); !info.has(transReadOnly) || info.has(transSendTrim) {
		t.Fatalf("read-only export announced flags %#x", info.flags)
	}
	for _, cmd := range []uint16{cmdWrite, cmdTrim, cmdWriteZeroes} {
		var p []byte
		if cmd == cmdWrite {
			p = payload
		}
		if got, _ := r2.do(cmd, 0, 0, 4096, p); got != EPERM {
			t.Errorf("%s on a read-only export: %v, want NBD_EPERM", cmdName(cmd), got)
		}
	}
	if got, data := r2.do(cmdRead, 0, 0, 4096, nil); got != 0 || len(data) != 4096 {
		t.Errorf("read on a read-only export: %v", got)
	}
	if !bytes.Equal(ro.snapshot(), make([]byte, size)) {
		t.Error("the read-only disk changed")
	}
}

func TestServerOptions(t *testing.T) {
	srv := &Server{Exports: map[string]Export{"b": newMemDisk(512), "a": newMemDisk(1024), "": newMemDisk(2048)}}
	sock := serve(t, srv)
	r := rawDial(t, sock)
	r.greet()

	reps, payloads := r.option(optList, nil)
	var names []string
	for i, rep := range reps[:len(reps)-1] {
		if rep != repServer {
			t.Fatalf("NBD_OPT_LIST reply %s", repName(rep))
		}
		names = append(names, string(payloads[i][4:]))
	}
	if reps[len(reps)-1] != repAck || strings.Join(names, ",") != ",a,b" {
		t.Errorf("NBD_OPT_LIST: exports %q, last reply %s", names, repName(reps[len(reps)-1]))
	}
	if reps, _ := r.option(optList, []byte("x")); reps[0] != repErrInvalid {
		t.Errorf("NBD_OPT_LIST with data: %s, want NBD_REP_ERR_INVALID", repName(reps[0]))
	}

	// NBD_OPT_INFO answers without leaving negotiation.
	reps, payloads = r.option(optInfo, goData("a", infoName, infoBlockSize))
	if len(reps) != 4 || reps[3] != repAck {
		t.Fatalf("NBD_OPT_INFO replies %v", reps)
	}
	if size := binary.BigEndian.Uint64(payloads[0][2:]); size != 1024 {
		t.Errorf("NBD_INFO_EXPORT size %d", size)
	}
	if string(payloads[1][2:]) != "a" {
		t.Errorf("NBD_INFO_NAME %q", payloads[1][2:])
	}

	// Malformed NBD_OPT_GO data: error replies, and negotiation goes on.
	for _, data := range [][]byte{
		nil,
		{0, 0, 0, 9, 'a', 0, 0},          // name runs past the data
		{0xff, 0xff, 0xff, 0xff, 0, 0},   // absurd name length
		append(goData("a", infoName), 0), // a stray byte
		goData("a", infoName)[:len(goData("a", infoName))-1], // a truncated info type
	} {
		if reps, _ := r.option(optGo, data); reps[0] != repErrInvalid {
			t.Errorf("NBD_OPT_GO with data %x: %s, want NBD_REP_ERR_INVALID", data, repName(reps[0]))
		}
	}
	if reps, payloads := r.option(optGo, goData("nope")); reps[0] != repErrUnknown || !strings.Contains(string(payloads[0]), `"nope"`) {
		t.Errorf("NBD_OPT_GO for an unknown export: %s %q", repName(reps[0]), payloads[0])
	}
	for _, opt := range []uint32{optStartTLS, optStructuredRepl, optSetMetaCtx, 12345} {
		if reps, _ := r.option(opt, []byte("whatever")); reps[0] != repErrUnsup {
			t.Errorf("%s: %s, want NBD_REP_ERR_UNSUP", optName(opt), repName(reps[0]))
		}
	}
	if reps, _ := r.option(optAbort, nil); reps[0] != repAck {
		t.Errorf("NBD_OPT_ABORT: %s", repName(reps[0]))
	}
	if _, err := r.nc.Read(make([]byte, 1)); err != io.EOF {
		t.Errorf("after NBD_OPT_ABORT the server should close; read gave %v", err)
	}
}

// Clients that send garbage are disconnected with a logged reason, and a
// well-behaved client on the same server does not notice.
func TestServerHostileClients(t *testing.T) {
	const size = 1 << 20
	disk := newMemDisk(size)
	var log logBuffer
	srv := &Server{Exports: map[string]Export{"": disk}, Log: log.logf, HandshakeTimeout: time.Second}
	sock := serve(t, srv)

	good := dial(t, "unix", sock, "")
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(5, 6))
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			off := int64(rng.IntN(size/4096)) * 4096
			buf := bytes.Repeat([]byte{byte(i)}, 4096)
			if _, err := good.WriteAt(buf, off); err != nil {
				t.Errorf("the good client's write failed: %v", err)
				return
			}
			got := make([]byte, 4096)
			if _, err := good.ReadAt(got, off); err != nil || !bytes.Equal(got, buf) {
				t.Errorf("the good client's read failed: %v", err)
				return
			}
		}
	}()

	hostile := []struct {
		name   string
		send   func(r *rawConn)
		logged string
	}{
		{"random bytes instead of client flags", func(r *rawConn) {
			r.nc.Write([]byte{0xde, 0xad, 0xbe, 0xef, 1, 2, 3})
		}, "unknown client flags"},
		{"not fixed newstyle", func(r *rawConn) {
			r.nc.Write([]byte{0, 0, 0, 0})
		}, "fixed newstyle"},
		{"bad option magic", func(r *rawConn) {
			r.greet()
			r.nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
		}, "bad option magic"},
		{"huge option", func(r *rawConn) {
			r.greet()
			r.nc.Write(binary.BigEndian.AppendUint32(appendOption(nil, optGo, nil)[:12], 1<<30))
		}, "exceeds the limit"},
		{"option cut short", func(r *rawConn) {
			r.greet()
			r.nc.Write(appendOption(nil, optGo, goData("x"))[:20])
			r.nc.(*net.UnixConn).CloseWrite()
		}, "connection closed mid-message"},
		{"silent client", func(r *rawConn) {}, "i/o timeout"},
		{"bad request magic", func(r *rawConn) {
			r.transmission("")
			r.nc.Write(bytes.Repeat([]byte{0x41}, 28))
		}, "bad request magic"},
		{"write cut short", func(r *rawConn) {
			r.transmission("")
			r.nc.Write(request{cmd: cmdWrite, length: 65536}.append(nil))
			r.nc.Write(make([]byte, 100))
			r.nc.(*net.UnixConn).CloseWrite()
		}, "connection closed mid-message"},
		{"random request stream", func(r *rawConn) {
			r.transmission("")
			junk := make([]byte, 1<<16)
			for i := range junk {
				junk[i] = byte(rand.Uint32())
			}
			r.nc.Write(junk)
		}, "bad request magic"},
	}
	for _, h := range hostile {
		logged := log.count()
		r := rawDial(t, sock)
		h.send(r)
		// The server hangs up: the read ends (EOF or reset), it does not time out.
		r.nc.SetReadDeadline(time.Now().Add(3 * time.Second))
		_, err := io.Copy(io.Discard, r.nc)
		if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("%s: the server did not disconnect", h.name)
		}
		waitFor(t, 2*time.Second, "the log line for "+h.name, func() bool {
			return strings.Contains(log.since(logged), h.logged)
		})
	}
	close(stop)
	wg.Wait()
	if t.Failed() {
		t.Logf("server log:\n%s", log.String())
	}
}
