package linux

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
)

// KVM's own view of a guest that triple-faults. A triple fault resets the
// vCPU (KVM on AMD re-initialises it), so govmm's crash report can only
// show the reset state; the test host's KVM, though, has trace points
// (arch/x86/kvm/trace.h, read through tracefs: kernel
// Documentation/trace/events.rst) that record every exit with the guest's
// RIP, every exception KVM injects and every page fault it handles. With
// -kvm-trace, the tests switch them on and, when a guest triple-faults,
// log what its vCPU did last.

var kvmTraceFlag = flag.Bool("kvm-trace", false, "record KVM trace events in the test host and log a triple-faulting vCPU's last ones")

const tracefs = "/sys/kernel/tracing"

// kvmTraceEvents are the trace points switched on.
var kvmTraceEvents = []string{
	"kvm/kvm_exit", "kvm/kvm_entry", "kvm/kvm_inj_exception", "kvm/kvm_page_fault",
	"kvm/kvm_userspace_exit", "kvm/kvm_set_irq", "kvm/kvm_inj_virq", "kvm/kvm_msr",
	"kvm/kvm_cr", "kvm/kvm_mmio", "kvm/kvm_pio", "kvm/kvm_fpu", "kvm/kvm_apic_accept_irq",
}

var kvmTraceOnce sync.Once

// startKVMTrace switches the trace points on, once per test binary, if
// -kvm-trace was given.
func startKVMTrace(t testing.TB) {
	if !*kvmTraceFlag {
		return
	}
	kvmTraceOnce.Do(func() {
		if _, err := os.Stat(filepath.Join(tracefs, "trace")); err != nil {
			os.MkdirAll(tracefs, 0o755)
			if out, err := exec.Command("mount", "-t", "tracefs", "tracefs", tracefs).CombinedOutput(); err != nil {
				t.Logf("kvm-trace: mount tracefs: %v %s", err, out)
				return
			}
		}
		write := func(name, value string) {
			if err := os.WriteFile(filepath.Join(tracefs, name), []byte(value), 0o644); err != nil {
				t.Logf("kvm-trace: %s: %v", name, err)
			}
		}
		write("buffer_size_kb", "32768")
		for _, e := range kvmTraceEvents {
			write(filepath.Join("events", e, "enable"), "1")
		}
		write("tracing_on", "1")
		t.Logf("kvm-trace: recording %s", strings.Join(kvmTraceEvents, " "))
	})
}

// shutdownRE finds the exit to userspace that reports a triple fault; its
// task field ("govmm-1234") names the vCPU thread.
var shutdownRE = regexp.MustCompile(`^\s*(\S+-\d+)\s.*kvm_userspace_exit: reason KVM_EXIT_SHUTDOWN`)

// kvmTraceKeep is how many of a thread's last events are logged.
const kvmTraceKeep = 300

// logKVMTrace logs the last trace events of every vCPU thread that exited
// with KVM_EXIT_SHUTDOWN, and then clears the trace.
func logKVMTrace(t testing.TB) {
	if !*kvmTraceFlag {
		return
	}
	tail, shut := readKVMTrace(t, func(string) bool { return true })
	if len(shut) == 0 {
		t.Logf("kvm-trace: no KVM_EXIT_SHUTDOWN in the trace")
	}
	for _, task := range shut {
		t.Logf("kvm-trace: the last events of %s before its triple fault:\n%s", task, strings.Join(tail[task+"@shutdown"], "\n"))
	}
}

// logKVMTraceOf logs the last trace events of the threads of process pid
// (a hung guest's govmm), and then clears the trace.
func logKVMTraceOf(t testing.TB, pid int) {
	if !*kvmTraceFlag {
		return
	}
	tids, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	mine := map[string]bool{}
	for _, tid := range tids {
		mine[tid.Name()] = true
	}
	tail, _ := readKVMTrace(t, func(task string) bool {
		_, tid, _ := strings.Cut(task[strings.LastIndexByte(task, '-'):], "-")
		return mine[tid]
	})
	for task, lines := range tail {
		if !strings.HasSuffix(task, "@shutdown") {
			t.Logf("kvm-trace: the last events of %s:\n%s", task, strings.Join(lines, "\n"))
		}
	}
}

// readKVMTrace reads the trace (with recording paused) and returns the
// last kvmTraceKeep lines of each task that want accepts, plus, under
// "TASK@shutdown", those before each task's triple fault, whose tasks it
// lists in shut. It clears the trace after reading.
func readKVMTrace(t testing.TB, want func(task string) bool) (tail map[string][]string, shut []string) {
	os.WriteFile(filepath.Join(tracefs, "tracing_on"), []byte("0"), 0o644)
	defer os.WriteFile(filepath.Join(tracefs, "tracing_on"), []byte("1"), 0o644)
	defer os.WriteFile(filepath.Join(tracefs, "trace"), nil, 0o644) // clears it
	f, err := os.Open(filepath.Join(tracefs, "trace"))
	if err != nil {
		t.Logf("kvm-trace: %v", err)
		return nil, nil
	}
	defer f.Close()
	tail = map[string][]string{}
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for s.Scan() {
		line := s.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 || strings.HasPrefix(line, "#") || !strings.Contains(fields[0], "-") || !want(fields[0]) {
			continue
		}
		task := fields[0]
		l := append(tail[task], line)
		if len(l) > 2*kvmTraceKeep {
			l = append(l[:0:0], l[len(l)-kvmTraceKeep:]...)
		}
		tail[task] = l
		if m := shutdownRE.FindStringSubmatch(line); m != nil {
			shut = append(shut, task)
			tail[task+"@shutdown"] = append([]string(nil), l[max(0, len(l)-kvmTraceKeep):]...)
		}
	}
	for task, l := range tail {
		tail[task] = l[max(0, len(l)-kvmTraceKeep):]
	}
	return tail, shut
}
