package virtio_test

import (
	"encoding/json"
	"testing"

	"govmm/devices/virtio"
	"govmm/devices/virtio/virtiotest"
)

// changer is an echo device whose config space can change, as
// virtio-net's status does.
type changer struct {
	*echo
	changed func()
}

func (c *changer) SetConfigChanged(f func()) { c.changed = f }

func TestConfigChanged(t *testing.T) {
	mem := virtiotest.NewMemory(t, memSize)
	drv := virtiotest.New(t, mem, 0x1000, memSize)
	dev := &changer{echo: newEcho(16)}
	m := virtio.NewMMIO(dev, virtio.MMIOConfig{Memory: mem, Interrupt: drv.Interrupt})
	t.Cleanup(m.Close)
	drv.Dev = m
	if dev.changed == nil {
		t.Fatal("NewMMIO did not hand the device its config change function")
	}
	drv.Init(0, 16)
	drv.Ack()
	irqs := drv.Interrupts()
	dev.changed()
	if drv.Interrupts() != irqs+1 || drv.Ack() != virtio.InterruptConfigChange {
		t.Error("no configuration change interrupt")
	}
	if g := drv.Read32(virtio.RegConfigGeneration); g != 1 {
		t.Errorf("ConfigGeneration %d after a change, want 1", g)
	}

	// Held back while paused, like every interrupt.
	m.Pause()
	dev.changed()
	if drv.Interrupts() != irqs+1 {
		t.Error("interrupt raised while paused")
	}
	m.Resume()
	if drv.Interrupts() != irqs+2 || drv.Ack() != virtio.InterruptConfigChange {
		t.Error("held-back config change interrupt not raised on Resume")
	}
}

// manual is a device whose single queue the test drives by hand.
type manual struct{ q *virtio.Queue }

func (d *manual) Type() virtio.DeviceType                     { return 43 }
func (d *manual) Features() uint64                            { return 0 }
func (d *manual) QueueMaxSizes() []uint16                     { return []uint16{16} }
func (d *manual) Config() []byte                              { return nil }
func (d *manual) WriteConfig(uint64, []byte)                  {}
func (d *manual) Activate(_ uint64, qs []*virtio.Queue) error { d.q = qs[0]; return nil }
func (d *manual) Reset()                                      { d.q = nil }
func (d *manual) SaveState() (json.RawMessage, error)         { return json.RawMessage(`null`), nil }
func (d *manual) RestoreState(json.RawMessage) error          { return nil }

// PushAll publishes several chains with one used->idx update, in order,
// and interrupts once.
func TestPushAll(t *testing.T) {
	mem := virtiotest.NewMemory(t, memSize)
	drv := virtiotest.New(t, mem, 0x1000, memSize)
	dev := &manual{}
	logs := &virtiotest.LogRecorder{}
	m := virtio.NewMMIO(dev, virtio.MMIOConfig{Memory: mem, Interrupt: drv.Interrupt, Log: logs.Printf})
	t.Cleanup(m.Close)
	drv.Dev = m
	q := drv.Init(0, 16)[0]
	var reqs []*virtiotest.Request
	var chains []*virtio.Chain
	for i := range 3 {
		reqs = append(reqs, q.Add(virtiotest.Writable(8)))
		c := dev.q.Pop()
		c.WriteAt([]byte("abcdefgh")[:i+1], 0)
		chains = append(chains, c)
	}
	irqs := drv.Interrupts()
	dev.q.PushAll(chains...)
	if q.UsedIdx() != 3 || drv.Interrupts() != irqs+1 {
		t.Errorf("used idx %d, %d interrupts; want 3, 1", q.UsedIdx(), drv.Interrupts()-irqs)
	}
	for i, r := range reqs {
		if u, ok := q.Poll(); !ok || u.ID != r.Head || u.Len != uint32(i+1) {
			t.Errorf("used element %d: %+v, want ID %d, length %d", i, u, r.Head, i+1)
		}
	}
	dev.q.PushAll(chains[1])
	if q.UsedIdx() != 3 || !logs.Contains("pushed twice") {
		t.Errorf("chain pushed twice: used idx %d", q.UsedIdx())
	}
	dev.q.PushAll() // nothing to do
	// The queue is idle: a pause does not wait.
	m.Pause()
	m.Resume()
}
