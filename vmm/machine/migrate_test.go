package machine

import (
	"context"
	"io"
	"net"
	"testing"
	"time"

	"govmm/migration"
	"govmm/vmm"
	"govmm/vmm/testguest"
)

// Live migration end to end on this host's real KVM, with the real
// protocol over a real TCP connection: a guest that rewrites 256 pages as
// fast as the CPU allows (testguest.Counter, native speed even on PVM)
// moves from machine A to a machine built by Destination, then must go on
// counting there with memory consistent with its registers, which catches
// any page the dirty log or the protocol lost. It is the CI-sized version
// of tests/linux's TestMigrateDirtier, without Linux.
func TestLiveMigrationOfABusyGuest(t *testing.T) {
	a := newCountingMachine(t, true)
	aDone := make(chan Exit, 1)
	go func() { aDone <- a.Run() }()
	waitPasses(t, a, 100)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := NewDestination(Config{NumVCPUs: 1, SerialOut: io.Discard})
	received := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			received <- err
			return
		}
		defer conn.Close()
		_, err = migration.Receive(context.Background(), conn, dst, migration.ReceiveOptions{})
		received <- err
	}()

	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// A low limit forces several live rounds while the guest rewrites its
	// pages; the downtime limit then decides when to stop.
	rep, err := migration.Send(context.Background(), conn, a.MigrationSource(),
		migration.Options{MaxBandwidth: 8 << 20, MaxRounds: 10}, nil)
	if err != nil {
		t.Fatalf("migration failed: %v", err)
	}
	if err := <-received; err != nil {
		t.Fatalf("receive failed: %v", err)
	}
	t.Logf("%d rounds (%s), downtime %v, %d KiB on the wire for %d MiB of RAM",
		len(rep.Rounds), rep.StopReason, rep.Downtime, rep.WireBytes>>10, rep.GuestRAM>>20)
	if len(rep.Rounds) < 2 {
		t.Errorf("%d rounds; a busy guest at 8 MiB/s should need more than one", len(rep.Rounds))
	}

	select {
	case e := <-aDone:
		if e.Reason != ExitMigrated {
			t.Fatalf("source ended with %v (%s), want migrated", e.Reason, e.Detail)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("source machine still running after the migration")
	}
	passAtSource := lastPage(a)

	b := dst.Machine()
	defer b.Close()
	waitPasses(t, b, passAtSource+100) // it goes on where it stopped
	if err := b.Pause(); err != nil {
		t.Fatal(err)
	}
	v := b.VM.VCPUs()[0]
	var regs vmm.Regs
	v.Do(func() { regs, err = v.GetRegs() })
	if err != nil {
		t.Fatal(err)
	}
	if err := testguest.CheckCounter(b.VM.Memory, regs); err != nil {
		t.Fatalf("destination memory after migration: %v", err)
	}
	b.Stop("test over")
	select {
	case e := <-dst.Exit():
		if e.Reason != ExitQuit {
			t.Fatalf("destination ended with %v (%s)\n%s", e.Reason, e.Detail, e.CrashReport())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("destination did not stop")
	}
}
