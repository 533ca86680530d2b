package net

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	stdnet "net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
	"govmm/vmm"
)

// fakeBackend is a Backend in memory: frames for the guest are put in
// with feed, frames from the guest come out of sent.
type fakeBackend struct {
	in        chan []byte // what ReadFrame returns, header included
	readErr   chan error  // a value makes the pending ReadFrame fail
	sent      chan []byte // every frame written, header included
	closed    chan struct{}
	closeOnce sync.Once

	mu                 sync.Mutex
	writeErr           error
	detaches, attaches int
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{
		in:      make(chan []byte, 16),
		readErr: make(chan error, 1),
		sent:    make(chan []byte, 64),
		closed:  make(chan struct{}),
	}
}

var errClosed = errors.New("fake backend closed")

func (f *fakeBackend) ReadFrame(p []byte) (int, error) {
	select {
	case fr := <-f.in:
		return copy(p, fr), nil
	case err := <-f.readErr:
		return 0, err
	case <-f.closed:
		return 0, errClosed
	}
}

func (f *fakeBackend) WriteFrame(p []byte) error {
	f.mu.Lock()
	err := f.writeErr
	f.mu.Unlock()
	if err != nil {
		return err
	}
	f.sent <- slices.Clone(p)
	return nil
}

func (f *fakeBackend) Close() error {
	f.closeOnce.Do(func() { close(f.closed) })
	return nil
}

func (f *fakeBackend) Detach() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.detaches++
	return nil
}

func (f *fakeBackend) Attach() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.attaches++
	return nil
}

func (f *fakeBackend) IsDetached() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.detaches > f.attaches
}

// feed queues a frame for the guest, behind an all-zero header.
func (f *fakeBackend) feed(frame []byte) { f.feedWithHeader(make([]byte, hdrSize), frame) }

func (f *fakeBackend) feedWithHeader(hdr, frame []byte) { f.in <- append(slices.Clone(hdr), frame...) }

// next returns the next frame the device wrote.
func (f *fakeBackend) next(t *testing.T) []byte {
	t.Helper()
	select {
	case p := <-f.sent:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no frame reached the backend")
		return nil
	}
}

// quiet checks that nothing more reaches the backend for a moment.
func (f *fakeBackend) quiet(t *testing.T) {
	t.Helper()
	select {
	case p := <-f.sent:
		t.Fatalf("unexpected frame at the backend: %x", p)
	case <-time.After(20 * time.Millisecond):
	}
}

// logLines is what a test prints when a log line is missing.
func logLines(l *virtiotest.LogRecorder) string { return strings.Join(l.Lines(), "\n") }

const memSize = 8 << 20

var (
	testMAC = stdnet.HardwareAddr{0x52, 0x54, 0x00, 0x12, 0x34, 0x56}
	peerMAC = stdnet.HardwareAddr{0x02, 0, 0, 0, 0, 9}
	all     = ^uint64(0) // every feature offered, including the transport's
)

// harness is a virtio-net device behind a transport, with a driver and a
// fake backend.
type harness struct {
	t            *testing.T
	mem          *vmm.GuestMemory
	drv          *virtiotest.Driver
	m            *virtio.MMIO
	dev          *Device
	be           *fakeBackend
	rx, tx, ctrl *virtiotest.Queue
	logs         *virtiotest.LogRecorder
}

// newHarness starts a device, negotiating want, with queues of 16
// entries (8 for control, set up only if CTRL_VQ is in want).
func newHarness(t *testing.T, want uint64) *harness {
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
	h.attach(newFakeBackend(), testMAC)
	h.start(want)
	return h
}

// start has the driver negotiate want and set up the queues.
func (h *harness) start(want uint64) {
	sizes := []uint16{16, 16}
	if want&featureCtrlVQ != 0 {
		sizes = append(sizes, 8)
	}
	qs := h.drv.Init(want, sizes...)
	h.rx, h.tx = qs[0], qs[1]
	h.ctrl = nil
	if len(qs) > 2 {
		h.ctrl = qs[2]
	}
}

// attach puts a new device on be behind a new transport.
func (h *harness) attach(be *fakeBackend, mac stdnet.HardwareAddr) { h.attachBackend(be, be, mac) }

// attachBackend puts a new device on backend, which wraps be.
func (h *harness) attachBackend(backend Backend, be *fakeBackend, mac stdnet.HardwareAddr) {
	h.be = be
	h.dev = New(Config{Backend: backend, MAC: mac, Log: h.logs.Printf})
	h.m = virtio.NewMMIO(h.dev, virtio.MMIOConfig{Memory: h.mem, Interrupt: h.drv.Interrupt, Log: h.logs.Printf})
	dev := h.dev
	h.t.Cleanup(func() {
		h.m.Close()
		dev.Close()
	})
	h.drv.Dev = h.m
}

// ethFrame is an Ethernet frame of n bytes from peerMAC to testMAC,
// its payload a pattern.
func ethFrame(n int, seed byte) []byte {
	f := make([]byte, n)
	copy(f, testMAC)
	copy(f[6:], peerMAC)
	binary.BigEndian.PutUint16(f[12:], 0x88b5) // local experimental EtherType
	for i := ethHeaderSize; i < n; i++ {
		f[i] = seed + byte(i*7)
	}
	return f
}

// postRX makes n receive buffers of size bytes available.
func (h *harness) postRX(n, size int) []*virtiotest.Request {
	var rs []*virtiotest.Request
	for range n {
		rs = append(rs, h.rx.Add(virtiotest.Writable(size)))
	}
	h.rx.Kick()
	return rs
}

// rxHeader is the header the device should put in front of a received
// frame.
func rxHeader(numBuffers uint16) []byte {
	hdr := make([]byte, hdrSize)
	binary.LittleEndian.PutUint16(hdr[hdrNumBuffers:], numBuffers)
	return hdr
}

// send transmits frame as Linux lays it out (header and frame in one
// buffer) and waits for the chain to come back.
func (h *harness) send(frame []byte) {
	h.t.Helper()
	r := h.tx.Submit(virtiotest.Readable(append(make([]byte, hdrSize), frame...)))
	if u := h.tx.Wait(); u.ID != r.Head || u.Len != 0 {
		h.t.Fatalf("transmit: used %+v, want ID %d, length 0", u, r.Head)
	}
}

// command sends a control command and returns its ack.
func (h *harness) command(class, cmd byte, data []byte) byte {
	h.t.Helper()
	bufs := []virtiotest.Buf{virtiotest.Readable([]byte{class, cmd})}
	if len(data) > 0 {
		bufs = append(bufs, virtiotest.Readable(data))
	}
	r := h.ctrl.Submit(append(bufs, virtiotest.Writable(1))...)
	if u := h.ctrl.Wait(); u.ID != r.Head || u.Len != 1 {
		h.t.Fatalf("control command: used %+v", u)
	}
	return r.Writable(0)[0]
}

func (h *harness) config() []byte {
	b := make([]byte, configSize)
	h.m.Read(virtio.RegConfig, b)
	return b
}

func (h *harness) status() uint16 { return binary.LittleEndian.Uint16(h.config()[cfgStatus:]) }

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestFeaturesAndConfig(t *testing.T) {
	h := newHarness(t, all)
	if h.drv.Read32(virtio.RegDeviceID) != 1 {
		t.Error("DeviceID is not 1")
	}
	want := uint64(1<<5|1<<15|1<<16|1<<17|1<<21) | virtio.FeatureVersion1 | virtio.FeatureIndirectDesc | virtio.FeatureEventIdx
	if got := h.drv.DeviceFeatures(); got != want {
		t.Errorf("DeviceFeatures %#x, want %#x", got, want)
	}
	cfg := h.config()
	if !bytes.Equal(cfg[:6], testMAC) || binary.LittleEndian.Uint16(cfg[6:]) != statusLinkUp {
		t.Errorf("config space %x: want the MAC, then status LINK_UP", cfg)
	}
	// Linux reads the MAC a byte at a time (virtio_cread_bytes).
	b := make([]byte, 1)
	h.m.Read(virtio.RegConfig+5, b)
	if b[0] != 0x56 {
		t.Errorf("mac[5] = %#x", b[0])
	}
	h.m.Write(virtio.RegConfig, []byte{1, 2, 3, 4, 5, 6})
	if !bytes.Equal(h.config()[:6], testMAC) || !h.logs.Contains("read-only") {
		t.Error("config write changed the MAC or was not logged")
	}
	if !bytes.Equal(h.dev.MAC(), testMAC) {
		t.Errorf("MAC() = %v", h.dev.MAC())
	}
}

func TestMACs(t *testing.T) {
	for range 10 {
		mac := New(Config{Backend: newFakeBackend()}).MAC()
		if err := checkMAC(mac); err != nil || mac[0]&2 == 0 {
			t.Errorf("random MAC %v: %v, locally administered %v", mac, err, mac[0]&2 != 0)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"01:00:5e:00:00:01", "multicast"},
		{"00:00:00:00:00:00", "not valid"},
		{"00:00:5e:00:53:00:00:01", "6 bytes"},
		{"nonsense", "invalid MAC"},
	} {
		if _, err := ParseMAC(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseMAC(%q) = %v, want an error containing %q", c.in, err, c.want)
		}
	}
	if mac, err := ParseMAC("52:54:00:12:34:56"); err != nil || !bytes.Equal(mac, testMAC) {
		t.Errorf("ParseMAC: %v, %v", mac, err)
	}
	defer func() {
		if recover() == nil {
			t.Error("New with a multicast MAC did not panic")
		}
	}()
	New(Config{Backend: newFakeBackend(), MAC: stdnet.HardwareAddr{1, 0, 0, 0, 0, 1}})
}

// A frame from the guest reaches the backend with an all-zero header,
// however the driver splits it into descriptors.
func TestTransmit(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		t.Run(fmt.Sprint("indirect=", indirect), func(t *testing.T) {
			h := newHarness(t, all)
			h.tx.Indirect = indirect
			frame := ethFrame(1514, 1)
			h.send(frame)
			if got := h.be.next(t); !bytes.Equal(got, append(make([]byte, hdrSize), frame...)) {
				t.Errorf("backend got %d bytes, want the header and the %d-byte frame", len(got), len(frame))
			}
			// Header alone, then the frame in pieces; num_buffers
			// (unused on transmit) set by a sloppy driver is not
			// passed on.
			hdr := rxHeader(7)
			big := ethFrame(9000, 2)
			h.tx.Submit(virtiotest.Readable(hdr), virtiotest.Readable(big[:100]), virtiotest.Readable(big[100:]))
			h.tx.Wait()
			if got := h.be.next(t); !bytes.Equal(got, append(make([]byte, hdrSize), big...)) {
				t.Errorf("split frame: backend got %d bytes", len(got))
			}
			if s := h.dev.Stats(); s.TXFrames != 2 || s.TXDropped != 0 {
				t.Errorf("stats %+v", s)
			}
		})
	}
}

// Transmit chains that are not frames are returned unused and logged;
// nothing reaches the backend, and the device carries on.
func TestTransmitHostile(t *testing.T) {
	h := newHarness(t, all)
	zero := make([]byte, hdrSize)
	needsCsum := make([]byte, hdrSize)
	needsCsum[hdrFlags] = hdrFlagNeedsCsum
	gso := make([]byte, hdrSize)
	gso[hdrGSOType] = 1 // VIRTIO_NET_HDR_GSO_TCPV4
	for _, c := range []struct {
		name string
		bufs []virtiotest.Buf
		want string
	}{
		{"too long", []virtiotest.Buf{virtiotest.Readable(zero), virtiotest.Readable(ethFrame(maxFrameSize+1, 0))}, "longer than the largest"},
		{"writable buffer", []virtiotest.Buf{virtiotest.Readable(append(zero, ethFrame(60, 0)...)), virtiotest.Writable(16)}, "device-writable"},
		{"only writable", []virtiotest.Buf{virtiotest.Writable(100)}, "device-writable"},
		{"short header", []virtiotest.Buf{virtiotest.Readable(zero[:5])}, "shorter than"},
		{"no Ethernet header", []virtiotest.Buf{virtiotest.Readable(append(zero, 1, 2, 3))}, "shorter than"},
		{"checksum offload", []virtiotest.Buf{virtiotest.Readable(append(needsCsum, ethFrame(60, 0)...))}, "not negotiated"},
		{"segmentation offload", []virtiotest.Buf{virtiotest.Readable(append(gso, ethFrame(60, 0)...))}, "not negotiated"},
	} {
		r := h.tx.Submit(c.bufs...)
		if u := h.tx.Wait(); u.ID != r.Head || u.Len != 0 {
			t.Errorf("%s: used %+v", c.name, u)
		}
		if !h.logs.Contains(c.want) {
			t.Errorf("%s: no log line with %q in\n%s", c.name, c.want, logLines(h.logs))
		}
	}
	// A chain outside guest RAM.
	h.tx.SetDesc(12, memSize+4096, 100, 0, 0)
	h.tx.Publish(12)
	h.tx.Kick()
	if u := h.tx.Wait(); u.ID != 12 || u.Len != 0 {
		t.Errorf("chain outside RAM: used %+v", u)
	}
	h.be.quiet(t)
	if s := h.dev.Stats(); s.TXDropped != 8 || s.TXFrames != 0 {
		t.Errorf("stats %+v, want 8 dropped", s)
	}
	h.send(ethFrame(60, 3))
	h.be.next(t)
}

// A received frame lands in one buffer behind a header that says so.
func TestReceive(t *testing.T) {
	h := newHarness(t, all&^featureMrgRxbuf)
	rs := h.postRX(3, hdrSize+1518) // Linux's "small" buffers
	frame := ethFrame(100, 1)
	// DATA_VALID from the TAP is not passed on: this driver did not
	// negotiate VIRTIO_NET_F_GUEST_CSUM.
	hdr := make([]byte, hdrSize)
	hdr[hdrFlags] = hdrFlagDataValid
	h.be.feedWithHeader(hdr, frame)
	u := h.rx.Wait()
	if u.ID != rs[0].Head || u.Len != uint32(hdrSize+len(frame)) {
		t.Fatalf("used %+v, want ID %d, length %d", u, rs[0].Head, hdrSize+len(frame))
	}
	if got := rs[0].Writable(0)[:u.Len]; !bytes.Equal(got, append(rxHeader(1), frame...)) {
		t.Errorf("buffer holds %x", got[:hdrSize+16])
	}

	// Too big for a buffer without MRG_RXBUF: dropped, and the buffer
	// comes back empty. The next frame uses the next buffer.
	h.be.feed(ethFrame(1600, 2))
	if u := h.rx.Wait(); u.ID != rs[1].Head || u.Len != 0 {
		t.Errorf("oversized frame: used %+v, want the buffer back empty", u)
	}
	if !h.logs.Contains("does not fit") {
		t.Error("oversized frame not logged")
	}
	frame = ethFrame(1518, 3)
	h.be.feed(frame)
	if u := h.rx.Wait(); u.ID != rs[2].Head || !bytes.Equal(rs[2].Writable(0), append(rxHeader(1), frame...)) {
		t.Errorf("full-size frame: used %+v", u)
	}
	if s := h.dev.Stats(); s.RXFrames != 2 || s.RXDropped != 1 {
		t.Errorf("stats %+v", s)
	}
}

// With MRG_RXBUF a frame larger than a buffer spans several, all filled
// but the last, and the first one's header counts them.
func TestReceiveMergeable(t *testing.T) {
	h := newHarness(t, all)
	rs := h.postRX(4, 1024)
	frame := ethFrame(3000, 1)
	h.be.feed(frame)
	want := append(rxHeader(3), frame...)
	var got []byte
	for i, wantLen := range []uint32{1024, 1024, uint32(len(want) - 2048)} {
		u := h.rx.Wait()
		if u.ID != rs[i].Head || u.Len != wantLen {
			t.Fatalf("buffer %d: used %+v, want ID %d, length %d", i, u, rs[i].Head, wantLen)
		}
		got = append(got, rs[i].Writable(0)[:u.Len]...)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("the buffers do not hold header and frame")
	}
	// A small frame takes one buffer.
	frame = ethFrame(60, 2)
	h.be.feed(frame)
	if u := h.rx.Wait(); u.ID != rs[3].Head || !bytes.Equal(rs[3].Writable(0)[:u.Len], append(rxHeader(1), frame...)) {
		t.Errorf("small frame: used %+v", u)
	}

	// One buffer for a frame that needs two: the frame is dropped, the
	// buffer returned empty, rather than held until the driver adds
	// another.
	r := h.postRX(1, 1024)[0]
	h.be.feed(ethFrame(2000, 3))
	if u := h.rx.Wait(); u.ID != r.Head || u.Len != 0 {
		t.Errorf("too few buffers: used %+v", u)
	}
	if s := h.dev.Stats(); s.RXFrames != 2 || s.RXDropped != 1 {
		t.Errorf("stats %+v", s)
	}
}

// A frame that arrives while the guest has no buffers waits for them.
func TestReceiveWaitsForBuffers(t *testing.T) {
	h := newHarness(t, all)
	frames := [][]byte{ethFrame(70, 1), ethFrame(80, 2), ethFrame(90, 3)}
	for _, f := range frames {
		h.be.feed(f)
	}
	h.rx.Idle()
	for _, f := range frames {
		r := h.postRX(1, 2048)[0]
		if u := h.rx.Wait(); u.ID != r.Head || !bytes.Equal(r.Writable(0)[:u.Len], append(rxHeader(1), f...)) {
			t.Fatalf("used %+v: not the frame expected", u)
		}
	}
	if s := h.dev.Stats(); s.RXFrames != 3 || s.RXDropped != 0 {
		t.Errorf("stats %+v", s)
	}
}

// Receive chains that are not receive buffers are returned unused and
// the frame goes into the next good one.
func TestReceiveHostileBuffers(t *testing.T) {
	h := newHarness(t, all)
	bad1 := h.rx.Add(virtiotest.Readable([]byte("not for writing")), virtiotest.Writable(2048))
	bad2 := h.rx.Add(virtiotest.Writable(hdrSize - 1)) // MRG_RXBUF: too small for the header
	h.rx.SetDesc(14, memSize-100, 4096, virtiotest.DescWrite, 0)
	h.rx.Publish(14) // outside RAM
	good := h.postRX(1, 2048)[0]
	frame := ethFrame(200, 1)
	h.be.feed(frame)
	for _, want := range []uint16{bad1.Head, bad2.Head, 14} {
		if u := h.rx.Wait(); u.ID != want || u.Len != 0 {
			t.Errorf("bad buffer: used %+v, want ID %d back empty", u, want)
		}
	}
	if u := h.rx.Wait(); u.ID != good.Head || !bytes.Equal(good.Writable(0)[:u.Len], append(rxHeader(1), frame...)) {
		t.Errorf("good buffer: used %+v", u)
	}
	for _, s := range []string{"device-readable", "cannot hold the 12-byte header"} {
		if !h.logs.Contains(s) {
			t.Errorf("no log line with %q in\n%s", s, logLines(h.logs))
		}
	}
}

// Frames from the backend that cannot be delivered as they are: a partial
// checksum is finished, a frame left for segmentation refused.
func TestReceiveOffloadedFrames(t *testing.T) {
	h := newHarness(t, all)
	rs := h.postRX(2, 2048)
	want, partial, hdr := udpPacket()
	h.be.feedWithHeader(hdr, partial)
	if u := h.rx.Wait(); u.ID != rs[0].Head || !bytes.Equal(rs[0].Writable(0)[:u.Len], append(rxHeader(1), want...)) {
		t.Errorf("partial checksum not completed:\n got %x\nwant %x", rs[0].Writable(0)[hdrSize:hdrSize+len(want)], want)
	}
	gso := make([]byte, hdrSize)
	gso[hdrGSOType] = 4 // VIRTIO_NET_HDR_GSO_TCPV6
	h.be.feedWithHeader(gso, ethFrame(1000, 1))
	h.be.feed(ethFrame(60, 2))
	if u := h.rx.Wait(); u.ID != rs[1].Head || u.Len != hdrSize+60 {
		t.Errorf("after a GSO frame: used %+v", u)
	}
	if !h.logs.Contains("segmentation") {
		t.Error("GSO frame not logged")
	}
}

// udpPacket returns an Ethernet/IPv4/UDP frame with a correct checksum,
// the same frame with the checksum left partial, and the header that says
// so, as a kernel with checksum offload hands it over.
func udpPacket() (frame, partial, hdr []byte) {
	payload := []byte("hello, guest: an odd-length payload")
	udpLen := 8 + len(payload)
	f := ethFrame(ethHeaderSize, 0)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := []byte{0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	binary.BigEndian.PutUint16(ip[2:], uint16(20+udpLen))
	udp := binary.BigEndian.AppendUint16(nil, 5000)
	udp = binary.BigEndian.AppendUint16(udp, 6000)
	udp = binary.BigEndian.AppendUint16(udp, uint16(udpLen))
	udp = append(udp, 0, 0)
	udp = append(udp, payload...)
	// The pseudo-header's sum: addresses, protocol, UDP length; what
	// the kernel leaves in the checksum field.
	pseudo := uint32(0x0a00+0x0001) + uint32(0x0a00+0x0002) + 17 + uint32(udpLen)
	// The full checksum, computed here independently of the device.
	sum := pseudo
	data := append(slices.Clone(udp), 0) // pad to even length
	for i := 0; i+1 < len(data); i += 2 {
		sum += uint32(binary.BigEndian.Uint16(data[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(udp[6:], ^uint16(sum))
	frame = append(append(f, ip...), udp...)

	partial = slices.Clone(frame)
	binary.BigEndian.PutUint16(partial[ethHeaderSize+20+6:], uint16(pseudo))
	hdr = make([]byte, hdrSize)
	hdr[hdrFlags] = hdrFlagNeedsCsum
	binary.LittleEndian.PutUint16(hdr[hdrCsumStart:], ethHeaderSize+20)
	binary.LittleEndian.PutUint16(hdr[hdrCsumOffset:], 6)
	return frame, partial, hdr
}

func TestFromBackendChecks(t *testing.T) {
	for _, c := range []struct {
		name  string
		start uint16
		off   uint16
		n     int
		want  string
	}{
		{"checksum beyond the frame", 60, 0, 60, "outside"},
		{"checksum field across the end", 40, 19, 60, "outside"},
		{"runt", 0, 0, 10, "shorter"},
	} {
		pkt := make([]byte, hdrSize+c.n)
		pkt[hdrFlags] = hdrFlagNeedsCsum
		binary.LittleEndian.PutUint16(pkt[hdrCsumStart:], c.start)
		binary.LittleEndian.PutUint16(pkt[hdrCsumOffset:], c.off)
		if err := forGuest(pkt, 0); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v", c.name, err)
		}
	}
}

func TestControlQueue(t *testing.T) {
	h := newHarness(t, all)
	table := func(n uint32) []byte {
		return append(binary.LittleEndian.AppendUint32(nil, n), make([]byte, 6*n)...)
	}
	for _, c := range []struct {
		name       string
		class, cmd byte
		data       []byte
		want       byte
	}{
		{"announce ack", ctrlClassAnnounce, ctrlAnnounceAck, nil, ctrlOK},
		{"announce ack with data", ctrlClassAnnounce, ctrlAnnounceAck, []byte{1}, ctrlErr},
		{"promiscuous on", ctrlClassRX, ctrlRXPromisc, []byte{1}, ctrlOK},
		{"all-multicast off", ctrlClassRX, ctrlRXAllMulti, []byte{0}, ctrlOK},
		{"promiscuous without data", ctrlClassRX, ctrlRXPromisc, nil, ctrlErr},
		{"no broadcast (RX_EXTRA)", ctrlClassRX, 5, []byte{1}, ctrlErr},
		{"MAC tables", ctrlClassMAC, ctrlMACTableSet, append(table(1), table(2)...), ctrlOK},
		{"empty MAC tables", ctrlClassMAC, ctrlMACTableSet, append(table(0), table(0)...), ctrlOK},
		{"MAC tables, one missing", ctrlClassMAC, ctrlMACTableSet, table(1), ctrlErr},
		{"MAC tables, trailing bytes", ctrlClassMAC, ctrlMACTableSet, append(append(table(1), table(0)...), 9), ctrlErr},
		{"huge MAC table", ctrlClassMAC, ctrlMACTableSet, append(binary.LittleEndian.AppendUint32(nil, 1<<31), table(0)...), ctrlErr},
		{"MAC address set (not offered)", ctrlClassMAC, 1, testMAC, ctrlErr},
		{"VLAN", 2, 0, []byte{1, 0}, ctrlErr},
		{"multiqueue", 4, 0, []byte{1, 0}, ctrlErr},
		{"unknown class", 200, 0, nil, ctrlErr},
	} {
		if got := h.command(c.class, c.cmd, c.data); got != c.want {
			t.Errorf("%s: ack %d, want %d", c.name, got, c.want)
		}
	}

	if !h.logs.Contains("ANNOUNCE_ACK carries data") || !h.logs.Contains("unsupported command class 1, command 1") {
		t.Errorf("refused commands not logged:\n%s", logLines(h.logs))
	}
}

// Commands without the bytes a command needs.
func TestControlQueueHostile(t *testing.T) {
	h := newHarness(t, all)
	r := h.ctrl.Submit(virtiotest.Readable([]byte{ctrlClassAnnounce, ctrlAnnounceAck}))
	if u := h.ctrl.Wait(); u.ID != r.Head || u.Len != 0 {
		t.Errorf("command without ack: used %+v", u)
	}
	r = h.ctrl.Submit(virtiotest.Readable([]byte{ctrlClassAnnounce}), virtiotest.Writable(1))
	if u := h.ctrl.Wait(); u.Len != 1 || r.Writable(0)[0] != ctrlErr {
		t.Errorf("one-byte command: used %+v, ack %d", u, r.Writable(0)[0])
	}
	// A chain outside RAM whose last buffer is a sound ack byte: the
	// error goes there.
	ack := h.drv.Alloc(1, 1)
	h.ctrl.SetDesc(5, memSize+4096, 2, virtiotest.DescNext, 6)
	h.ctrl.SetDesc(6, uint64(ack), 1, virtiotest.DescWrite, 0)
	h.ctrl.Publish(5)
	h.ctrl.Kick()
	if u := h.ctrl.Wait(); u.ID != 5 || u.Len != 1 || h.drv.Peek(ack, 1)[0] != ctrlErr {
		t.Errorf("command outside RAM: used %+v", u)
	}
	if !h.logs.Contains("cannot be answered") || !h.logs.Contains("fewer than class and command") {
		t.Errorf("bad commands not logged:\n%s", logLines(h.logs))
	}
	if h.command(ctrlClassAnnounce, ctrlAnnounceAck, nil) != ctrlOK {
		t.Error("control queue broken")
	}
}

// Announce asks the guest to announce itself: the status bit and a
// configuration change interrupt, until the driver acknowledges. The
// device broadcasts a RARP for the guest's MAC either way.
func TestAnnounce(t *testing.T) {
	h := newHarness(t, all)
	gen := h.drv.Read32(virtio.RegConfigGeneration)
	h.drv.Ack()
	irqs := h.drv.Interrupts()
	if err := h.dev.Announce(); err != nil {
		t.Fatal(err)
	}
	checkRARP(t, h.be.next(t))
	if h.status() != statusLinkUp|statusAnnounce {
		t.Errorf("status %#x after Announce, want LINK_UP|ANNOUNCE", h.status())
	}
	if h.drv.Interrupts() != irqs+1 || h.drv.Ack() != virtio.InterruptConfigChange {
		t.Error("Announce raised no configuration change interrupt")
	}
	if h.drv.Read32(virtio.RegConfigGeneration) == gen {
		t.Error("ConfigGeneration did not change")
	}
	if ack := h.command(ctrlClassAnnounce, ctrlAnnounceAck, nil); ack != ctrlOK || h.status() != statusLinkUp {
		t.Errorf("after ANNOUNCE_ACK: ack %d, status %#x", ack, h.status())
	}

	// While paused, the interrupt waits for Resume.
	h.m.Pause()
	irqs = h.drv.Interrupts()
	h.dev.Announce()
	h.be.next(t)
	if h.drv.Interrupts() != irqs {
		t.Error("interrupt raised while paused")
	}
	h.m.Resume()
	if h.drv.Interrupts() != irqs+1 || h.status()&statusAnnounce == 0 {
		t.Error("no interrupt after Resume")
	}
}

func checkRARP(t *testing.T, p []byte) {
	t.Helper()
	if len(p) != hdrSize+60 || !bytes.Equal(p[:hdrSize], make([]byte, hdrSize)) {
		t.Fatalf("announcement of %d bytes: %x", len(p), p)
	}
	f := p[hdrSize:]
	if !bytes.Equal(f[:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}) || !bytes.Equal(f[6:12], testMAC) ||
		binary.BigEndian.Uint16(f[12:]) != 0x8035 || binary.BigEndian.Uint16(f[20:]) != 3 ||
		!bytes.Equal(f[22:28], testMAC) || !bytes.Equal(f[32:38], testMAC) {
		t.Errorf("not a RARP announcement for %v: %x", testMAC, f)
	}
}

// A driver without GUEST_ANNOUNCE is not asked; only the RARP goes out.
func TestAnnounceWithoutGuestSupport(t *testing.T) {
	h := newHarness(t, all&^featureGuestAnnounce)
	h.drv.Ack()
	irqs := h.drv.Interrupts()
	if err := h.dev.Announce(); err != nil {
		t.Fatal(err)
	}
	checkRARP(t, h.be.next(t))
	if h.status() != statusLinkUp || h.drv.Interrupts() != irqs {
		t.Errorf("status %#x, %d interrupts: the driver cannot acknowledge an announcement", h.status(), h.drv.Interrupts()-irqs)
	}
	if ack := h.command(ctrlClassAnnounce, ctrlAnnounceAck, nil); ack != ctrlErr {
		t.Errorf("ANNOUNCE_ACK without the feature: ack %d", ack)
	}
	h.be.mu.Lock()
	h.be.writeErr = errors.New("cable cut")
	h.be.mu.Unlock()
	if err := h.dev.Announce(); err == nil || !strings.Contains(err.Error(), "cable cut") {
		t.Errorf("Announce with a failing backend: %v", err)
	}
}

// §5.1.3.1: GUEST_ANNOUNCE needs CTRL_VQ; a driver that takes one
// without the other breaks the device.
func TestGuestAnnounceNeedsControlQueue(t *testing.T) {
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
	h.attach(newFakeBackend(), testMAC)
	h.drv.Negotiate(featureGuestAnnounce | featureStatus)
	h.drv.SetupQueue(0, 16)
	h.drv.SetupQueue(1, 16)
	h.drv.AddStatus(virtio.StatusDriverOK)
	if h.drv.Status()&virtio.StatusNeedsReset == 0 || !h.logs.Contains("without VIRTIO_NET_F_CTRL_VQ") {
		t.Errorf("status %#x: want DEVICE_NEEDS_RESET", h.drv.Status())
	}
}

// Pausing stops traffic both ways without losing any; Resume carries on.
func TestPauseResume(t *testing.T) {
	h := newHarness(t, all)
	rs := h.postRX(2, 2048)
	h.be.feed(ethFrame(60, 1))
	h.rx.Wait()

	h.m.Pause()
	rxFrame, txFrame := ethFrame(70, 2), ethFrame(80, 3)
	h.be.feed(rxFrame)
	h.tx.Submit(virtiotest.Readable(append(make([]byte, hdrSize), txFrame...)))
	h.rx.Idle()
	h.tx.Idle()
	h.be.quiet(t)
	h.m.Resume()

	if u := h.rx.Wait(); u.ID != rs[1].Head || !bytes.Equal(rs[1].Writable(0)[:u.Len], append(rxHeader(1), rxFrame...)) {
		t.Errorf("frame received during the pause: used %+v", u)
	}
	h.tx.Wait()
	if got := h.be.next(t); !bytes.Equal(got[hdrSize:], txFrame) {
		t.Error("frame sent during the pause lost")
	}
}

// A device saved (with an announcement not yet acknowledged) continues
// in a new one, on a new backend, from the same ring positions.
func TestSaveRestore(t *testing.T) {
	h := newHarness(t, all)
	rs := h.postRX(3, 2048)
	h.be.feed(ethFrame(60, 1))
	h.rx.Wait()
	h.send(ethFrame(60, 2))
	h.be.next(t)
	h.dev.Announce()
	h.be.next(t)

	h.m.Pause()
	h.dev.Detach()
	r := h.tx.Submit(virtiotest.Readable(append(make([]byte, hdrSize), ethFrame(90, 3)...))) // during the migration
	s, err := h.m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	if h.be.detaches != 1 {
		t.Error("Detach did not reach the backend")
	}
	h.m.Close()
	h.dev.Close()

	// The destination is configured with another MAC: the guest's wins.
	h.attach(newFakeBackend(), stdnet.HardwareAddr{0x02, 1, 2, 3, 4, 5})
	if err := h.m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	h.dev.Attach()
	h.m.Resume()
	if h.be.attaches != 1 {
		t.Error("Attach did not reach the backend")
	}
	if u := h.tx.Wait(); u.ID != r.Head {
		t.Errorf("transmit after restore: used %+v", u)
	}
	if got := h.be.next(t); !bytes.Equal(got[hdrSize:], ethFrame(90, 3)) {
		t.Error("frame queued during the migration not sent")
	}
	frame := ethFrame(100, 4)
	h.be.feed(frame)
	if u := h.rx.Wait(); u.ID != rs[1].Head || !bytes.Equal(rs[1].Writable(0)[:u.Len], append(rxHeader(1), frame...)) {
		t.Errorf("receive after restore: used %+v", u)
	}
	if !bytes.Equal(h.config()[:6], testMAC) || h.status() != statusLinkUp|statusAnnounce {
		t.Errorf("config after restore %x: want the guest's MAC and the pending announcement", h.config())
	}
	if h.command(ctrlClassAnnounce, ctrlAnnounceAck, nil) != ctrlOK || h.status() != statusLinkUp {
		t.Error("the restored announcement cannot be acknowledged")
	}
}

func TestRestoreStateChecks(t *testing.T) {
	d := New(Config{Backend: newFakeBackend(), MAC: testMAC})
	for _, c := range []struct{ state, want string }{
		{`{"MAC":"52:54:00:12:34:56","Status":5}`, "unknown bits"},
		{`{"MAC":"52:54:00:12:34:56","Status":2}`, "link down"},
		{`{"MAC":"33:33:00:00:00:01","Status":1}`, "multicast"},
		{`{"MAC":"","Status":1}`, "invalid MAC"},
		{`[1]`, "cannot unmarshal"},
	} {
		if err := d.RestoreState([]byte(c.state)); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("RestoreState(%s) = %v, want an error containing %q", c.state, err, c.want)
		}
	}
	if s, _ := d.SaveState(); string(s) != `{"MAC":"52:54:00:12:34:56","Status":1}` {
		t.Errorf("state after refused restores: %s", s)
	}
	// An announcement restored for a driver that cannot acknowledge it
	// is dropped when the device starts.
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
	h.attach(newFakeBackend(), testMAC)
	if err := h.dev.RestoreState([]byte(`{"MAC":"52:54:00:12:34:56","Status":3}`)); err != nil {
		t.Fatal(err)
	}
	h.drv.Init(all&^featureGuestAnnounce, 16, 16, 8)
	if h.status() != statusLinkUp {
		t.Errorf("status %#x", h.status())
	}
}

// A device reset must not wait for the backend, which may never deliver
// another frame, nor for the guest's receive buffers.
func TestResetIsPrompt(t *testing.T) {
	h := newHarness(t, all)
	h.be.feed(ethFrame(60, 1)) // held: no receive buffers
	waitFor(t, "the frame to be taken", func() bool { return len(h.be.in) == 0 })
	done := make(chan struct{})
	go func() {
		h.drv.Reset() // the reader is blocked in ReadFrame meanwhile
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Second):
		t.Fatal("Reset blocked")
	}
	waitFor(t, "the held frame to count as dropped", func() bool { return h.dev.Stats().RXDropped == 1 })
	// Frames that come with no driver are dropped; a new driver gets
	// the frames after it.
	h.be.feed(ethFrame(60, 2))
	waitFor(t, "the frame without driver to be dropped", func() bool { return h.dev.Stats().RXDropped == 2 })
	qs := h.drv.Init(all, 16, 16, 8)
	h.rx = qs[0]
	r := h.postRX(1, 2048)[0]
	frame := ethFrame(60, 3)
	h.be.feed(frame)
	if u := h.rx.Wait(); !bytes.Equal(r.Writable(0)[:u.Len], append(rxHeader(1), frame...)) {
		t.Error("frame after the reset not received")
	}
	closed := make(chan struct{})
	go func() {
		h.m.Close()
		h.dev.Close()
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(2 * time.Second):
		t.Fatal("Close blocked")
	}
}

// Backend failures are logged; the device keeps serving the guest.
func TestBackendErrors(t *testing.T) {
	h := newHarness(t, all)
	h.be.mu.Lock()
	h.be.writeErr = errors.New("TAP gvtap0: write: the interface is down")
	h.be.mu.Unlock()
	h.send(ethFrame(60, 1))
	if !h.logs.Contains("the interface is down") {
		t.Error("write error not logged")
	}
	h.be.readErr <- errors.New("TAP gvtap0: read: the interface no longer exists")
	waitFor(t, "the read error to be logged", func() bool { return h.logs.Contains("receiving stopped") })
	h.be.mu.Lock()
	h.be.writeErr = nil
	h.be.mu.Unlock()
	h.send(ethFrame(60, 2))
	h.be.next(t)
	if h.command(ctrlClassRX, ctrlRXPromisc, []byte{1}) != ctrlOK {
		t.Error("control queue broken")
	}
	if s := h.dev.Stats(); s.TXDropped != 1 || s.TXFrames != 1 {
		t.Errorf("stats %+v", s)
	}
}

// Received frames reach the dirty log, and so the destination of a live
// migration.
func TestReceiveMarksDirty(t *testing.T) {
	h := newHarness(t, all)
	h.drv.Alloc(1, 4096)
	dirty := virtiotest.TrackDirty(t, h.mem)
	rs := h.postRX(3, 4096)
	h.be.feed(ethFrame(9000, 1))
	for range 3 {
		h.rx.Wait()
	}
	got := dirty()
	for _, r := range rs {
		if p := r.WritableGPA(0) &^ 0xfff; !slices.Contains(got, p) {
			t.Errorf("page %#x of a receive buffer not dirty (dirty: %#x)", p, got)
		}
	}
}
