package i8042

import "testing"

type counter struct{ resets int }

func (c *counter) ResetRequested() { c.resets++ }

func TestStatusAndDataReadZero(t *testing.T) {
	c := New(&counter{})
	for name, p := range map[string]*Port{"data": c.Data(), "command": c.Command()} {
		b := []byte{0xaa, 0xbb}
		p.Read(0, b)
		if b[0] != 0 || b[1] != 0 {
			t.Errorf("%s port read %#x, want zeros", name, b)
		}
	}
}

func TestResetCommand(t *testing.T) {
	h := &counter{}
	c := New(h)
	c.Command().Write(0, []byte{CmdResetCPU})
	if h.resets != 1 {
		t.Fatalf("resets = %d after 0xFE to the command port, want 1", h.resets)
	}
	// Linux's BOOT_KBD loop writes it up to 10 times; each one counts.
	c.Command().Write(0, []byte{CmdResetCPU})
	if h.resets != 2 {
		t.Errorf("resets = %d, want 2", h.resets)
	}
}

func TestOtherWritesDoNotReset(t *testing.T) {
	h := &counter{}
	c := New(h)
	c.Data().Write(0, []byte{CmdResetCPU})       // 0xFE to the data port
	c.Command().Write(0, []byte{0xaa})           // self-test command
	c.Command().Write(0, []byte{CmdResetCPU, 0}) // 16-bit write
	c.Command().Write(0, []byte{})               // empty
	c.Command().Write(1, []byte{CmdResetCPU})    // misregistered range
	if h.resets != 0 {
		t.Errorf("resets = %d, want 0", h.resets)
	}
}

func TestHandlerFunc(t *testing.T) {
	called := false
	New(HandlerFunc(func() { called = true })).Command().Write(0, []byte{CmdResetCPU})
	if !called {
		t.Error("HandlerFunc not called")
	}
}

func TestState(t *testing.T) {
	c := New(&counter{})
	if err := c.RestoreState(c.SaveState()); err != nil {
		t.Errorf("RestoreState(SaveState()) = %v", err)
	}
}
