package guest

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"govmm/guest/kmod"
)

// Names the guest userland shows. Tests on the host wait for
// ShellReadyBanner on the serial console before typing.
const (
	Hostname         = "govmm"
	HelpLine         = "poweroff or Ctrl-D to stop the VM; Ctrl-A h for console keys"
	ShellReadyBanner = "govmm guest: shell ready"

	shellPATH = "/sbin:/bin:/usr/sbin:/usr/bin"
	shellPS1  = `govmm:\w# `
	shellTERM = "vt100" // a serial line: assume the least
)

// RunningAsInit reports whether this process is the guest's init, i.e.
// PID 1 in its PID namespace, the process the kernel started as /init.
// cmd/govmm calls Init instead of its CLI when this is true.
//
// argv[0] == "/init" alone is not taken as proof: Init powers the machine
// off when done, which must never happen on the host by accident.
func RunningAsInit() bool {
	return os.Getpid() == 1
}

// logf prints one line for the user on init's stderr, which the kernel
// connected to /dev/console.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "govmm-init: "+format+"\n", args...)
}

// Init is the guest's PID 1. It never returns: it ends with the power-off
// (or reboot, or halt) of the guest.
//
// The steps, each of which reports a failure as a "govmm-init:" line and
// carries on when it can:
//
//  1. mount /dev, /proc, /sys, /tmp, /run and /dev/pts (mountAll), and
//     read the govmm.* options of /proc/cmdline (OptionsFromCmdline);
//  2. load the modules of LoadListPath in order (loadModules), and
//     mount the virtio disks that hold a file system (MountDisks), and
//     bring up the network (configureNetwork);
//  3. set the hostname, print HelpLine and ShellReadyBanner;
//  4. start the shell on the serial console as a session leader with the
//     console as its controlling terminal (startShell);
//  5. reap every orphan and wait for the shell to exit or for a
//     poweroff/reboot/halt request (supervise), then shut down.
func Init() {
	if !RunningAsInit() {
		logf("not PID 1 (pid %d): refusing to act as init", os.Getpid())
		os.Exit(1)
	}
	// A panic in PID 1 would make the kernel panic with "Attempted to
	// kill init!". Turn it into a message and an orderly power-off.
	defer func() {
		if r := recover(); r != nil {
			logf("internal error: %v", r)
			shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF, "init failed")
		}
	}()

	// Take every signal a user or the kernel may send to init before any
	// child exists. A Go program exits on SIGTERM, SIGHUP, SIGINT and
	// SIGQUIT unless it asks for them (os/signal "Default behavior"), and
	// an exiting PID 1 panics the kernel. signal.Ignore would not do: an
	// ignored signal stays ignored in the shell we exec (execve(2)).
	sigs := make(chan os.Signal, 32)
	signal.Notify(sigs, unix.SIGCHLD, unix.SIGTERM, unix.SIGUSR1, unix.SIGUSR2,
		unix.SIGPWR, unix.SIGINT, unix.SIGHUP, unix.SIGQUIT,
		unix.SIGTSTP, unix.SIGTTIN, unix.SIGTTOU)

	mountAll()
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		logf("reading /proc/cmdline: %v; using defaults", err)
	}
	opts, unknown := OptionsFromCmdline(string(cmdline))
	for _, u := range unknown {
		logf("unknown kernel parameter %s ignored", u)
	}
	loadModules()
	MountDisks(opts)
	configureNetwork(opts)
	if err := unix.Sethostname([]byte(Hostname)); err != nil {
		logf("sethostname: %v", err)
	}

	shellPID := startShell(opts)
	if shellPID == 0 {
		shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF, "no shell could be started")
	}
	supervise(sigs, shellPID)
}

// mount is one entry of the mount table init sets up.
type mount struct {
	source, target, fstype string
	flags                  uintptr
	data                   string
}

// initMounts are the virtual file systems every Linux userland expects
// (systemd's mount-setup.c mounts much the same set). Order matters:
// /dev/pts lives inside /dev.
var initMounts = []mount{
	// devtmpfs: device nodes created by the kernel as drivers find devices
	// (Documentation/admin-guide/devices.rst), so no udev is needed.
	{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
	{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
	{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
	// devpts: pseudo-terminals for ssh, script, screen... gid 5 is "tty"
	// in our /etc/group (Documentation/filesystems/devpts.rst).
	{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"},
}

// mountAll mounts initMounts. EBUSY means something mounted it already,
// which is fine. The files init already holds open, its console, keep working when
// devtmpfs hides the initramfs's /dev.
func mountAll() {
	for _, m := range initMounts {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			logf("mkdir %s: %v", m.target, err)
		}
		err := unix.Mount(m.source, m.target, m.fstype, m.flags, m.data)
		if err != nil && !errors.Is(err, unix.EBUSY) {
			logf("mount %s on %s: %v", m.fstype, m.target, err)
		}
	}
	// The conventional links into /proc (shells use /dev/fd for
	// redirections like <(...)); missing ones are no great loss.
	for name, target := range map[string]string{
		"/dev/fd": "/proc/self/fd", "/dev/stdin": "/proc/self/fd/0",
		"/dev/stdout": "/proc/self/fd/1", "/dev/stderr": "/proc/self/fd/2",
	} {
		if err := os.Symlink(target, name); err != nil && !errors.Is(err, os.ErrExist) {
			logf("symlink %s: %v", name, err)
		}
	}
}

// loadModules loads every module listed in LoadListPath, in file order:
// the builder wrote dependencies first and pvpanic before everything else.
// A failure is reported and the next module is tried; a module whose
// dependency failed then fails too, with its own line, which is what the
// user needs to see.
func loadModules() {
	f, err := os.Open(LoadListPath)
	if errors.Is(err, os.ErrNotExist) {
		return // a custom initramfs without modules
	}
	if err != nil {
		logf("%v", err)
		return
	}
	files, err := kmod.ReadLoadList(f)
	f.Close()
	if err != nil {
		logf("reading %s: %v", LoadListPath, err)
	}
	for _, file := range files {
		if err := kmod.Load(file); err != nil {
			logf("module %s: %v", kmod.Name(file), err)
		}
	}
}

// openTerminal opens the terminal for the shell: govmm.console if given,
// then the first serial port, then /dev/console. O_NOCTTY keeps init
// itself (a session leader without a terminal) from acquiring it: the
// terminal is for the shell.
//
// Opening a serial port whose UART is absent succeeds, but the tty is
// marked TTY_IO_ERROR and every read or write fails with EIO
// (drivers/tty/serial/serial_core.c uart_startup). A write of zero bytes
// reaches that check (drivers/tty/tty_io.c file_tty_write) without
// printing anything, so it tells a usable terminal from a dead one.
func openTerminal(opts Options) *os.File {
	var candidates []string
	if opts.Console != "" {
		candidates = append(candidates, opts.Console)
	}
	candidates = append(candidates, "/dev/ttyS0", "/dev/console")
	for _, c := range candidates {
		f, err := os.OpenFile(c, os.O_RDWR|unix.O_NOCTTY, 0)
		if err == nil {
			if _, err = unix.Write(int(f.Fd()), nil); err == nil {
				return f
			}
			f.Close()
		}
		logf("terminal %s: %v", c, err)
	}
	return nil
}

// startShell starts the shell and returns its PID, or 0 if none could be
// started. It runs as a login shell (argv[0] starting with '-', so ash
// reads /etc/profile) in a new session whose controlling terminal is the
// console (setsid(2), then ioctl TIOCSCTTY in the child): that is what lets
// ^C reach the foreground job, and what ash needs for job control.
//
// The terminal is opened again for every attempt: a child that became the
// session leader of the terminal and then failed to exec hangs the
// terminal up as it exits (drivers/tty/tty_jobctrl.c disassociate_ctty),
// and every earlier open file of it then fails with EIO.
func startShell(opts Options) int {
	shells := []string{opts.Shell}
	if opts.Shell != DefaultShell {
		shells = append(shells, DefaultShell)
	}
	bannerShown := false
	for _, sh := range shells {
		if st, err := os.Stat(sh); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
			logf("shell %s: not an executable file (%v)", sh, err)
			continue
		}
		env := []string{
			"HOME=/root", "TERM=" + shellTERM, "PATH=" + shellPATH, "PS1=" + shellPS1,
			"SHELL=" + sh, "USER=root", "LOGNAME=root",
		}
		// Try with a controlling terminal first; without one the shell
		// still works, only ^C and job control do not.
		for _, ctty := range []bool{true, false} {
			tty := openTerminal(opts)
			if tty == nil {
				return 0
			}
			if !bannerShown {
				fmt.Fprintf(tty, "\r\n%s\r\n%s\r\n", HelpLine, ShellReadyBanner)
				bannerShown = true
			}
			cmd := &exec.Cmd{
				Path:   sh,
				Args:   []string{"-" + path.Base(sh)},
				Env:    env,
				Dir:    "/root",
				Stdin:  tty,
				Stdout: tty,
				Stderr: tty,
				// Ctty is a file descriptor number in the child: 0 is tty.
				SysProcAttr: &syscall.SysProcAttr{Setsid: true, Setctty: ctty, Ctty: 0},
			}
			err := cmd.Start()
			tty.Close() // the child has its own copies
			if err == nil {
				return cmd.Process.Pid
			}
			logf("starting %s (controlling terminal %v): %v", sh, ctty, err)
		}
	}
	return 0
}

// supervise is PID 1's main loop. Every process whose parent dies is
// re-parented to init (unless a subreaper claims it), and stays a zombie
// until init waits for it (wait(2) NOTES), so init reaps whatever any
// SIGCHLD announces. It shuts down when the shell exits, or when asked the
// way busybox's poweroff, reboot and halt ask init (busybox init/halt.c:
// SIGUSR2, SIGTERM, SIGUSR1), or on SIGPWR (power failure, init(8)).
func supervise(sigs <-chan os.Signal, shellPID int) {
	// Signals can be lost if the channel is full and SIGCHLDs coalesce;
	// a periodic reap makes that harmless.
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case sig := <-sigs:
			switch sig {
			case unix.SIGUSR2, unix.SIGPWR:
				shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF, "poweroff requested")
			case unix.SIGTERM:
				shutdown(unix.LINUX_REBOOT_CMD_RESTART, "reboot requested")
			case unix.SIGUSR1:
				shutdown(unix.LINUX_REBOOT_CMD_HALT, "halt requested")
			}
		case <-tick.C:
		}
		if shellDone, _ := reapChildren(shellPID); shellDone {
			shutdown(unix.LINUX_REBOOT_CMD_POWER_OFF, "shell exited")
		}
	}
}

// reapChildren collects every exited child without blocking. It reports
// whether the child watch was among them, and whether init still has
// children. The shell is reaped here rather than by exec.Cmd.Wait: two
// waiters would race for the same zombie.
func reapChildren(watch int) (watchDone, childrenLeft bool) {
	for {
		var ws unix.WaitStatus
		pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil: // ECHILD: no children at all
			return watchDone, false
		case pid == 0: // children, none exited yet
			return watchDone, true
		case pid == watch:
			watchDone = true
		}
	}
}

// shutdown stops every other process, flushes the file systems and asks the
// kernel to power off, restart or halt (reboot(2) with cmd). With ACPI the
// power-off reaches the VMM as a write of the \_S5 sleep type with SLP_EN
// to the PM1 control register (ACPI spec, "\_S5 (Soft Off)" and "PM1
// Control Registers"), after which the VMM ends.
// It never returns: if reboot(2) fails, PID 1 must still not exit, since
// the kernel would panic.
func shutdown(cmd int, why string) {
	logf("%s: stopping", why)
	// kill(2) with pid -1 signals every process but init itself (kernel
	// threads ignore it). Every user process descends from init, so once
	// init has no children left, no user process is left: give them a
	// second to exit cleanly, then kill what remains.
	_ = unix.Kill(-1, unix.SIGTERM)
	for i := 0; i < 20; i++ {
		if _, left := reapChildren(0); !left {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = unix.Kill(-1, unix.SIGKILL)
	for i := 0; i < 20; i++ {
		if _, left := reapChildren(0); !left {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	unix.Sync()
	unmountDisks()
	if err := unix.Reboot(cmd); err != nil {
		logf("reboot(2): %v; the VM stays up with nothing running", err)
	}
	for {
		time.Sleep(time.Hour)
	}
}
