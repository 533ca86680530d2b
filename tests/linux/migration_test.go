package linux

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"govmm/migration"
)

// Live-migration scenarios, in the spirit of QEMU's migration test
// (tests/qtest/migration, see /work/shared/notes/references.md): a
// workload in the guest rewrites 64 MiB as fast as it can while the guest
// migrates, and checks itself on every pass that memory holds what it
// wrote (guest.Dirtier). A page the migration lost or mangled shows up as
// a "dirtier: MEMORY MISMATCH" line on the destination's console, and a
// heartbeat with a higher pass number than the source ever printed proves
// the guest goes on where it stopped.
//
// The CLI contract these scenarios drive:
//
//	govmm run --api SOCK ... KERNEL        the source; SOCK is its control socket
//	govmm receive --listen ADDR [--api SOCK]
//	                                       the destination: waits for one migration, then
//	                                       runs the guest with its console on its stdio;
//	                                       exit status as for run
//	govmm migrate --api SOCK --to ADDR [--max-bandwidth 16M] [--json FILE]
//	                                       0 when the guest runs on the destination (the
//	                                       source then exits 0 by itself); 1 and
//	                                       "govmm: migration failed: ..." otherwise, and
//	                                       the guest keeps running on the source
//
// Timings in the test host (TCG, nested KVM), measured: each scenario
// boots one guest (10-30 s) and moves 512 MiB of guest RAM, most of it
// zero pages; TestMigrateDirtier took 31-43 s, TestMigratePingPong 54-91 s
// and TestMigrateFaults 31-40 s.

const (
	dirtierMiB       = 64
	dirtierHeartbeat = 8
)

// TestMigrateDirtier migrates a guest whose memory is being rewritten, at a
// bandwidth low enough that pre-copy needs several rounds, and checks on
// the destination that the guest goes on with its memory intact and its
// console and shell working.
func TestMigrateDirtier(t *testing.T) {
	e := needEnv(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := bootToShell(t, "src", e.govmm, "run", "--api", api, "--modules", e.modules, e.kernel)
	src.startDirtier(dirtierMiB, dirtierHeartbeat)
	waitAPI(t, src, api)

	addr := freeAddr(t)
	dst := startReceiver(t, e, "dst", addr)
	// 16 MiB/s: round 1 (all non-zero pages, over 64 MiB of them the
	// dirtier's) takes seconds, during which the dirtier rewrites all its
	// pages, so at least one more round must follow.
	rep := migrate(t, e, api, addr, "--max-bandwidth", "16M")
	if len(rep.Rounds) < 2 {
		t.Errorf("migration took %d round(s), want at least 2 at 16 MiB/s with the dirtier running", len(rep.Rounds))
	}
	if d := rep.Rounds[0].PagesSent + rep.Rounds[0].PagesSkipped; d < dirtierMiB<<20/migration.PageSize {
		t.Errorf("round 1 sent or skipped %d non-zero pages, fewer than the dirtier's %d", d, dirtierMiB<<20/migration.PageSize)
	}
	if status := src.wait(exitTimeout); status != 0 {
		t.Errorf("source govmm exited with status %d after the migration, want 0", status)
	}
	last := src.lastHeartbeat()

	// The same dirtier process goes on on the destination.
	first := dst.heartbeatAfter(last)
	p := first
	for range 3 {
		p = dst.nextHeartbeat()
	}
	t.Logf("dirtier: pass %d was the last on the source, %d the first on the destination, %d reached there", last, first, p)

	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		t.Errorf("destination govmm exited with status %d after guest poweroff, want 0", status)
	}
	src.checkNoMismatch("source")
	dst.checkNoMismatch("destination")
}

// TestMigratePingPong moves the guest A→B→A→B: three hops, each to a new
// `govmm receive`, every intermediate one migrating the guest on through
// its own control socket. The dirtier runs throughout. Each hop exercises
// a machine that was itself built from a migration stream, so state that
// only survives one restore (a device register, the clock, a dirty log
// left on) shows up here.
func TestMigratePingPong(t *testing.T) {
	e := needEnv(t)
	dir := t.TempDir()
	api := filepath.Join(dir, "vm0.sock")
	cur := bootToShell(t, "vm0", e.govmm, "run", "--api", api, "--modules", e.modules, e.kernel)
	cur.startDirtier(dirtierMiB, dirtierHeartbeat)
	waitAPI(t, cur, api)

	all, names := []*vm{cur}, []string{"vm0"}
	for hop := 1; hop <= 3; hop++ {
		name := fmt.Sprintf("vm%d", hop)
		addr := freeAddr(t)
		nextAPI := filepath.Join(dir, name+".sock")
		next := startReceiver(t, e, name, addr, "--api", nextAPI)
		next.api = nextAPI // for diagnoseHang, should the guest hang there
		t.Logf("hop %d: %s -> %s", hop, names[len(names)-1], name)
		all, names = append(all, next), append(names, name)

		migrate(t, e, api, addr)
		if status := cur.wait(exitTimeout); status != 0 {
			t.Fatalf("hop %d: the source govmm exited with status %d after the migration, want 0", hop, status)
		}
		last := cur.lastHeartbeat()
		next.heartbeatAfter(last)
		p := next.nextHeartbeat()
		t.Logf("hop %d: dirtier pass %d was the last before, pass %d reached after", hop, last, p)
		waitAPI(t, next, nextAPI)
		cur, api = next, nextAPI
	}

	cur.typeLine("echo $((6*7))-pong")
	cur.expect("42-pong", replyTimeout)
	cur.typeLine("poweroff")
	if status := cur.wait(exitTimeout); status != 0 {
		t.Errorf("last destination exited with status %d after guest poweroff, want 0", status)
	}
	for i, v := range all {
		v.checkNoMismatch(names[i])
	}
}

// TestMigrateFaults: a migration that fails leaves the guest running on
// the source, and a receiver fed something that is not a migration stream
// says so and exits.
func TestMigrateFaults(t *testing.T) {
	e := needEnv(t)

	t.Run("garbage stream", func(t *testing.T) {
		// What the receiver must say, from the first 12 bytes (magic
		// "GOVMMIG\0" and a big-endian u32 version, migration/doc.go).
		random := make([]byte, 4096)
		rand.NewChaCha8([32]byte{1}).Read(random)
		badVersion := binary.BigEndian.AppendUint32([]byte("GOVMMIG\x00"), 99)
		for _, tc := range []struct {
			name    string
			stream  []byte
			mention string
		}{
			{"random bytes", random, "not a govmm migration stream"},
			{"unknown version", append(badVersion, random...), "version 99"},
		} {
			t.Run(tc.name, func(t *testing.T) { garbageStream(t, e, tc.stream, tc.mention) })
		}
	})
}

// TestMigrateDestinationKilled kills the destination during round 1: the
// migration fails, the source keeps running (its dirtier goes on, its shell
// answers) and a second migration to a fresh receiver succeeds.
func TestMigrateDestinationKilled(t *testing.T) {
	e := needEnv(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := bootToShell(t, "src", e.govmm, "run", "--api", api, "--modules", e.modules, e.kernel)
	src.startDirtier(dirtierMiB, dirtierHeartbeat)
	waitAPI(t, src, api)

	// At 1 MiB/s round 1 lasts minutes: the receiver dies in it.
	addr := freeAddr(t)
	dst := startReceiver(t, e, "dst", addr)
	m := startMigrate(t, e, api, addr, "--max-bandwidth", "1M")
	waitTCP(t, dst, addr, tcpEstablished)
	time.Sleep(time.Second)
	t.Log("killing the receiver")
	dst.cmd.Process.Kill()
	<-dst.done

	r := m.wait(migrateTimeout)
	if r.status != 1 {
		t.Errorf("govmm migrate exited with status %d after the destination died, want 1", r.status)
	}
	if !strings.Contains(r.output, "govmm: migration failed") {
		t.Errorf("govmm migrate's output has no \"govmm: migration failed\" line:\n%s", r.output)
	}
	if r.report != nil && len(r.report.Rounds) > 0 && r.report.Rounds[len(r.report.Rounds)-1].Final {
		t.Errorf("the report of the failed migration has a final round: the source paused the guest")
	}

	// The guest still runs on the source: the dirtier goes on and
	// the shell answers.
	select {
	case <-src.done:
		t.Fatal("the source govmm exited after the failed migration")
	default:
	}
	// last first: a heartbeat printed between the two calls is then
	// skipped rather than counted and seen again.
	last := src.lastHeartbeat()
	src.skipOutput()
	p := src.heartbeatAfter(last)
	t.Logf("dirtier: pass %d when the migration failed, pass %d after", last, p)
	src.typeLine("echo $((6*7))-src")
	src.expect("42-src", replyTimeout)

	// And it can still migrate.
	addr = freeAddr(t)
	dst = startReceiver(t, e, "dst2", addr)
	migrate(t, e, api, addr)
	if status := src.wait(exitTimeout); status != 0 {
		t.Errorf("source govmm exited with status %d after the second migration, want 0", status)
	}
	dst.heartbeatAfter(src.lastHeartbeat())
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		t.Errorf("destination govmm exited with status %d after guest poweroff, want 0", status)
	}
	src.checkNoMismatch("source")
	dst.checkNoMismatch("destination")
}

// garbageStream connects to a fresh `govmm receive` as a plain TCP client,
// sends stream and expects the receiver to exit with a status other than 0
// and a "govmm: " line on stderr that mentions mention.
func garbageStream(t testing.TB, e env, stream []byte, mention string) {
	addr := freeAddr(t)
	r := startReceiver(t, e, "receive", addr)
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The receiver may stop reading after the header and close, so a
	// failed write past the first bytes is no error of the test's.
	if _, err := conn.Write(stream); err != nil {
		t.Logf("writing the stream: %v", err)
	}
	if status := r.wait(badInputTimeout); status == 0 {
		t.Errorf("govmm receive exited with status 0 after a bad stream, want non-zero")
	}
	var named bool
	for _, line := range strings.Split(r.stderr.String(), "\n") {
		named = named || strings.HasPrefix(line, "govmm: ") && strings.Contains(strings.ToLower(line), strings.ToLower(mention))
	}
	if !named {
		t.Errorf("no \"govmm: \" line on stderr mentions %q:\n%s", mention, r.stderr.String())
	}
}
