package linux

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"govmm/migration"
	"govmm/vmm/control"
)

// Helpers of the migration scenarios (migration_test.go): the guest's
// dirtier, the two ends of a migration (`govmm receive`, `govmm migrate`)
// and their readiness, without depending on the wording of govmm's
// progress messages: a receiver is ready when the kernel lists its
// listening socket, a migration is under way when the kernel lists the
// connection.

const (
	// migrateTimeout bounds one `govmm migrate`. Measured in the test
	// host: round 1 of a 512 MiB guest sends 115-140 MiB of non-zero
	// pages (kernel, initramfs, the dirtier's 64 MiB) in 6-17 s, the
	// stream peaks at 20-40 MiB/s under TCG, and a whole migration with
	// the dirtier running took 7-26 s.
	migrateTimeout = 3 * time.Minute
	// heartbeatTimeout bounds the wait for one dirtier heartbeat (8
	// passes over 64 MiB): measured every 0.2-3 s in the test host, also
	// while KVM's dirty log is on (every first write to a page in a round
	// then faults, which under TCG is slow).
	heartbeatTimeout = 60 * time.Second
	// listenTimeout bounds the wait for a govmm socket to appear.
	listenTimeout = 30 * time.Second
)

// heartbeatRE matches a dirtier heartbeat or its report of lost memory
// (package guest, Dirtier). The shell's echo of a typed command never
// holds "dirtier: ".
var heartbeatRE = regexp.MustCompile(`dirtier: (?:pass (\d+) ok|(MEMORY MISMATCH[^\r\n]*))`)

// named sets the prefixes of v's logged output, so that the logs of two
// VMs alive at once (source and destination) can be told apart.
func (v *vm) named(name string) *vm {
	for _, c := range []*console{v.out, v.stderr} {
		c.mu.Lock()
		c.prefix = name + " " + c.prefix
		c.mu.Unlock()
	}
	return v
}

// startDirtier starts the migration-test workload in the guest's shell in
// the background (/init is govmm, which runs it as `govmm dirtier`) and
// waits for its first two heartbeats.
func (v *vm) startDirtier(mib, heartbeat int) {
	v.t.Helper()
	v.typeLine(fmt.Sprintf("/init dirtier --mib %d --heartbeat %d &", mib, heartbeat))
	v.expect("dirtier: dirtying", replyTimeout)
	v.nextHeartbeat()
	v.nextHeartbeat()
}

// nextHeartbeat waits for the next dirtier heartbeat on v's console and
// returns its pass number. A MEMORY MISMATCH line instead ends the test.
func (v *vm) nextHeartbeat() uint64 {
	v.t.Helper()
	m, err := v.out.expect(heartbeatRE, heartbeatTimeout, v.done)
	if err != nil {
		v.probe()
		v.t.Fatalf("waiting for a dirtier heartbeat: %v", err)
	}
	if m[2] != "" {
		v.t.Fatalf("the dirtier found guest memory corrupted: %s", m[2])
	}
	pass, err := strconv.ParseUint(m[1], 10, 64)
	if err != nil {
		v.t.Fatalf("heartbeat %q: %v", m[0], err)
	}
	return pass
}

// probe tells apart, when heartbeats stop, a guest that no longer runs or
// no longer prints (its console stays silent) from a dirtier that stopped
// in a running guest (the shell answers, and ps shows the dirtier's state:
// R running, S sleeping, D blocked, e.g. on a console write that never
// completes).
func (v *vm) probe() {
	v.t.Helper()
	select {
	case <-v.done:
		return
	default:
	}
	v.typeLine("echo probe-$((40+2)); ps | grep '[d]irtier'")
	if _, err := v.out.expect(literal("probe-42"), replyTimeout, v.done); err != nil {
		v.t.Errorf("probe: the guest's shell does not answer either (%v): the guest is hung or its console is stuck", err)
		v.diagnoseHang()
		return
	}
	time.Sleep(2 * time.Second) // let ps print
	v.t.Errorf("probe: the guest's shell answers, so the dirtier stopped in a running guest; see ps above")
}

// diagnoseHang logs what a guest that stopped answering is doing, then
// ends its govmm: where the vCPUs are, through the control socket (GET
// /vcpus), twice a second apart (a guest spinning in one place, halted for
// good or moving on shows here), and what every goroutine of govmm is
// doing, from the stack dump the Go runtime prints on SIGQUIT (startGovmm
// sets GOTRACEBACK=all). A vCPU blocked in an exit handler, or a device
// goroutine stuck on a lock, shows only in the second.
func (v *vm) diagnoseHang() {
	v.t.Helper()
	if v.api != "" {
		for i := range 2 {
			reports, err := control.Dial(v.api).VCPUs()
			if err != nil {
				v.t.Logf("GET /vcpus: %v", err)
				break
			}
			for _, r := range reports {
				v.t.Logf("vCPUs of the guest that stopped (look %d):\n%s", i+1, r)
			}
			time.Sleep(time.Second)
		}
	}
	logKVMTraceOf(v.t, v.cmd.Process.Pid)
	v.t.Logf("sending SIGQUIT to %s for its goroutines' stacks (on its stderr)", filepath.Base(v.cmd.Path))
	v.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-v.done:
	case <-time.After(10 * time.Second):
		v.cmd.Process.Kill()
		<-v.done
	}
}

// heartbeatAfter waits for a heartbeat with a pass number above last,
// the last one seen before a migration, and returns it. On a console that
// starts after that point (a destination's, or the source's after
// skipOutput), a heartbeat at or below last means the guest ran an earlier
// part of its life again (its memory went back in time): an error, though
// the test waits on.
func (v *vm) heartbeatAfter(last uint64) uint64 {
	v.t.Helper()
	for {
		p := v.nextHeartbeat()
		if p > last {
			return p
		}
		v.t.Errorf("heartbeat of pass %d after the migration, but pass %d was already seen before it", p, last)
	}
}

// skipOutput makes the next expect on v's console look only at output
// that arrives from now on. A test calls it on a console whose older
// heartbeats it has not consumed but must not count (the source's, after
// a failed migration).
func (v *vm) skipOutput() {
	v.out.mu.Lock()
	v.out.cursor = v.out.buf.Len()
	v.out.mu.Unlock()
}

// lastHeartbeat is the highest pass number in v's whole console output (0
// if none), regardless of what expect has consumed.
func (v *vm) lastHeartbeat() uint64 {
	var last uint64
	for _, m := range heartbeatRE.FindAllStringSubmatch(v.out.String(), -1) {
		if p, err := strconv.ParseUint(m[1], 10, 64); err == nil && p > last {
			last = p
		}
	}
	return last
}

// checkNoMismatch fails the test if the dirtier ever reported lost memory
// on v's console.
func (v *vm) checkNoMismatch(name string) {
	v.t.Helper()
	for _, m := range heartbeatRE.FindAllStringSubmatch(v.out.String(), -1) {
		if m[2] != "" {
			v.t.Errorf("%s console: dirtier: %s", name, m[2])
		}
	}
}

// freeAddr returns a loopback TCP address that was free a moment ago.
// (The test host's /init brings the loopback interface up.)
func freeAddr(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startReceiver starts `govmm receive --listen addr [extra...]` and waits
// until it listens. Probing the port by connecting would not do: the
// receiver takes the first connection as the migration.
func startReceiver(t testing.TB, e env, name, addr string, extra ...string) *vm {
	t.Helper()
	v := startGovmm(t, e.govmm, append([]string{"receive", "--listen", addr}, extra...)...).named(name)
	waitTCP(t, v, addr, tcpListen)
	return v
}

// TCP states in /proc/net/tcp (include/net/tcp_states.h).
const (
	tcpEstablished = "01" // TCP_ESTABLISHED
	tcpListen      = "0A" // TCP_LISTEN
)

// waitTCP waits until the kernel lists a socket with local address addr in
// state (see proc(5), /proc/net/tcp), or until v exits.
func waitTCP(t testing.TB, v *vm, addr, state string) {
	t.Helper()
	want, err := procNetAddr(addr)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(listenTimeout)
	for {
		found, err := tcpSocketIn(v.cmd.Process.Pid, want, state)
		if err != nil {
			t.Fatal(err)
		}
		if found {
			return
		}
		select {
		case <-v.done:
			t.Fatalf("govmm exited before a socket on %s reached state %s", addr, state)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no socket on %s in state %s after %v", addr, state, listenTimeout)
		}
	}
}

// procNetAddr writes an IPv4 address the way /proc/net/tcp does: the
// address as a host-order (little-endian on x86) 32-bit hex number, then
// the port in hex, e.g. 127.0.0.1:8080 is "0100007F:1F90".
func procNetAddr(addr string) (string, error) {
	ap, err := net.ResolveTCPAddr("tcp4", addr)
	if err != nil {
		return "", err
	}
	ip := ap.IP.To4()
	if ip == nil {
		return "", fmt.Errorf("%s is not an IPv4 address", addr)
	}
	return fmt.Sprintf("%02X%02X%02X%02X:%04X", ip[3], ip[2], ip[1], ip[0], ap.Port), nil
}

// tcpSocketIn reports whether a TCP socket with local address local (in
// /proc/net/tcp's hex form) is in state. It reads the table of pid's
// network namespace, not /proc/net/tcp:
// that is the namespace of this process's main thread, which a test's
// client namespace (taptest.NetNS) may have taken over.
func tcpSocketIn(pid int, local, state string) (bool, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/net/tcp", pid))
	if err != nil {
		return false, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		// sl local_address rem_address st ...
		fields := strings.Fields(s.Text())
		if len(fields) > 3 && fields[1] == local && fields[3] == state {
			return true, nil
		}
	}
	return false, s.Err()
}

// waitAPI waits until the control socket at path accepts connections.
func waitAPI(t testing.TB, v *vm, path string) {
	t.Helper()
	deadline := time.Now().Add(listenTimeout)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			c.Close()
			v.api = path
			return
		}
		select {
		case <-v.done:
			t.Fatalf("govmm exited before its control socket %s accepted connections", path)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("control socket %s: %v (after %v)", path, err, listenTimeout)
		}
	}
}

// migrateRun is one `govmm migrate`, started by startMigrate.
type migrateRun struct {
	t    testing.TB
	cmd  *exec.Cmd
	out  *console // stdout and stderr together
	json string   // the --json report file
	done chan struct{}
	err  error // cmd.Wait's result, valid after done
}

// migrateResult is what a finished `govmm migrate` left.
type migrateResult struct {
	status int
	output string
	report *migration.Report // nil if --json wrote nothing readable
}

// startMigrate starts `govmm migrate --api api --to to --json FILE
// [extra...]` without waiting for it. Tests (not benchmarks, whose
// downtime it would lengthen) add --verify: the destination then refuses
// a guest whose RAM differs from the source's in any page, naming the
// pages, instead of running it into a crash later.
func startMigrate(t testing.TB, e env, api, to string, extra ...string) *migrateRun {
	t.Helper()
	m := &migrateRun{t: t, out: newConsole(t, "migrate"), json: filepath.Join(t.TempDir(), "report.json"), done: make(chan struct{})}
	args := append([]string{"migrate", "--api", api, "--to", to, "--json", m.json}, extra...)
	if _, bench := t.(*testing.B); !bench {
		args = append(args, "--verify")
	}
	m.cmd = exec.Command(e.govmm, args...)
	m.cmd.Stdout, m.cmd.Stderr = m.out, m.out
	m.cmd.WaitDelay = 5 * time.Second
	t.Logf("starting %s %s", e.govmm, strings.Join(args, " "))
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		m.err = m.cmd.Wait()
		m.out.flush()
		close(m.done)
	}()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			t.Log("killing govmm migrate, still running at the end of the test")
			m.cmd.Process.Kill()
			<-m.done
		}
	})
	return m
}

// wait waits for migrate to exit and returns its status, output and report.
func (m *migrateRun) wait(timeout time.Duration) migrateResult {
	m.t.Helper()
	select {
	case <-m.done:
	case <-time.After(timeout):
		m.t.Fatalf("govmm migrate still running after %v", timeout)
	}
	r := migrateResult{output: m.out.String()}
	var exit *exec.ExitError
	switch {
	case errors.As(m.err, &exit) && exit.Exited():
		r.status = exit.ExitCode()
	case m.err != nil:
		m.t.Fatalf("govmm migrate: %v", m.err)
	}
	if data, err := os.ReadFile(m.json); err == nil {
		var rep migration.Report
		if err := json.Unmarshal(data, &rep); err != nil {
			m.t.Errorf("--json report: %v\n%s", err, data)
		} else {
			r.report = &rep
		}
	}
	return r
}

// migrate runs `govmm migrate` to the end and requires success: status 0
// and a consistent report, which it logs and returns.
func migrate(t testing.TB, e env, api, to string, extra ...string) *migration.Report {
	t.Helper()
	start := time.Now()
	r := startMigrate(t, e, api, to, extra...).wait(migrateTimeout)
	if r.status != 0 {
		t.Fatalf("govmm migrate exited with status %d, want 0", r.status)
	}
	if r.report == nil {
		t.Fatal("govmm migrate succeeded but wrote no --json report")
	}
	checkReport(t, r.report)
	logReport(t, r.report, time.Since(start))
	if _, bench := t.(*testing.B); !bench && !r.report.Verified {
		t.Error("the migration succeeded but its report says the destination did not verify RAM (--verify)")
	}
	return r.report
}

// checkReport checks what holds for every successful migration: rounds
// numbered 1..n, only the last one final, round 1 covering all of guest
// RAM, and times and byte counts that add up.
func checkReport(t testing.TB, rep *migration.Report) {
	t.Helper()
	if len(rep.Rounds) == 0 {
		t.Fatal("report has no rounds")
	}
	for i, r := range rep.Rounds {
		if r.Number != i+1 {
			t.Errorf("round %d has number %d", i+1, r.Number)
		}
		if final := i == len(rep.Rounds)-1; r.Final != final {
			t.Errorf("round %d: final = %v, want %v", r.Number, r.Final, final)
		}
	}
	// Round 1 considers every page once: sent with data, sent as a zero
	// page, or skipped because it was dirtied again meanwhile.
	r1 := rep.Rounds[0]
	if pages := rep.GuestRAM / migration.PageSize; r1.PagesSent+r1.ZeroPages+r1.PagesSkipped != pages {
		t.Errorf("round 1: %d sent + %d zero + %d skipped pages, want the %d pages of guest RAM",
			r1.PagesSent, r1.ZeroPages, r1.PagesSkipped, pages)
	}
	var sum uint64
	for _, r := range rep.Rounds {
		sum += r.Bytes
	}
	switch {
	case rep.GuestRAM == 0:
		t.Error("report: guest_ram_bytes is 0")
	case rep.StopReason == "":
		t.Error("report: stop_reason is empty")
	case sum > rep.WireBytes:
		t.Errorf("report: the rounds' bytes add up to %d, more than wire_bytes %d", sum, rep.WireBytes)
	case rep.Downtime <= 0 || rep.Downtime > rep.TotalTime:
		t.Errorf("report: downtime %v, total time %v", rep.Downtime, rep.TotalTime)
	}
}

func logReport(t testing.TB, rep *migration.Report, wall time.Duration) {
	t.Helper()
	for _, r := range rep.Rounds {
		t.Logf("  round %d final=%v: %d pages + %d zero, %d skipped, %d dirtied; %.1f MiB in %v (%.1f MiB/s, limit %.1f MiB/s)",
			r.Number, r.Final, r.PagesSent, r.ZeroPages, r.PagesSkipped, r.PagesDirtied,
			float64(r.Bytes)/(1<<20), r.Duration.Round(time.Millisecond), r.Bandwidth/(1<<20), r.RateLimit/(1<<20))
	}
	t.Logf("migration: %d rounds, stopped iterating: %s; downtime %v; total %v (wall %v); %.1f MiB on the wire for %d MiB of guest RAM (%.2fx)",
		len(rep.Rounds), rep.StopReason, rep.Downtime.Round(time.Millisecond), rep.TotalTime.Round(time.Millisecond),
		wall.Round(time.Millisecond), float64(rep.WireBytes)/(1<<20), rep.GuestRAM>>20,
		float64(rep.WireBytes)/float64(max(rep.GuestRAM, 1)))
}
