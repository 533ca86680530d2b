package linux

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"govmm/migration"
)

// BenchmarkMigration is issue 3's benchmark: it migrates an idle 512 MiB
// guest and one whose dirtier rewrites 64 MiB continuously, with govmm's
// default tunables (128 MiB/s, 300 ms downtime limit), and reports total
// time, downtime, rounds and bytes on the wire per byte of guest RAM.
// Run it once in the test host with `make bench` (go test -bench
// Migration -benchtime 1x). Inside the test host every figure is slowed
// down by TCG; compare figures of one run with each other, not with a
// laptop's.
func BenchmarkMigration(b *testing.B) {
	for _, c := range []struct {
		name string
		mib  int // dirtier size, 0 = idle guest
	}{{"idle-512MiB", 0}, {"dirty-64MiB", 64}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				rep := benchMigrateOnce(b, c.mib)
				ratio := float64(rep.WireBytes) / float64(rep.GuestRAM)
				b.ReportMetric(float64(rep.TotalTime.Milliseconds()), "total-ms")
				b.ReportMetric(float64(rep.Downtime.Milliseconds()), "downtime-ms")
				b.ReportMetric(float64(len(rep.Rounds)), "rounds")
				b.ReportMetric(ratio, "wire/RAM")
				b.Logf("%s: total %v, downtime %v, %d rounds (%s), %.1f MiB on the wire for %d MiB of RAM (%.3fx)",
					c.name, rep.TotalTime.Round(time.Millisecond), rep.Downtime.Round(time.Millisecond),
					len(rep.Rounds), rep.StopReason, float64(rep.WireBytes)/(1<<20), rep.GuestRAM>>20, ratio)
			}
		})
	}
}

func benchMigrateOnce(b *testing.B, dirtierMiB int) *migration.Report {
	e := needEnv(b)
	api := filepath.Join(b.TempDir(), "src.sock")
	src := bootToShell(b, "src", e.govmm, "run", "--api", api, "--cmdline", "quiet", "--modules", e.modules, e.kernel)
	if dirtierMiB > 0 {
		// A heartbeat per 4096 passes keeps the console quiet.
		src.typeLine(fmt.Sprintf("/init dirtier --mib %d --heartbeat 4096 &", dirtierMiB))
		src.expect("dirtier: dirtying", replyTimeout)
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
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		b.Errorf("destination exited with status %d after poweroff", status)
	}
	return rep
}
