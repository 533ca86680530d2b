package vmm

import "testing"

type recorder struct {
	reads, writes []uint64
	last          []byte
}

func (r *recorder) Read(off uint64, data []byte) {
	r.reads = append(r.reads, off)
	for i := range data {
		data[i] = byte(off) + byte(i)
	}
}
func (r *recorder) Write(off uint64, data []byte) {
	r.writes = append(r.writes, off)
	r.last = append([]byte(nil), data...)
}

func TestBusRoutesByOffset(t *testing.T) {
	b := NewBus("test")
	a, c := &recorder{}, &recorder{}
	if err := b.Register(0x3f8, 8, "a", a); err != nil {
		t.Fatal(err)
	}
	if err := b.Register(0x60, 1, "c", c); err != nil {
		t.Fatal(err)
	}
	if !b.Write(0x3fd, []byte{7}) || len(a.writes) != 1 || a.writes[0] != 5 || a.last[0] != 7 {
		t.Fatalf("write to 0x3fd: %+v", a)
	}
	data := make([]byte, 2)
	if !b.Read(0x60, data) || c.reads[0] != 0 || data[0] != 0 || data[1] != 1 {
		t.Fatalf("read 0x60: %v %+v", data, c)
	}
	if b.Read(0x3f7, data) || data[0] != 0xff || data[1] != 0xff {
		t.Fatalf("unclaimed read: %v", data)
	}
	if b.Write(0x400, []byte{1}) || len(a.writes) != 1 {
		t.Fatal("unclaimed write reached a device")
	}
}

func TestBusRejectsOverlap(t *testing.T) {
	b := NewBus("test")
	if err := b.Register(0x100, 0x10, "a", &recorder{}); err != nil {
		t.Fatal(err)
	}
	for _, r := range [][2]uint64{{0x10f, 1}, {0xf0, 0x11}, {0x104, 2}, {0, 0x1000}} {
		if err := b.Register(r[0], r[1], "b", &recorder{}); err == nil {
			t.Errorf("overlapping range %#x+%#x accepted", r[0], r[1])
		}
	}
	if err := b.Register(0x110, 1, "b", &recorder{}); err != nil {
		t.Errorf("adjacent range refused: %v", err)
	}
	if err := b.Register(^uint64(0), 2, "wrap", &recorder{}); err == nil {
		t.Error("wrapping range accepted")
	}
}
