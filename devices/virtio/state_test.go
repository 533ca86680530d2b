package virtio_test

import (
	"encoding/json"
	"strings"
	"testing"

	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
)

// saveJSON saves a paused device's state through JSON, as the machine does.
func saveJSON(t *testing.T, m *virtio.MMIO) virtio.MMIOState {
	t.Helper()
	s, err := m.SaveState()
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var out virtio.MMIOState
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// A device saved mid-life continues on a new transport from the same ring
// indices, with the held-back interrupt, and serves only after Resume.
func TestSaveRestore(t *testing.T) {
	dev := newEcho(16, 16)
	dev.popped = make(chan struct{}, 16)
	h := newHarness(t, dev)
	qs := h.drv.Init(virtio.FeatureEventIdx|virtio.FeatureIndirectDesc, 8, 4)
	for range 11 {
		h.roundTrip(qs[0], "source")
	}
	h.roundTrip(qs[1], "source")
	if _, err := h.m.SaveState(); err == nil {
		t.Error("SaveState of a running device succeeded")
	}

	// The guest adds a request after the device paused: it must be
	// served by the destination.
	h.m.Pause()
	r := qs[0].Submit(virtiotest.Readable([]byte("in transit")), virtiotest.Writable(10))
	s := saveJSON(t, h.m)
	if s.Queues[0].LastAvailIdx != 11 || s.Queues[0].UsedIdx != 11 || s.Queues[1].UsedIdx != 1 {
		t.Errorf("saved queues %+v", s.Queues)
	}
	status := h.drv.Status()
	h.m.Close()

	dst := newEcho(16, 16)
	dst.popped = make(chan struct{}, 16)
	m := h.attach(dst)
	if err := m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if got := h.drv.Status(); got != status {
		t.Errorf("restored status %#x, want %#x", got, status)
	}
	if n, _, _ := dst.counts(); n != 1 {
		t.Fatalf("restored device activated %d times", n)
	}
	select {
	case <-dst.popped:
		t.Fatal("restored device served before Resume")
	default:
	}
	m.Resume()
	u := qs[0].Wait()
	if u.ID != r.Head || string(r.Writable(0)) != "tisnart ni" || qs[0].UsedIdx() != 12 {
		t.Errorf("request in transit: used %+v, answer %q, used idx %d", u, r.Writable(0), qs[0].UsedIdx())
	}
	for range 10 {
		h.roundTrip(qs[0], "destination")
	}
	h.roundTrip(qs[1], "destination")

	// Saving again gives the destination's own positions.
	m.Pause()
	s2 := saveJSON(t, m)
	if s2.Queues[0].UsedIdx != 22 || s2.Queues[1].UsedIdx != 2 {
		t.Errorf("second save: queues %+v", s2.Queues)
	}
}

// A held-back interrupt travels with the state.
func TestSaveRestoreInterruptPending(t *testing.T) {
	dev := newEcho(16)
	dev.hold, dev.popped = make(chan struct{}), make(chan struct{}, 1)
	h := newHarness(t, dev)
	q := h.drv.Init(0, 8)[0]
	q.Submit(virtiotest.Readable([]byte("x")), virtiotest.Writable(1))
	<-dev.popped
	go func() { dev.hold <- struct{}{} }()
	h.m.Pause() // the completion's interrupt is held back
	s := saveJSON(t, h.m)
	if !s.InterruptPending || s.InterruptStatus != virtio.InterruptUsedBuffer {
		t.Fatalf("saved interrupt pending %v, status %#x", s.InterruptPending, s.InterruptStatus)
	}
	before := h.drv.Interrupts()
	m := h.attach(newEcho(16))
	if err := m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	m.Resume()
	if h.drv.Interrupts() != before+1 {
		t.Error("held-back interrupt not raised on the destination")
	}
	q.Wait()
}

// A fresh, never-started device saves and restores too.
func TestSaveRestoreFresh(t *testing.T) {
	h := newHarness(t, newEcho(16))
	s := saveJSON(t, h.m)
	m := h.attach(newEcho(16))
	if err := m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	m.Resume()
	q := h.drv.Init(0, 8)[0]
	h.roundTrip(q, "fresh")
}

// RestoreState refuses every impossible state and leaves the device as it
// was: afterwards a good state still restores.
func TestRestoreRejects(t *testing.T) {
	h := newHarness(t, newEcho(16, 16))
	qs := h.drv.Init(virtio.FeatureEventIdx, 8, 8)
	h.roundTrip(qs[0], "x")
	h.m.Pause()
	good := saveJSON(t, h.m)
	h.m.Close()

	for _, c := range []struct {
		name   string
		change func(s *virtio.MMIOState)
		want   string
	}{
		{"device type", func(s *virtio.MMIOState) { s.DeviceType = virtio.TypeBlock }, "state is for a virtio-blk"},
		{"queue count", func(s *virtio.MMIOState) { s.Queues = s.Queues[:1] }, "1 queues, the device has 2"},
		{"reserved status bit", func(s *virtio.MMIOState) { s.Status |= 0x20 }, "reserved bits"},
		{"DRIVER_OK without FEATURES_OK", func(s *virtio.MMIOState) { s.Status &^= virtio.StatusFeaturesOK }, "without FEATURES_OK"},
		{"features not offered", func(s *virtio.MMIOState) { s.DriverFeatures |= 1 << 7 }, "not offered"},
		{"no VERSION_1", func(s *virtio.MMIOState) { s.DriverFeatures &^= virtio.FeatureVersion1 }, "VERSION_1"},
		{"interrupt status", func(s *virtio.MMIOState) { s.InterruptStatus = 4 }, "interrupt status"},
		{"queue size not a power of two", func(s *virtio.MMIOState) { s.Queues[1].Num = 12 }, "power of two"},
		{"queue size above the maximum", func(s *virtio.MMIOState) { s.Queues[0].Num = 32 }, "power of two"},
		{"queue size huge", func(s *virtio.MMIOState) { s.Queues[0].Num = 1 << 20 }, "larger than"},
		{"ring outside RAM", func(s *virtio.MMIOState) { s.Queues[0].Device = 1 << 40 }, "not RAM"},
		{"ring misaligned", func(s *virtio.MMIOState) { s.Queues[1].Desc += 4 }, "aligned"},
		{"device state", func(s *virtio.MMIOState) { s.Device = json.RawMessage(`"bad"`) }, "echo: bad state"},
	} {
		t.Run(c.name, func(t *testing.T) {
			dev := newEcho(16, 16)
			m := h.attach(dev)
			s := good
			s.Queues = append([]virtio.QueueState(nil), good.Queues...)
			c.change(&s)
			if err := m.RestoreState(s); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("RestoreState = %v, want an error containing %q", err, c.want)
			}
			if h.drv.Status() != 0 || h.drv.Read32(virtio.RegQueueReady) != 0 || dev.state != `"echo"` {
				t.Fatal("refused state changed the device")
			}
			if n, _, _ := dev.counts(); n != 0 {
				t.Fatal("refused state activated the device")
			}
			if err := m.RestoreState(good); err != nil {
				t.Fatalf("good state after a refused one: %v", err)
			}
		})
	}

	// Not into a device that is in use.
	m := h.attach(newEcho(16, 16))
	h.drv.Init(0, 8)
	if err := m.RestoreState(good); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("restore into a running device: %v", err)
	}
}

// A device that needs a reset stays that way across migration, and serves
// nothing.
func TestSaveRestoreNeedsReset(t *testing.T) {
	h := newHarness(t, newEcho(16))
	q := h.drv.Init(0, 8)[0]
	q.SetAvailIdx(100)
	h.m.Notify(0)
	h.waitFor("DEVICE_NEEDS_RESET", func() bool { return h.drv.Status()&virtio.StatusNeedsReset != 0 })
	h.m.Pause()
	s := saveJSON(t, h.m)
	dst := newEcho(16)
	m := h.attach(dst)
	if err := m.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	m.Resume()
	if h.drv.Status()&virtio.StatusNeedsReset == 0 {
		t.Error("DEVICE_NEEDS_RESET lost")
	}
	if n, _, _ := dst.counts(); n != 0 {
		t.Error("broken device activated on restore")
	}
}
