package net

import (
	"bytes"
	"encoding/binary"
	"slices"
	"sync"
	"testing"

	"govmm/devices/tap"
	"govmm/devices/tap/taptest"
	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
)

// offloadBackend is a fake backend that supports offloads, as a TAP does,
// and records what the device sets.
type offloadBackend struct {
	*fakeBackend
	supported tap.Offloads

	mu  sync.Mutex
	set []tap.Offloads // every SetOffloads, in order
}

func (b *offloadBackend) SupportedOffloads() tap.Offloads { return b.supported }

func (b *offloadBackend) SetOffloads(o tap.Offloads) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.set = append(b.set, o)
	return nil
}

// last is the offloads set last, and whether any were.
func (b *offloadBackend) last() (tap.Offloads, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.set) == 0 {
		return 0, false
	}
	return b.set[len(b.set)-1], true
}

const (
	allTAPOffloads = tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSO6 | tap.OffloadTSOECN
	allOffloads    = featureCsum | featureGuestCsum | featureHostTSO4 | featureHostTSO6 | featureHostECN |
		featureGuestTSO4 | featureGuestTSO6 | featureGuestECN
	guestOffloads = featureGuestCsum | featureGuestTSO4 | featureGuestTSO6 | featureGuestECN
)

// newOffloadHarness starts a device on an offloadBackend supporting all
// offloads, negotiating want.
func newOffloadHarness(t *testing.T, want uint64) (*harness, *offloadBackend) {
	mem := virtiotest.NewMemory(t, memSize)
	h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
	be := &offloadBackend{fakeBackend: newFakeBackend(), supported: allTAPOffloads}
	h.attachBackend(be, be.fakeBackend, testMAC)
	h.start(want)
	return h, be
}

// Offloads are offered as the backend supports them, never on a backend
// that does not say (TestFeaturesAndConfig).
func TestOffloadFeatures(t *testing.T) {
	for _, c := range []struct {
		supported tap.Offloads
		want      uint64
	}{
		{0, 0},
		{tap.OffloadCsum, featureCsum | featureGuestCsum},
		{tap.OffloadCsum | tap.OffloadTSO4, featureCsum | featureGuestCsum | featureHostTSO4 | featureGuestTSO4},
		{allTAPOffloads, allOffloads},
		{tap.OffloadTSO4 | tap.OffloadTSO6, 0},                                // TSO needs checksums
		{tap.OffloadCsum | tap.OffloadTSOECN, featureCsum | featureGuestCsum}, // ECN needs TSO
	} {
		be := &offloadBackend{fakeBackend: newFakeBackend(), supported: c.supported}
		if got := New(Config{Backend: be}).Features(); got != alwaysOffered|c.want {
			t.Errorf("supported %#x: features %#x, want %#x", c.supported, got, alwaysOffered|c.want)
		}
	}
}

// The TAP is told to hand over what the driver accepted, no more, and
// nothing once the driver is gone.
func TestOffloadsFollowFeatures(t *testing.T) {
	h, be := newOffloadHarness(t, all)
	for _, c := range []struct {
		want uint64
		tap  tap.Offloads
	}{
		{all, allTAPOffloads},
		{all &^ (guestOffloads &^ featureGuestCsum), tap.OffloadCsum},
		{all &^ (featureGuestTSO4 | featureGuestECN), tap.OffloadCsum | tap.OffloadTSO6},
		{all &^ guestOffloads, 0}, // transmit offloads only
	} {
		h.start(c.want)
		if got, _ := be.last(); got != c.tap {
			t.Errorf("features %#x: TAP offloads %#x, want %#x", c.want, got, c.tap)
		}
		h.drv.Reset()
		if got, _ := be.last(); got != 0 {
			t.Errorf("after reset: TAP offloads %#x, want 0", got)
		}
	}
}

// §5.1.3.1: a driver that takes an offload without the one it needs
// breaks the device.
func TestOffloadDependencies(t *testing.T) {
	for _, c := range []struct {
		features uint64
		want     string
	}{
		{featureGuestTSO4, "GUEST_TSO4 without VIRTIO_NET_F_GUEST_CSUM"},
		{featureCsum | featureHostECN, "HOST_ECN without"},
		{featureGuestCsum | featureGuestECN, "GUEST_ECN without"},
	} {
		mem := virtiotest.NewMemory(t, memSize)
		h := &harness{t: t, mem: mem, drv: virtiotest.New(t, mem, 0x1000, memSize), logs: &virtiotest.LogRecorder{}}
		be := &offloadBackend{fakeBackend: newFakeBackend(), supported: allTAPOffloads}
		h.attachBackend(be, be.fakeBackend, testMAC)
		h.drv.Negotiate(c.features)
		h.drv.SetupQueue(0, 16)
		h.drv.SetupQueue(1, 16)
		h.drv.AddStatus(virtio.StatusDriverOK)
		if h.drv.Status()&virtio.StatusNeedsReset == 0 || !h.logs.Contains(c.want) {
			t.Errorf("features %#x: status %#x, want DEVICE_NEEDS_RESET and a log with %q in\n%s",
				c.features, h.drv.Status(), c.want, logLines(h.logs))
		}
	}
}

// tsoHeader is the header of a TCP/IPv4 frame from taptest.TCPv4 left
// for segmentation into mss-byte segments.
func tsoHeader(start, off, mss uint16) header {
	return header{
		flags: hdrFlagNeedsCsum, gsoType: gsoTCPv4,
		hdrLen: 54, gsoSize: mss, csumStart: start, csumOffset: off,
	}
}

func (h header) bytes() []byte {
	b := make([]byte, hdrSize)
	h.put(b)
	return b
}

// The guest's header reaches the backend as the guest wrote it, less
// what has no meaning: num_buffers, unknown flags, and the fields of an
// offload not asked for.
func TestTransmitOffloadHeader(t *testing.T) {
	h, _ := newOffloadHarness(t, all)
	frame, start, off := taptest.TCPv4(testMAC, peerMAC, 60000)
	hdr := tsoHeader(start, off, 1448)
	hdr.gsoType |= gsoECN
	sent := hdr
	sent.numBuffers = 5 // unused on transmit
	sent.flags |= 0x40  // unknown: ignored (§5.1.6.2.2)
	h.tx.Submit(virtiotest.Readable(sent.bytes()), virtiotest.Readable(frame))
	h.tx.Wait()
	if got := h.be.next(t); !bytes.Equal(got[:hdrSize], hdr.bytes()) || !bytes.Equal(got[hdrSize:], frame) {
		t.Errorf("backend got header %x and %d bytes; want %x and the %d-byte frame", got[:hdrSize], len(got)-hdrSize, hdr.bytes(), len(frame))
	}

	// A checksum only: gso_size and hdr_len mean nothing.
	small, _, _ := taptest.TCPv4(testMAC, peerMAC, 100)
	sent = header{flags: hdrFlagNeedsCsum, csumStart: start, csumOffset: off, gsoSize: 99, hdrLen: 3000}
	h.tx.Submit(virtiotest.Readable(append(sent.bytes(), small...)))
	h.tx.Wait()
	want := header{flags: hdrFlagNeedsCsum, csumStart: start, csumOffset: off}
	if got := h.be.next(t); !bytes.Equal(got[:hdrSize], want.bytes()) {
		t.Errorf("checksum only: header %x, want %x", got[:hdrSize], want.bytes())
	}
}

// Headers the negotiated features do not allow, or that do not fit the
// frame, are refused: the frame is dropped and logged, the chain
// returned, and the device carries on.
func TestTransmitOffloadHostile(t *testing.T) {
	h, _ := newOffloadHarness(t, all&^(featureHostTSO6|featureHostECN))
	frame, start, off := taptest.TCPv4(testMAC, peerMAC, 3000)
	tso := tsoHeader(start, off, 1448)
	with := func(change func(*header)) header {
		hdr := tso
		change(&hdr)
		return hdr
	}
	cases := []struct {
		name string
		hdr  header
		want string
	}{
		{"DATA_VALID", with(func(h *header) { h.flags |= hdrFlagDataValid }), "DATA_VALID"},
		{"RSC_INFO", header{flags: hdrFlagRSCInfo}, "RSC_INFO"},
		{"checksum beyond the frame", header{flags: hdrFlagNeedsCsum, csumStart: uint16(len(frame)) - 10, csumOffset: 9}, "outside"},
		{"GSO without NEEDS_CSUM", with(func(h *header) { h.flags = 0 }), "without NEEDS_CSUM"},
		{"gso_size 0", with(func(h *header) { h.gsoSize = 0 }), "gso_size 0"},
		{"hdr_len beyond the frame", with(func(h *header) { h.hdrLen = uint16(len(frame)) + 1 }), "hdr_len"},
		{"UFO", with(func(h *header) { h.gsoType = 3 }), "no kind of segmentation"},
		{"ECN alone", with(func(h *header) { h.gsoType = gsoECN }), "no kind of segmentation"},
		{"ECN not negotiated", with(func(h *header) { h.gsoType |= gsoECN }), "not negotiated"},
		{"TSO6 not negotiated", with(func(h *header) { h.gsoType = gsoTCPv6 }), "not negotiated"},
	}
	for _, c := range cases {
		r := h.tx.Submit(virtiotest.Readable(append(c.hdr.bytes(), frame...)))
		if u := h.tx.Wait(); u.ID != r.Head || u.Len != 0 {
			t.Errorf("%s: used %+v", c.name, u)
		}
		if !h.logs.Contains(c.want) {
			t.Errorf("%s: no log line with %q in\n%s", c.name, c.want, logLines(h.logs))
		}
	}
	h.be.quiet(t)
	if s := h.dev.Stats(); s.TXDropped != uint64(len(cases)) || s.TXFrames != 0 {
		t.Errorf("stats %+v, want %d dropped", s, len(cases))
	}
	h.tx.Submit(virtiotest.Readable(append(tso.bytes(), frame...)))
	h.tx.Wait()
	h.be.next(t)
}

// gsoFrame is a 60000-byte TCP segment as a TAP with TSO hands it over:
// the header, then the frame.
func gsoFrame() (hdr header, frame []byte) {
	frame, start, off := taptest.TCPv4(peerMAC, testMAC, 60000)
	return tsoHeader(start, off, 1448), frame
}

// A 60 KiB segment from the TAP reaches a guest that takes TSO whole,
// across as many merged buffers as it needs, its header passed through
// with num_buffers counting them.
func TestReceiveOffloadHeader(t *testing.T) {
	h, _ := newOffloadHarness(t, all)
	const bufSize = 4096
	rs := h.postRX(16, bufSize)
	hdr, frame := gsoFrame()
	h.be.feedWithHeader(hdr.bytes(), frame)
	n := (hdrSize + len(frame) + bufSize - 1) / bufSize
	var got []byte
	for i := range n {
		u := h.rx.Wait()
		if u.ID != rs[i].Head {
			t.Fatalf("buffer %d: used %+v, want ID %d", i, u, rs[i].Head)
		}
		got = append(got, rs[i].Writable(0)[:u.Len]...)
	}
	want := hdr
	want.numBuffers = uint16(n)
	if !bytes.Equal(got[:hdrSize], want.bytes()) || !bytes.Equal(got[hdrSize:], frame) {
		t.Errorf("guest got header %x and %d bytes; want %x and the %d-byte frame", got[:hdrSize], len(got)-hdrSize, want.bytes(), len(frame))
	}

	// A verified checksum is the guest's to know with GUEST_CSUM.
	small := ethFrame(60, 1)
	h.be.feedWithHeader(header{flags: hdrFlagDataValid}.bytes(), small)
	if u := h.rx.Wait(); !bytes.Equal(rs[n].Writable(0)[:u.Len], append(header{flags: hdrFlagDataValid, numBuffers: 1}.bytes(), small...)) {
		t.Errorf("DATA_VALID not passed on: %x", rs[n].Writable(0)[:hdrSize])
	}
}

// Without MRG_RXBUF, Linux's "big packets" mode posts one chain of a
// header buffer and MAX_SKB_FRAGS pages for every frame: a 60 KiB
// segment fills one.
func TestReceiveOffloadBigPackets(t *testing.T) {
	h, _ := newOffloadHarness(t, all&^featureMrgRxbuf)
	// A chain is no longer than its queue (§2.7.5.3.1): Linux's
	// receive queues have 256 entries.
	h.rx = h.drv.Init(all&^featureMrgRxbuf, 32, 16, 8)[0]
	bufs := []virtiotest.Buf{virtiotest.Writable(hdrSize)}
	for range 17 {
		bufs = append(bufs, virtiotest.Writable(4096))
	}
	h.rx.Indirect = true
	r := h.rx.Add(bufs...)
	h.rx.Kick()
	hdr, frame := gsoFrame()
	h.be.feedWithHeader(hdr.bytes(), frame)
	u := h.rx.Wait()
	var got []byte
	for i := range bufs {
		got = append(got, r.Writable(i)...)
	}
	want := hdr
	want.numBuffers = 1
	if u.ID != r.Head || int(u.Len) != hdrSize+len(frame) || !bytes.Equal(got[:u.Len], append(want.bytes(), frame...)) {
		t.Errorf("used %+v, header %x; want the header and the %d-byte frame in chain %d", u, got[:hdrSize], len(frame), r.Head)
	}
}

// What the guest did not negotiate is not passed on: a frame left for
// segmentation is refused, a partial checksum finished (for a guest
// without GUEST_CSUM, TestReceiveOffloadedFrames) or passed on.
func TestReceiveOffloadNotNegotiated(t *testing.T) {
	h, _ := newOffloadHarness(t, all&^(guestOffloads&^featureGuestCsum))
	rs := h.postRX(2, 2048)
	hdr, frame := gsoFrame()
	h.be.feedWithHeader(hdr.bytes(), frame)
	_, partial, csum := udpPacket()
	h.be.feedWithHeader(csum, partial)
	u := h.rx.Wait()
	want := append(slices.Clone(csum), partial...)
	binary.LittleEndian.PutUint16(want[hdrNumBuffers:], 1)
	if u.ID != rs[0].Head || !bytes.Equal(rs[0].Writable(0)[:u.Len], want) {
		t.Errorf("partial checksum: used %+v, header %x, want %x", u, rs[0].Writable(0)[:hdrSize], want[:hdrSize])
	}
	if !h.logs.Contains("left for segmentation") {
		t.Errorf("GSO frame not refused:\n%s", logLines(h.logs))
	}
}

// The features travel with the transport's state; the destination's
// Activate sets its TAP's offloads from them. The source, detached, leaves
// the interface's offloads to the destination when it closes.
func TestOffloadsAfterRestore(t *testing.T) {
	h, source := newOffloadHarness(t, all&^featureGuestTSO6)
	want := tap.OffloadCsum | tap.OffloadTSO4 | tap.OffloadTSOECN
	h.m.Pause()
	h.dev.Detach()
	s, err := h.m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	h.m.Close()
	h.dev.Close()
	if got, _ := source.last(); got != want {
		t.Errorf("the detached source's close changed the TAP's offloads to %#x", got)
	}

	dest := &offloadBackend{fakeBackend: newFakeBackend(), supported: allTAPOffloads}
	h.attachBackend(dest, dest.fakeBackend, testMAC)
	if err := h.m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if got, ok := dest.last(); !ok || got != want {
		t.Errorf("destination's TAP offloads %#x (set: %v), want %#x", got, ok, want)
	}
	h.m.Resume()
	hdr, frame := gsoFrame()
	h.postRX(16, 4096)
	h.be.feedWithHeader(hdr.bytes(), frame)
	h.rx.Wait()
	if s := h.dev.Stats(); s.RXFrames != 1 {
		t.Errorf("GSO frame after the restore: stats %+v", s)
	}
}
