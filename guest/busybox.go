package guest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"strings"
	"time"
)

// busyboxSearchPath is where BuildInitramfs looks for busybox when
// InitramfsOptions.BusyboxPath is empty. Debian's busybox-static and
// busybox packages both install /bin/busybox (= /usr/bin/busybox on a
// merged-/usr system).
var busyboxSearchPath = []string{
	"/bin/busybox",
	"/usr/bin/busybox",
	"/sbin/busybox",
	"/usr/sbin/busybox",
	"/usr/lib/busybox/busybox",
}

// errNoBusybox tells the user both ways out.
var errNoBusybox = errors.New("no busybox found (looked in " + strings.Join(busyboxSearchPath, ", ") +
	"): the default initramfs needs a static busybox for its shell; " +
	"install one (apt-get install busybox-static) or boot your own with --initrd")

// findBusybox returns the busybox to copy: the explicit path if given (it
// must exist), else the first of busyboxSearchPath that exists.
func findBusybox(explicit string) (string, error) {
	if explicit != "" {
		if _, err := os.Stat(explicit); err != nil {
			return "", fmt.Errorf("busybox: %w", err)
		}
		return explicit, nil
	}
	for _, p := range busyboxSearchPath {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errNoBusybox
}

// appletDirs are the directories busybox --list-full may place an applet in
// that the initramfs accepts. Anything else (e.g. "linuxrc" at the root) is
// left out: it would clash with /init or serve no purpose here.
var appletDirs = map[string]bool{"bin": true, "sbin": true, "usr/bin": true, "usr/sbin": true}

// parseAppletList turns the output of "busybox --list-full" (one path per
// line, relative to /, e.g. "bin/ash", "usr/sbin/chroot") into the list of
// symlink paths to create, dropping any line that is not a plain name in one
// of appletDirs.
func parseAppletList(out string) []string {
	var links []string
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || path.Clean(line) != line {
			continue
		}
		dir, name := path.Split(line)
		dir = strings.TrimSuffix(dir, "/")
		if !appletDirs[dir] || name == "" || name == "busybox" {
			continue
		}
		links = append(links, line)
	}
	return links
}

// fallbackApplets is used when the host cannot run busybox to ask it (for
// instance a foreign-architecture file). All go to /bin: ash finds them
// through PATH, and busybox dispatches on the base name of argv[0] only.
var fallbackApplets = []string{
	"ash", "sh", "cat", "chmod", "chown", "clear", "cp", "date", "dd", "df", "dmesg",
	"du", "echo", "env", "false", "find", "free", "grep", "halt", "head", "hostname",
	"ifconfig", "insmod", "ip", "kill", "less", "ln", "ls", "lsmod", "mkdir", "mknod",
	"modprobe", "more", "mount", "mv", "ping", "poweroff", "ps", "reboot", "rm",
	"rmdir", "rmmod", "sed", "sleep", "stty", "sync", "tail", "top", "touch", "true",
	"umount", "uname", "vi", "wc", "wget", "awk", "sort", "uniq", "tr", "cut", "xargs",
}

// busyboxApplets asks the busybox binary at p for its applets. If that does
// not work it returns fallbackApplets and a warning.
func busyboxApplets(p string) (links []string, warning string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, p, "--list-full").Output()
	if err == nil {
		links = parseAppletList(string(out))
	}
	if len(links) == 0 {
		links = nil
		for _, a := range fallbackApplets {
			links = append(links, "bin/"+a)
		}
		why := "it listed none"
		if err != nil {
			why = err.Error()
		}
		warning = fmt.Sprintf("could not run %s --list-full (%s); linking a built-in list of %d common applets", p, why, len(links))
	}
	return links, warning
}
