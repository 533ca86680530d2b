package vmm_test

import (
	"testing"
	"time"

	"govmm/vmm"
	"govmm/vmm/testguest"
)

// TestIOEventFDTakesTheMatchingWrite runs testguest.Writer with an
// ioeventfd on its doorbell for the value 1: round 1's doorbell write must
// signal the eventfd and never reach the MMIO bus, while round 2's (value
// 2, no match) still exits to the bus as usual.
func TestIOEventFDTakesTheMatchingWrite(t *testing.T) {
	g := newGuestVM(t, []vmm.MemoryRegion{{Start: 0, Size: testguest.MinRAM}}, testguest.Writer, true)
	e, err := vmm.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	bell := vmm.IOEventFD{Addr: uint64(testguest.Doorbell), Len: 8, DataMatch: 1}
	if err := g.vm.AttachIOEventFD(e, bell); err != nil {
		t.Fatal(err)
	}
	signalled := make(chan uint64, 1)
	go func() {
		n, err := e.Wait()
		if err == nil {
			signalled <- n
		}
	}()

	g.start()
	if err := testguest.PostRound(g.vm.Memory, 1, nil); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-signalled:
		if n != 1 {
			t.Errorf("eventfd counter %d, want 1", n)
		}
	case got := <-g.bell.rang:
		t.Fatalf("the doorbell write of %d reached the MMIO bus despite the ioeventfd", got)
	case <-time.After(30 * time.Second):
		t.Fatal("no eventfd signal within 30s")
	}
	if err := testguest.PostRound(g.vm.Memory, 2, nil); err != nil {
		t.Fatal(err)
	}
	g.waitBell(t, 2)

	if err := g.vm.DetachIOEventFD(e, bell); err != nil {
		t.Fatal(err)
	}
	if err := g.vm.AttachIOEventFD(e, vmm.IOEventFD{Addr: 0x1000, Len: 3}); err == nil {
		t.Error("a 3-byte ioeventfd was accepted")
	}
}

// TestIRQFDRaisesTheLine signals an irqfd attached to GSI 5 and watches
// the master PIC latch IRQ 5 in its request register: the interrupt
// arrived without any KVM_IRQ_LINE call.
func TestIRQFDRaisesTheLine(t *testing.T) {
	const gsi = 5
	g := newGuestVM(t, []vmm.MemoryRegion{{Start: 0, Size: testguest.MinRAM}}, testguest.Writer, true)
	e, err := vmm.NewEventFD()
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := g.vm.AttachIRQFD(e, gsi); err != nil {
		t.Fatal(err)
	}
	// struct kvm_pic_state: last_irr, irr, imr, ...
	irr := func() byte {
		c, err := g.vm.GetIRQChip(vmm.IRQChipPICMaster)
		if err != nil {
			t.Fatal(err)
		}
		return c.Chip[1]
	}
	if irr()&(1<<gsi) != 0 {
		t.Fatal("IRQ 5 requested before the irqfd was signalled")
	}
	if err := e.Signal(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "IRQ 5 in the PIC's request register", func() bool { return irr()&(1<<gsi) != 0 })
	if err := g.vm.DetachIRQFD(e, gsi); err != nil {
		t.Fatal(err)
	}
}
