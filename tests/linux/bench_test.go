package linux

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// BenchmarkMigration is issue 3's benchmark: it migrates an idle 512 MiB
// guest and one whose dirtier rewrites 64 MiB continuously, under govmm and
// under QEMU side by side: the same kernel, initramfs (govmm's) and
// workload, QEMU's microvm machine on the same nested KVM, and the same
// tunables (128 MiB/s, 300 ms downtime limit, both defaults of govmm
// migrate). It reports total time, downtime, rounds (QEMU: dirty-log
// syncs) and bytes on the wire per byte of guest RAM, then prints a table
// with govmm/QEMU ratios. After each migration the destination must answer
// on its shell and, with the dirtier, go on beating: a figure from a guest
// that did not survive would mean nothing.
//
// Run it once in the test host with `make bench` (go test -bench
// Migration -benchtime 1x), which puts QEMU there. Inside the test host
// every figure is slowed down by TCG; only the ratios mean something.
func BenchmarkMigration(b *testing.B) {
	e := needEnv(b)
	qemu := needQEMU(b)
	initrd := benchInitrd(b, e)
	cases := []struct {
		name string
		mib  int // dirtier size, 0 = idle guest
	}{{"idle-512MiB", 0}, {"dirty-64MiB", 64}}
	results := map[string]migrationFigures{}
	for _, c := range cases {
		for _, vmm := range []string{"govmm", "qemu"} {
			name := c.name + "-" + vmm
			b.Run(name, func(b *testing.B) {
				for range b.N {
					var f migrationFigures
					if vmm == "govmm" {
						f = benchMigrateGovmm(b, e, c.mib)
					} else {
						f = benchMigrateQEMU(b, e, qemu, initrd, c.mib)
					}
					results[name] = f
					b.ReportMetric(float64(f.total.Milliseconds()), "total-ms")
					b.ReportMetric(float64(f.downtime.Milliseconds()), "downtime-ms")
					b.ReportMetric(float64(f.rounds), "rounds")
					b.ReportMetric(f.wirePerRAM(), "wire/RAM")
				}
			})
		}
	}
	var t strings.Builder
	fmt.Fprintf(&t, "\n%-12s %-6s %10s %12s %7s %9s\n", "guest", "vmm", "total ms", "downtime ms", "rounds", "wire/RAM")
	for _, c := range cases {
		g, q := results[c.name+"-govmm"], results[c.name+"-qemu"]
		for _, r := range []struct {
			vmm string
			f   migrationFigures
		}{{"govmm", g}, {"qemu", q}} {
			fmt.Fprintf(&t, "%-12s %-6s %10d %12d %7d %9.3f\n", c.name, r.vmm, r.f.total.Milliseconds(), r.f.downtime.Milliseconds(), r.f.rounds, r.f.wirePerRAM())
		}
		fmt.Fprintf(&t, "%-12s %-6s %9.2fx %11.2fx %7s %8.2fx\n", c.name, "ratio",
			ratio(g.total.Seconds(), q.total.Seconds()), ratio(g.downtime.Seconds(), q.downtime.Seconds()), "",
			ratio(g.wirePerRAM(), q.wirePerRAM()))
	}
	b.Log(t.String())
}

// migrationFigures are one migration's figures, from govmm's --json report
// or from QEMU's query-migrate.
type migrationFigures struct {
	total, downtime time.Duration
	rounds          int
	wire, ram       uint64
}

func (f migrationFigures) wirePerRAM() float64 { return ratio(float64(f.wire), float64(f.ram)) }

// ratio is a/b, or 0 when b is (a run that failed has no figures).
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// benchMigrateGovmm boots a guest with govmm (starting the dirtier if
// dirtierMiB > 0), migrates it to a `govmm receive` and checks that it
// lives on there.
func benchMigrateGovmm(b *testing.B, e env, dirtierMiB int) migrationFigures {
	api := filepath.Join(b.TempDir(), "src.sock")
	src := bootToShell(b, "src", e.govmm, "run", "--api", api, "--cmdline", "quiet", "--modules", e.modules, e.kernel)
	if dirtierMiB > 0 {
		startBenchDirtier(src, dirtierMiB)
	}
	waitAPI(b, src, api)
	addr := freeAddr(b)
	dst := startReceiver(b, e, "dst", addr)
	b.ResetTimer()
	rep := migrate(b, e, api, addr)
	b.StopTimer()
	if status := src.wait(exitTimeout); status != 0 {
		b.Errorf("source exited with status %d after migrating", status)
	}
	checkMigratedGuest(dst, src.lastHeartbeat(), dirtierMiB > 0)
	return migrationFigures{total: rep.TotalTime, downtime: rep.Downtime, rounds: len(rep.Rounds), wire: rep.WireBytes, ram: rep.GuestRAM}
}

// benchMigrateQEMU does the same with QEMU at both ends, driven through QMP
// as a user of QEMU would: a destination started with -incoming, then
// migrate-set-parameters and migrate on the source, and query-migrate until
// it completes.
func benchMigrateQEMU(b *testing.B, e env, qemu, initrd string, dirtierMiB int) migrationFigures {
	dir := b.TempDir()
	srcQMP, dstQMP := filepath.Join(dir, "src.qmp"), filepath.Join(dir, "dst.qmp")
	src := bootToShell(b, "src", qemu, append(qemuArgs(e, initrd), "-qmp", "unix:"+srcQMP+",server=on,wait=off")...)
	if dirtierMiB > 0 {
		startBenchDirtier(src, dirtierMiB)
	}
	addr := freeAddr(b)
	dst := startGovmm(b, qemu, append(qemuArgs(e, initrd), "-qmp", "unix:"+dstQMP+",server=on,wait=off", "-incoming", "tcp:"+addr)...).named("dst")
	waitTCP(b, dst, addr, tcpListen)
	q := dialQMP(b, srcQMP)
	q.run("migrate-set-parameters", map[string]any{"max-bandwidth": 128 << 20, "downtime-limit": 300}, nil)
	b.ResetTimer()
	q.run("migrate", map[string]any{"uri": "tcp:" + addr}, nil)
	var info qemuMigration
	for deadline := time.Now().Add(migrateTimeout); ; {
		q.run("query-migrate", nil, &info)
		if info.Status == "completed" || info.Status == "failed" || info.Status == "cancelled" {
			break
		}
		if time.Now().After(deadline) {
			b.Fatalf("QEMU migration still %q after %v", info.Status, migrateTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
	b.StopTimer()
	if info.Status != "completed" {
		b.Fatalf("QEMU migration %s: %s", info.Status, info.ErrorDesc)
	}
	b.Logf("QEMU migration: total %d ms, downtime %d ms, %d dirty-log syncs, %.1f MiB on the wire for %d MiB of guest RAM",
		info.TotalTime, info.Downtime, info.RAM.DirtySyncCount, float64(info.RAM.Transferred)/(1<<20), info.RAM.Total>>20)
	// The source stays paused after a migration (QEMU's "postmigrate"
	// state) until told to quit.
	q.run("quit", nil, nil)
	if status := src.wait(exitTimeout); status != 0 {
		b.Errorf("QEMU source exited with status %d after quit", status)
	}
	checkMigratedGuest(dst, src.lastHeartbeat(), dirtierMiB > 0)
	return migrationFigures{
		total:    time.Duration(info.TotalTime) * time.Millisecond,
		downtime: time.Duration(info.Downtime) * time.Millisecond,
		rounds:   int(info.RAM.DirtySyncCount),
		wire:     info.RAM.Transferred,
		ram:      info.RAM.Total,
	}
}

// startBenchDirtier starts the dirtier with a heartbeat every 4096 passes,
// which keeps the console quiet, and waits for its first beat.
func startBenchDirtier(v *vm, mib int) {
	v.t.Helper()
	v.typeLine(fmt.Sprintf("/init dirtier --mib %d --heartbeat 4096 &", mib))
	v.expect("dirtier: dirtying", replyTimeout)
	v.nextHeartbeat()
}

// checkMigratedGuest requires the migrated guest to answer on its shell
// and, if it runs the dirtier, to beat past the source's last heartbeat
// with its memory intact; then it powers the guest off.
func checkMigratedGuest(dst *vm, lastOnSource uint64, dirtier bool) {
	dst.t.Helper()
	if dirtier {
		dst.heartbeatAfter(lastOnSource)
	}
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		dst.t.Errorf("destination exited with status %d after poweroff", status)
	}
}
