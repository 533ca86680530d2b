package testhost

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLinuxInTestHost is the outer end-to-end test: it builds govmm and the
// scenarios of ./tests/linux, boots the test host once and runs all the
// scenarios in it (or directly, on hardware KVM). Set GOVMM_SKIP_TESTHOST=1
// to leave it out of a quick unit-test run; a missing tool is a failure,
// not a skip.
func TestLinuxInTestHost(t *testing.T) {
	if os.Getenv("GOVMM_SKIP_TESTHOST") == "1" {
		t.Skip("GOVMM_SKIP_TESTHOST=1")
	}
	mode, err := ModeFromEnv()
	if err != nil {
		t.Fatal(err)
	}
	// Leave room before go test's own deadline to report what happened.
	ctx := context.Background()
	limit := 30 * time.Minute // measured: 8 min for every scenario, boot retries included
	if d, ok := t.Deadline(); ok {
		if left := time.Until(d) - 30*time.Second; left < limit {
			limit = left
		}
	}
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()

	// With -v the test host's console streams live; otherwise only a
	// failure shows it, summary first (see reportFailure).
	var logw io.Writer = io.Discard
	if testing.Verbose() {
		live := &lineLogger{t: t}
		defer live.flush()
		logw = live
	}
	h, err := Prepare(ctx, Options{WorkDir: t.TempDir(), Log: logw, Mode: mode})
	if err != nil {
		t.Fatal(err)
	}
	prog, err := h.BuildTest(ctx, "./tests/linux")
	if err != nil {
		t.Fatal(err)
	}
	cpus, err := testHostCPUs()
	if err != nil {
		t.Fatal(err)
	}
	// The scenarios' own limit is shorter than ours, so a hung scenario
	// still prints Go's goroutine dump through the console.
	run := func(filter []string) (Result, error) {
		budget := time.Until(mustDeadline(ctx))
		res, err := h.Run(ctx, Scenario{
			Program: prog,
			Args:    append([]string{"-test.v", "-test.timeout", (budget - 20*time.Second).String()}, filter...),
			Console: logw,
			Timeout: budget,
			CPUs:    cpus,
		})
		t.Logf("test host ready after %.1fs; whole run %.1fs (mode %s)", res.Ready.Seconds(), res.Duration.Seconds(), h.Mode)
		return res, err
	}
	res, err := run(scenarioFilter())
	// A guest in the test host may still triple-fault at a random point
	// (QEMU-TCG's nested SVM; see tests/testhost/initramfs.go and the
	// Makefile for the causes found and avoided). tests/linux bootToShell
	// retries boots; this covers the rest of a scenario. When scenarios failed in
	// a run where a guest triple-faulted, they run once more, in a fresh
	// test host, and that second run decides. A failure of govmm's own
	// fails both runs.
	if failed := failedScenarios(res.Output); err == nil && res.Status != 0 && len(failed) > 0 && len(failed) <= 3 &&
		bytes.Contains(res.Output, []byte(tripleFault)) {
		reportFailure(t, res.Output)
		t.Logf("TEST-HOST FLAKE: %s failed in a run where a guest triple-faulted (nested TCG); running them once more", strings.Join(failed, ", "))
		res, err = run([]string{"-test.run", "^(" + strings.Join(failed, "|") + ")$"})
	}
	if err != nil {
		reportFailure(t, res.Output)
		t.Fatal(err)
	}
	if res.Status != 0 {
		reportFailure(t, res.Output)
		t.Fatalf("tests/linux exited with status %d", res.Status)
	}
	if !regexp.MustCompile(`(?m)^PASS\r?$`).Match(res.Output) {
		t.Fatal("tests/linux output has no PASS line")
	}
	if bytes.Contains(res.Output, []byte("--- SKIP")) {
		t.Fatal("a scenario skipped inside the test host, where everything it needs is provided")
	}
}

// testHostCPUs reads GOVMM_TESTHOST_CPUS, the test host's vCPUs (0, the
// default, means Scenario's default of 2). make test runs the migration
// scenarios in a one-CPU test host: see the Makefile.
func testHostCPUs() (int, error) {
	v := os.Getenv("GOVMM_TESTHOST_CPUS")
	if v == "" {
		return 0, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("GOVMM_TESTHOST_CPUS=%q: want a number of CPUs, 1 or more", v)
	}
	return n, nil
}

func mustDeadline(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// tripleFault is how govmm reports a guest that triple-faulted.
const tripleFault = "triple fault (KVM_EXIT_SHUTDOWN)"

// failedScenarios lists the top-level scenarios that failed in a run's
// output ("--- FAIL: TestX (1.23s)" at the start of a line).
func failedScenarios(output []byte) []string {
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^--- FAIL: (Test\w+)`).FindAllSubmatch(output, -1) {
		out = append(out, string(m[1]))
	}
	return out
}

// reportFailure logs, when not already shown live, which scenarios failed
// and why (their --- FAIL lines and error messages, without the console
// lines around them), then the last lines of the whole output.
func reportFailure(t *testing.T, output []byte) {
	if testing.Verbose() {
		return
	}
	lines := strings.Split(strings.ReplaceAll(string(output), "\r", ""), "\n")
	var summary []string
	for _, l := range lines {
		trimmed := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(trimmed, "--- FAIL"), strings.HasPrefix(trimmed, "panic:"):
			summary = append(summary, l)
		case scenarioMessage.MatchString(trimmed) && !consoleLine.MatchString(trimmed):
			summary = append(summary, l)
		case consoleLine.MatchString(trimmed) && govmmComplaint.MatchString(trimmed):
			summary = append(summary, l) // govmm's own error line on a stderr
		}
	}
	t.Logf("failures reported by the scenarios:\n%s", strings.Join(summary, "\n"))
	const tail = 150
	t.Logf("last %d lines of the test host's output:\n%s", tail, strings.Join(lines[max(0, len(lines)-tail):], "\n"))
}

var (
	scenarioMessage = regexp.MustCompile(`^\w+_test\.go:\d+: `) // a t.Log/t.Error line
	govmmComplaint  = regexp.MustCompile(`govmm: .*(?i:fail|error|crash|refus|invalid|cannot|can't)`)
	consoleLine     = regexp.MustCompile(`^\w+_test\.go:\d+: (\S+ )?(console|stderr|migrate):( |$)`) // a console echo
)

// lineLogger passes a byte stream to t.Logf line by line (live with -v).
type lineLogger struct {
	t   *testing.T
	mu  sync.Mutex
	buf []byte
}

func (l *lineLogger) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		l.t.Log(strings.TrimRight(string(l.buf[:i]), "\r"))
		l.buf = l.buf[i+1:]
	}
}

func (l *lineLogger) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.t.Log(string(l.buf))
		l.buf = nil
	}
}

// scenarioFilter selects scenarios from the environment: GOVMM_TESTHOST_RUN
// and GOVMM_TESTHOST_SKIP become go test's -test.run and -test.skip. `make
// test` runs the migration scenarios apart from the others, in a one-CPU
// test host (GOVMM_TESTHOST_CPUS=1; see the Makefile for why).
func scenarioFilter() []string {
	var args []string
	if re := os.Getenv("GOVMM_TESTHOST_RUN"); re != "" {
		args = append(args, "-test.run", re)
	}
	if re := os.Getenv("GOVMM_TESTHOST_SKIP"); re != "" {
		args = append(args, "-test.skip", re)
	}
	return args
}

func TestFailedScenarios(t *testing.T) {
	out := []byte("=== RUN   TestA\r\n--- PASS: TestA (1.00s)\r\n    --- FAIL: TestB/sub (0.1s)\r\n--- FAIL: TestB (2.00s)\r\n--- FAIL: TestC_d (3.00s)\r\nFAIL\r\n")
	if got := strings.Join(failedScenarios(out), ","); got != "TestB,TestC_d" {
		t.Errorf("failedScenarios = %q, want TestB,TestC_d", got)
	}
}
