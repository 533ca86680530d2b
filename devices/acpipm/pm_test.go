package acpipm

import "testing"

type recorder struct{ off, reset int }

func (r *recorder) PowerOff() { r.off++ }
func (r *recorder) Reset()    { r.reset++ }

func rd(p *PM, off uint64) byte {
	b := []byte{0xff}
	p.Read(off, b)
	return b[0]
}

func TestPowerOffS5(t *testing.T) {
	r := &recorder{}
	p := New(r)
	// What acpi_hw_extended_sleep(ACPI_STATE_S5) does.
	p.Write(SleepStatusOffset, []byte{WakeStatus})
	p.Write(SleepControlOffset, []byte{SleepTypeS5<<SleepTypeShift | SleepEnable})
	if r.off != 1 || r.reset != 0 {
		t.Fatalf("PowerOff called %d times, Reset %d; want 1, 0", r.off, r.reset)
	}
	if v := rd(p, SleepControlOffset); v != SleepTypeS5<<SleepTypeShift {
		t.Errorf("sleep control reads %#02x, want SLP_TYP only (SLP_EN is write-only)", v)
	}
}

func TestSleepControlWithoutS5(t *testing.T) {
	r := &recorder{}
	p := New(r)
	p.Write(SleepControlOffset, []byte{SleepTypeS5 << SleepTypeShift})   // no SLP_EN
	p.Write(SleepControlOffset, []byte{3<<SleepTypeShift | SleepEnable}) // S3: not offered
	p.Write(SleepControlOffset, []byte{SleepEnable})                     // S0
	if r.off != 0 {
		t.Errorf("PowerOff called %d times, want 0", r.off)
	}
}

func TestSleepStatusClearsOnWriteOne(t *testing.T) {
	p := New(&recorder{})
	if err := p.RestoreState(State{WakeStatus: true}); err != nil {
		t.Fatal(err)
	}
	if v := rd(p, SleepStatusOffset); v != WakeStatus {
		t.Fatalf("status = %#02x, want WAK_STS", v)
	}
	p.Write(SleepStatusOffset, []byte{0x00})
	if v := rd(p, SleepStatusOffset); v != WakeStatus {
		t.Errorf("writing 0 cleared WAK_STS")
	}
	p.Write(SleepStatusOffset, []byte{WakeStatus})
	if v := rd(p, SleepStatusOffset); v != 0 {
		t.Errorf("status = %#02x after write-1-to-clear, want 0", v)
	}
}

func TestReset(t *testing.T) {
	r := &recorder{}
	p := New(r)
	p.Write(ResetOffset, []byte{ResetValue + 1})
	if r.reset != 0 {
		t.Fatal("a value other than RESET_VALUE reset the machine")
	}
	p.Write(ResetOffset, []byte{ResetValue})
	if r.reset != 1 || r.off != 0 {
		t.Errorf("Reset called %d times, PowerOff %d; want 1, 0", r.reset, r.off)
	}
	if v := rd(p, ResetOffset); v != 0 {
		t.Errorf("reset register reads %#02x, want 0", v)
	}
}

func TestFuncs(t *testing.T) {
	var off, reset bool
	p := New(Funcs{OnPowerOff: func() { off = true }, OnReset: func() { reset = true }})
	p.Write(SleepControlOffset, []byte{SleepTypeS5<<SleepTypeShift | SleepEnable})
	p.Write(ResetOffset, []byte{ResetValue})
	if !off || !reset {
		t.Errorf("Funcs: off=%v reset=%v", off, reset)
	}
	New(Funcs{}).Write(ResetOffset, []byte{ResetValue}) // nil funcs: no panic
}

func TestState(t *testing.T) {
	p := New(&recorder{})
	p.Write(SleepControlOffset, []byte{2 << SleepTypeShift})
	s := p.SaveState()
	if s.SleepType != 2 {
		t.Fatalf("saved sleep type %d, want 2", s.SleepType)
	}
	q := New(&recorder{})
	if err := q.RestoreState(s); err != nil {
		t.Fatal(err)
	}
	if q.SaveState() != s {
		t.Errorf("round trip gave %+v, want %+v", q.SaveState(), s)
	}
	if err := q.RestoreState(State{SleepType: 8}); err == nil {
		t.Error("RestoreState accepted SLP_TYP 8")
	}
	if q.SaveState() != s {
		t.Error("a rejected state modified the device")
	}
}
