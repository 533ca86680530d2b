package pvpanic

import "testing"

type recorder struct{ panicked, crash int }

func (r *recorder) Panicked()    { r.panicked++ }
func (r *recorder) CrashLoaded() { r.crash++ }

func TestReadSupportedEvents(t *testing.T) {
	d := New(&recorder{})
	b := []byte{0xff}
	d.Read(0, b)
	if b[0] != 0x03 {
		t.Errorf("read %#02x, want 0x03 (PANICKED|CRASH_LOADED)", b[0])
	}
}

func TestEvents(t *testing.T) {
	r := &recorder{}
	d := New(r)
	d.Write(0, []byte{EventCrashLoaded})
	if r.crash != 1 || r.panicked != 0 {
		t.Fatalf("after CRASH_LOADED: crash=%d panicked=%d", r.crash, r.panicked)
	}
	d.Write(0, []byte{EventPanicked})
	if r.panicked != 1 || r.crash != 1 {
		t.Fatalf("after PANICKED: crash=%d panicked=%d", r.crash, r.panicked)
	}
	if d.Reported() != SupportedEvents {
		t.Errorf("Reported = %#x, want %#x", d.Reported(), SupportedEvents)
	}
}

func TestUnsupportedBitsIgnored(t *testing.T) {
	r := &recorder{}
	d := New(r)
	d.Write(0, []byte{0xfc})
	d.Write(0, []byte{})
	if r.panicked != 0 || r.crash != 0 || d.Reported() != 0 {
		t.Errorf("unsupported bits triggered events: %+v, reported %#x", r, d.Reported())
	}
	d.Write(0, []byte{0xff}) // both supported bits plus noise
	if r.panicked != 1 || r.crash != 1 {
		t.Errorf("0xff: panicked=%d crash=%d, want 1, 1", r.panicked, r.crash)
	}
}

func TestFuncs(t *testing.T) {
	got := ""
	d := New(Funcs{OnPanicked: func() { got += "p" }})
	d.Write(0, []byte{EventPanicked | EventCrashLoaded}) // nil OnCrashLoaded ignored
	if got != "p" {
		t.Errorf("got %q, want %q", got, "p")
	}
}

func TestState(t *testing.T) {
	d := New(&recorder{})
	d.Write(0, []byte{EventPanicked})
	s := d.SaveState()
	e := New(&recorder{})
	if err := e.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if e.Reported() != EventPanicked {
		t.Errorf("restored Reported = %#x", e.Reported())
	}
	if err := e.RestoreState(State{Reported: 0x04}); err == nil {
		t.Error("RestoreState accepted an unsupported event bit")
	}
	if e.Reported() != EventPanicked {
		t.Error("a rejected state modified the device")
	}
}

func TestNilHandlerStillRecords(t *testing.T) {
	d := New(nil)
	d.Write(0, []byte{EventPanicked})
	if d.Reported() != EventPanicked {
		t.Errorf("Reported = %#x, want PANICKED", d.Reported())
	}
}
