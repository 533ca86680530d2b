package virtio_test

import (
	"encoding/binary"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
	"govmm/vmm"
)

// Linux's probe (virtio_mmio.c vm_probe) checks these before anything else.
func TestIdentityRegisters(t *testing.T) {
	h := newHarness(t, newEcho(256, 64))
	d := h.drv
	for _, c := range []struct {
		name string
		off  uint64
		want uint32
	}{
		{"MagicValue", virtio.RegMagicValue, 0x74726976},
		{"Version", virtio.RegVersion, 2},
		{"DeviceID", virtio.RegDeviceID, 42},
		{"VendorID", virtio.RegVendorID, virtio.VendorID},
		{"Status", virtio.RegStatus, 0},
		{"ConfigGeneration", virtio.RegConfigGeneration, 0},
		{"SHMLenLow", virtio.RegSHMLenLow, 0xffffffff},
	} {
		if got := d.Read32(c.off); got != c.want {
			t.Errorf("%s = %#x, want %#x", c.name, got, c.want)
		}
	}
	if got, want := d.DeviceFeatures(), uint64(1<<0|1<<5)|virtio.FeatureVersion1|virtio.FeatureIndirectDesc|virtio.FeatureEventIdx; got != want {
		t.Errorf("DeviceFeatures = %#x, want %#x", got, want)
	}
	d.Write32(virtio.RegDeviceFeaturesSel, 2)
	if got := d.Read32(virtio.RegDeviceFeatures); got != 0 {
		t.Errorf("DeviceFeatures word 2 = %#x, want 0", got)
	}
	for sel, want := range []uint32{256, 64, 0} {
		d.Write32(virtio.RegQueueSel, uint32(sel))
		if got := d.Read32(virtio.RegQueueNumMax); got != want {
			t.Errorf("queue %d: QueueNumMax = %d, want %d", sel, got, want)
		}
		if got := d.Read32(virtio.RegQueueReady); got != 0 {
			t.Errorf("queue %d: QueueReady = %d after reset", sel, got)
		}
	}
	if h.m.NumQueues() != 2 || h.m.DeviceType() != 42 {
		t.Errorf("NumQueues %d, DeviceType %v", h.m.NumQueues(), h.m.DeviceType())
	}
}

// The device config space starts at 0x100 and takes accesses of any
// width; bytes past its end read as 0, writes there are dropped.
func TestConfigSpace(t *testing.T) {
	h := newHarness(t, newEcho(16))
	read := func(off uint64, n int) []byte {
		b := make([]byte, n)
		h.m.Read(virtio.RegConfig+off, b)
		return b
	}
	if got := read(0, 1); got[0] != 1 {
		t.Errorf("config byte 0 = %d", got[0])
	}
	if got := binary.LittleEndian.Uint16(read(2, 2)); got != 0x0403 {
		t.Errorf("config le16 at 2 = %#x", got)
	}
	if got := binary.LittleEndian.Uint32(read(8, 4)); got != 0x0a09 {
		t.Errorf("config le32 at 8 (crossing the end) = %#x, want 0xa09", got)
	}
	if got := binary.LittleEndian.Uint32(read(0xf0, 4)); got != 0 {
		t.Errorf("config beyond the end = %#x", got)
	}
	h.m.Write(virtio.RegConfig+4, []byte{0xaa, 0xbb})
	h.m.Write(virtio.RegConfig+9, []byte{1, 2, 3, 4}) // crosses the end: dropped
	h.dev.mu.Lock()
	got := h.dev.configWrite
	h.dev.mu.Unlock()
	if string(got) != "\x04\xaa\xbb" {
		t.Errorf("device saw config write %x, want offset 4 data aabb only", got)
	}
	if !h.logs.Contains("outside the 10-byte config space") {
		t.Error("config write outside the space not logged")
	}
}

// Control registers take aligned 32-bit accesses only; anything else is
// ignored and logged, never a crash.
func TestBadRegisterAccesses(t *testing.T) {
	h := newHarness(t, newEcho(16))
	b := []byte{0xff, 0xff}
	h.m.Read(virtio.RegMagicValue, b)
	if b[0] != 0 || b[1] != 0 {
		t.Errorf("2-byte read of MagicValue = %x, want zeros", b)
	}
	b8 := make([]byte, 8)
	h.m.Read(virtio.RegMagicValue, b8)
	if binary.LittleEndian.Uint64(b8) != 0 {
		t.Errorf("8-byte read = %x", b8)
	}
	b4 := make([]byte, 4)
	h.m.Read(virtio.RegMagicValue+1, b4)
	if binary.LittleEndian.Uint32(b4) != 0 {
		t.Errorf("unaligned read = %x", b4)
	}
	h.m.Write(virtio.RegStatus, []byte{virtio.StatusAcknowledge}) // 1-byte write
	h.drv.Write32(virtio.RegMagicValue, 0)                        // read-only
	h.drv.Write32(0x0e0, 1)                                       // unknown
	if h.drv.Status() != 0 || h.drv.Read32(virtio.RegMagicValue) != 0x74726976 {
		t.Error("a bad write changed a register")
	}
	h.drv.Read32(virtio.RegQueueNotify) // write-only
	if !h.logs.Contains("1-byte write at 0x70 ignored") || !h.logs.Contains("read of write-only or unknown register 0x50") {
		t.Errorf("bad accesses not logged: %q", h.logs.Lines())
	}
}

// Random register traffic must never panic or hang the transport, whatever
// order of statuses, queue setups and notifications it produces.
func TestRandomRegisterAccesses(t *testing.T) {
	h := newHarness(t, newEcho(16, 8))
	rng := rand.New(rand.NewPCG(1, 2))
	regs := []uint64{
		virtio.RegStatus, virtio.RegQueueSel, virtio.RegQueueNum, virtio.RegQueueReady,
		virtio.RegQueueNotify, virtio.RegInterruptACK, virtio.RegDriverFeatures,
		virtio.RegDriverFeaturesSel, virtio.RegQueueDescLow, virtio.RegQueueDriverLow,
		virtio.RegQueueDeviceLow, virtio.RegQueueDescHigh, virtio.RegConfig + 3,
	}
	for range 20000 {
		off := regs[rng.IntN(len(regs))]
		if rng.IntN(10) == 0 {
			off = rng.Uint64N(virtio.MMIOSize)
		}
		v := rng.Uint64()
		if rng.IntN(2) == 0 {
			v = uint64(rng.IntN(16)) << (rng.IntN(4) * 8) // small values hit more paths
		}
		data := binary.LittleEndian.AppendUint64(nil, v)[:[]int{1, 2, 4, 8}[rng.IntN(4)]]
		if rng.IntN(3) == 0 {
			h.m.Read(off, data)
		} else {
			h.m.Write(off, data)
		}
	}
	h.m.Notify(-1)
	h.m.Notify(1 << 30)
}

func TestFeatureNegotiation(t *testing.T) {
	offered := uint64(1<<0|1<<5) | virtio.FeatureVersion1 | virtio.FeatureIndirectDesc | virtio.FeatureEventIdx
	for _, c := range []struct {
		name     string
		features uint64
		ok       bool
	}{
		{"all offered", offered, true},
		{"version 1 only", virtio.FeatureVersion1, true},
		{"not offered", virtio.FeatureVersion1 | 1<<3, false},
		{"high word not offered", virtio.FeatureVersion1 | 1<<40, false},
		{"without VERSION_1", 1 << 0, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, newEcho(16))
			d := h.drv
			d.AddStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
			d.WriteDriverFeatures(c.features)
			d.AddStatus(virtio.StatusFeaturesOK)
			if got := d.Status()&virtio.StatusFeaturesOK != 0; got != c.ok {
				t.Fatalf("FEATURES_OK = %v, want %v (status %#x)", got, c.ok, d.Status())
			}
			if !c.ok {
				return
			}
			d.WriteDriverFeatures(virtio.FeatureVersion1) // after FEATURES_OK: ignored
			d.SetupQueue(0, 0)
			d.AddStatus(virtio.StatusDriverOK)
			h.dev.mu.Lock()
			got := h.dev.activations
			h.dev.mu.Unlock()
			if len(got) != 1 || got[0] != c.features {
				t.Errorf("Activate calls %#x, want one with %#x", got, c.features)
			}
		})
	}
}

func TestStatusRules(t *testing.T) {
	h := newHarness(t, newEcho(16))
	d := h.drv
	d.AddStatus(virtio.StatusAcknowledge | virtio.StatusDriver)
	d.SetupQueue(0, 0)
	d.AddStatus(virtio.StatusDriverOK) // without FEATURES_OK
	if d.Status()&virtio.StatusDriverOK != 0 {
		t.Error("DRIVER_OK accepted without FEATURES_OK")
	}
	if n, _, _ := h.dev.counts(); n != 0 {
		t.Error("device activated without FEATURES_OK")
	}
	d.Write32(virtio.RegStatus, uint32(virtio.StatusAcknowledge)) // clears DRIVER
	if d.Status() != virtio.StatusAcknowledge|virtio.StatusDriver {
		t.Errorf("status %#x after an attempt to clear a bit", d.Status())
	}
	d.Write32(virtio.RegStatus, uint32(virtio.StatusAcknowledge|virtio.StatusDriver|0x10)) // reserved bit
	d.Write32(virtio.RegStatus, 0x103)
	if d.Status() != virtio.StatusAcknowledge|virtio.StatusDriver {
		t.Errorf("status %#x after writes with reserved bits", d.Status())
	}
}

func TestEcho(t *testing.T) {
	for _, indirect := range []bool{false, true} {
		for _, eventIdx := range []bool{false, true} {
			name := map[bool]string{false: "direct", true: "indirect"}[indirect] +
				map[bool]string{false: "", true: "+event-idx"}[eventIdx]
			t.Run(name, func(t *testing.T) {
				h := newHarness(t, newEcho(16, 16))
				var want uint64 = virtio.FeatureIndirectDesc
				if eventIdx {
					want |= virtio.FeatureEventIdx
				}
				qs := h.drv.Init(want, 8, 4)
				for _, q := range qs {
					q.Indirect = indirect
				}
				for i := range 40 { // wraps both rings several times
					h.roundTrip(qs[i%2], "hello, virtio "+string(rune('a'+i%26)))
				}
				if h.drv.Interrupts() == 0 {
					t.Error("no interrupt raised")
				}
				if s := h.drv.Ack(); s != virtio.InterruptUsedBuffer {
					t.Errorf("InterruptStatus = %#x, want used buffer", s)
				}
				if s := h.drv.Read32(virtio.RegInterruptStatus); s != 0 {
					t.Errorf("InterruptStatus = %#x after ACK", s)
				}
			})
		}
	}
}

// A chain split over descriptors in any way is one byte range (§2.6.4).
func TestEchoFraming(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(0, 0)[0]
	r := q.Submit(virtiotest.Readable([]byte("ab")), virtiotest.Readable([]byte("cde")),
		virtiotest.Writable(1), virtiotest.Writable(4))
	if u := q.Wait(); u.Len != 5 || string(r.Writable(0))+string(r.Writable(1)) != "edcba" {
		t.Fatalf("used %+v, buffers %q %q", u, r.Writable(0), r.Writable(1))
	}
}

func TestReset(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(virtio.FeatureEventIdx, 8)[0]
	h.roundTrip(q, "before reset")
	h.drv.Reset()
	if _, resets, _ := h.dev.counts(); resets != 1 {
		t.Errorf("device reset %d times, want 1", resets)
	}
	h.drv.Write32(virtio.RegQueueSel, 0)
	if h.drv.Status() != 0 || h.drv.Read32(virtio.RegQueueReady) != 0 || h.drv.Read32(virtio.RegInterruptStatus) != 0 {
		t.Error("registers not reset")
	}
	// Linux unbinding: QueueReady=0 after the reset, then read back.
	h.drv.Write32(virtio.RegQueueReady, 0)
	// A notification after the reset reaches nobody.
	h.m.Notify(0)
	// And the driver can start over, with fresh rings.
	q = h.drv.Init(0, 4)[0]
	h.roundTrip(q, "after reset")
	if n, _, _ := h.dev.counts(); n != 2 {
		t.Errorf("%d activations, want 2", n)
	}
}

// A reset waits for the requests in flight: when the status write
// returns, the device no longer touches guest memory.
func TestResetWaitsForRequests(t *testing.T) {
	dev := newEcho(16)
	dev.hold, dev.popped = make(chan struct{}), make(chan struct{}, 1)
	h := newHarness(t, dev)
	q := h.drv.Init(0, 0)[0]
	q.Submit(virtiotest.Readable([]byte("x")), virtiotest.Writable(1))
	<-dev.popped
	done := make(chan struct{})
	go func() { h.drv.Reset(); close(done) }()
	select {
	case <-done:
		t.Fatal("reset returned with a request in flight")
	case <-time.After(20 * time.Millisecond):
	}
	dev.hold <- struct{}{}
	<-done
}

func TestBadQueueSetup(t *testing.T) {
	for _, c := range []struct {
		name  string
		setup func(d *virtiotest.Driver, q *virtiotest.Queue)
	}{
		{"size not a power of two", func(d *virtiotest.Driver, q *virtiotest.Queue) { d.Write32(virtio.RegQueueNum, 6) }},
		{"size above the maximum", func(d *virtiotest.Driver, q *virtiotest.Queue) { d.Write32(virtio.RegQueueNum, 32) }},
		{"size zero", func(d *virtiotest.Driver, q *virtiotest.Queue) { d.Write32(virtio.RegQueueNum, 0) }},
		{"descriptor table misaligned", func(d *virtiotest.Driver, q *virtiotest.Queue) { q.Desc += 8 }},
		{"avail ring misaligned", func(d *virtiotest.Driver, q *virtiotest.Queue) { q.Avail++ }},
		{"used ring misaligned", func(d *virtiotest.Driver, q *virtiotest.Queue) { q.Used += 2 }},
		{"used ring outside RAM", func(d *virtiotest.Driver, q *virtiotest.Queue) { q.Used = memSize - 8 }},
		{"descriptor table beyond 4 GiB", func(d *virtiotest.Driver, q *virtiotest.Queue) { q.Desc |= 1 << 32 }},
	} {
		t.Run(c.name, func(t *testing.T) {
			h := newHarness(t, newEcho(16))
			d := h.drv
			d.Negotiate(0)
			q := d.SetupQueue(0, 16)
			d.Write32(virtio.RegQueueReady, 0)
			c.setup(d, q)
			q.WriteLayout()
			d.Write32(virtio.RegQueueReady, 1)
			d.AddStatus(virtio.StatusDriverOK)
			if s := d.Status(); s&virtio.StatusNeedsReset == 0 {
				t.Fatalf("status %#x, want DEVICE_NEEDS_RESET", s)
			}
			if d.Interrupts() != 1 || d.Ack() != virtio.InterruptConfigChange {
				t.Error("no configuration change interrupt")
			}
			if n, _, _ := h.dev.counts(); n != 0 {
				t.Error("device activated with a bad queue")
			}
			// The driver adds a bit: NEEDS_RESET stays.
			d.AddStatus(virtio.StatusFailed)
			if s := d.Status(); s&virtio.StatusNeedsReset == 0 {
				t.Errorf("status %#x lost DEVICE_NEEDS_RESET", s)
			}
			d.Reset()
			if d.Status() != 0 {
				t.Errorf("status %#x after reset", d.Status())
			}
		})
	}
}

func TestQueueRegistersFrozen(t *testing.T) {
	h := newHarness(t, newEcho(16))
	d := h.drv
	d.Negotiate(0)
	q := d.SetupQueue(0, 8)
	d.Write32(virtio.RegQueueNum, 3)     // ready: ignored
	d.Write32(virtio.RegQueueDescLow, 1) // ready: ignored
	d.AddStatus(virtio.StatusDriverOK)
	d.Write32(virtio.RegQueueReady, 0) // DRIVER_OK: ignored
	d.Write32(virtio.RegQueueSel, 0)
	if d.Read32(virtio.RegQueueReady) != 1 {
		t.Error("QueueReady cleared while DRIVER_OK")
	}
	h.roundTrip(q, "still fine")
	d.Write32(virtio.RegQueueSel, 7)
	d.Write32(virtio.RegQueueNum, 4) // no such queue
	if !h.logs.Contains("queue 7, which does not exist") {
		t.Error("write to a missing queue not logged")
	}
}

// A malformed chain is answered (here with nothing written) and the device
// carries on; a corrupt ring needs a reset.
func TestHostileRings(t *testing.T) {
	h := newHarness(t, newEcho(16))
	d := h.drv
	q := d.Init(0, 8)[0]
	buf := d.Alloc(64, 8)
	q.SetDesc(3, uint64(buf), 16, virtiotest.DescNext, 4)
	q.SetDesc(4, uint64(buf), 16, virtiotest.DescNext, 3) // a loop
	q.Publish(3)
	q.Kick()
	if u := q.Wait(); u.ID != 3 || u.Len != 0 {
		t.Errorf("looping chain answered with %+v, want ID 3 and nothing written", u)
	}
	q.SetDesc(5, memSize+0x1000, 16, virtiotest.DescWrite, 0) // not RAM
	q.Publish(5)
	q.Kick()
	if u := q.Wait(); u.ID != 5 || u.Len != 0 {
		t.Errorf("chain outside RAM answered with %+v", u)
	}
	if _, _, errs := h.dev.counts(); len(errs) != 2 {
		t.Errorf("device saw chain errors %v, want 2", errs)
	}
	if !h.logs.Contains("queue 0: chain 3: chain longer than the queue size") {
		t.Errorf("bad chain not logged: %q", h.logs.Lines())
	}
	h.roundTrip(q, "still serving")

	q.SetAvailIdx(q.UsedIdx() + 9) // more than the queue size ahead
	q.Kick()
	h.waitFor("DEVICE_NEEDS_RESET", func() bool { return d.Status()&virtio.StatusNeedsReset != 0 })
	if d.Ack()&virtio.InterruptConfigChange == 0 {
		t.Error("no configuration change interrupt")
	}
	if !h.logs.Contains("device needs reset: avail idx") {
		t.Errorf("ring corruption not logged: %q", h.logs.Lines())
	}
	q = d.Init(0, 8)[0]
	h.roundTrip(q, "after the reset")
}

// VIRTQ_AVAIL_F_NO_INTERRUPT, without EVENT_IDX, stops interrupts.
func TestNoInterruptFlag(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(0, 8)[0]
	h.roundTrip(q, "one")
	before := h.drv.Interrupts()
	q.SetAvailFlags(virtiotest.AvailNoInterrupt)
	for range 5 {
		h.roundTrip(q, "quiet")
	}
	if got := h.drv.Interrupts(); got != before {
		t.Errorf("%d interrupts with NO_INTERRUPT set", got-before)
	}
	q.SetAvailFlags(0)
	h.roundTrip(q, "loud")
	if h.drv.Interrupts() != before+1 {
		t.Error("no interrupt after NO_INTERRUPT was cleared")
	}
}

// With VIRTIO_F_EVENT_IDX the device interrupts exactly when used->idx
// passes used_event, and asks for notifications with avail_event once it
// has drained the ring (virtio 1.2 §2.7.10).
func TestEventIdx(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(virtio.FeatureEventIdx, 8)[0]
	h.roundTrip(q, "first") // used_event 0: interrupt
	if h.drv.Interrupts() != 1 {
		t.Fatalf("%d interrupts for the first request, want 1", h.drv.Interrupts())
	}
	if got := q.AvailEvent(); got != 1 {
		t.Errorf("avail_event = %d after one request, want 1", got)
	}
	q.Quiet = true
	// Ask for an interrupt when used entry 3 is published, then publish
	// entries 1 to 4.
	q.SetUsedEvent(3)
	for i, want := range []int{1, 1, 2, 2} {
		h.roundTrip(q, "more")
		if got := h.drv.Interrupts(); got != want {
			t.Errorf("after request %d: %d interrupts, want %d", i+2, got, want)
		}
	}
	if got := q.AvailEvent(); got != 5 {
		t.Errorf("avail_event = %d after five requests, want 5", got)
	}
}

// Pause waits for a request in flight, holds back its interrupt, serves
// nothing new; Resume delivers both.
func TestPauseResume(t *testing.T) {
	dev := newEcho(16)
	dev.hold, dev.popped = make(chan struct{}), make(chan struct{}, 4)
	h := newHarness(t, dev)
	q := h.drv.Init(0, 8)[0]
	q.Submit(virtiotest.Readable([]byte("in flight")), virtiotest.Writable(9))
	<-dev.popped
	paused := make(chan struct{})
	go func() { h.m.Pause(); close(paused) }()
	select {
	case <-paused:
		t.Fatal("Pause returned with a request in flight")
	case <-time.After(20 * time.Millisecond):
	}
	dev.hold <- struct{}{}
	<-paused
	if q.UsedIdx() != 1 {
		t.Fatal("request not in the used ring after Pause")
	}
	if h.drv.Interrupts() != 0 {
		t.Error("interrupt raised after Pause began")
	}
	q.Submit(virtiotest.Readable([]byte("later")), virtiotest.Writable(5))
	h.m.Notify(0)
	select {
	case <-dev.popped:
		t.Fatal("paused device popped a request")
	case <-time.After(20 * time.Millisecond):
	}
	if _, err := h.m.SaveState(); err != nil {
		t.Errorf("SaveState of a paused device: %v", err)
	}
	h.m.Resume()
	if h.drv.Interrupts() != 1 {
		t.Errorf("%d interrupts after Resume, want the held-back one", h.drv.Interrupts())
	}
	<-dev.popped
	dev.hold <- struct{}{}
	q.Wait()
	q.Wait()
}

// Everything the device writes to guest RAM reaches the dirty log: the
// answer, the used ring (with avail_event); nothing else is marked.
func TestDirtyMarking(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(virtio.FeatureEventIdx, 8)[0]
	dirty := virtiotest.TrackDirty(t, h.mem)
	h.drv.Alloc(1, 4096) // the buffers on a page of their own
	r := q.Submit(virtiotest.Readable(make([]byte, 10)), virtiotest.Writable(10))
	q.Wait()
	// The device arms avail_event after the push; wait for it.
	h.waitFor("avail_event", func() bool { return q.AvailEvent() == 1 })
	got := dirty()
	want := []vmm.GPA{r.WritableGPA(0) &^ 0xfff, q.Used &^ 0xfff}
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("dirty pages %#x, want %#x (the answer's page and the used ring's)", got, want)
	}
}
