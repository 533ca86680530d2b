package guest

import (
	"maps"
	"slices"
	"strings"
)

// CmdlinePrefix marks the kernel command-line parameters meant for govmm's
// init. The kernel does not pass dotted parameters ("module.param") to init
// as arguments or environment (init/main.c unknown_bootoption treats them as
// module parameters), so init reads them from /proc/cmdline itself.
const CmdlinePrefix = "govmm."

// SplitCmdline splits a kernel command line into parameters the way the
// kernel does (lib/cmdline.c next_arg): whitespace separates parameters,
// and double quotes group a value containing spaces; the quotes themselves
// are removed. Splitting stops at a lone "--": what follows is for init's
// argv, not kernel parameters (Documentation/admin-guide/kernel-parameters.rst).
func SplitCmdline(line string) []string {
	var params []string
	var cur strings.Builder
	inQuote, have := false, false
	flush := func() {
		if have {
			params = append(params, cur.String())
		}
		cur.Reset()
		have = false
	}
	for _, r := range line {
		switch {
		case r == '"':
			inQuote = !inQuote
			have = true
		case !inQuote && (r == ' ' || r == '\t' || r == '\n' || r == '\r'):
			if have && cur.String() == "--" {
				cur.Reset()
				return params
			}
			flush()
		default:
			cur.WriteRune(r)
			have = true
		}
	}
	if have && cur.String() == "--" {
		return params
	}
	flush()
	return params
}

// ParseCmdline returns the govmm.* parameters of a kernel command line,
// keyed by the name after the prefix: "govmm.shell=/bin/ash" gives
// {"shell": "/bin/ash"}. A parameter without '=' has the value "". When a
// key appears twice the last one wins, as for most kernel parameters.
func ParseCmdline(line string) map[string]string {
	out := map[string]string{}
	for _, p := range SplitCmdline(line) {
		key, val, _ := strings.Cut(p, "=")
		name, ok := strings.CutPrefix(key, CmdlinePrefix)
		if !ok || name == "" {
			continue
		}
		out[name] = val
	}
	return out
}

// Options are the settings init takes from the kernel command line.
// Each field lists its parameter.
type Options struct {
	// Shell is the program started on the console
	// (govmm.shell=PATH, default /bin/sh).
	Shell string
	// Console is the terminal the shell runs on
	// (govmm.console=ttyS0 or /dev/ttyS0). Empty means: /dev/ttyS0 if it
	// opens, else /dev/console.
	Console string
	// NoMount keeps init from mounting the virtio disks that hold a
	// filesystem (govmm.mount=off; see MountDisks).
	NoMount bool
	// IP configures eth0 (govmm.ip=ADDRESS/PREFIX[,GATEWAY]; see
	// network.go); nil leaves it down.
	IP *IPConfig
}

// DefaultShell is the shell init starts when govmm.shell is not given.
const DefaultShell = "/bin/sh"

// OptionsFromCmdline fills Options from a kernel command line, with
// defaults for everything not given. Unknown govmm.* keys are returned so
// that init can print them: a typo should not pass silently.
func OptionsFromCmdline(line string) (opts Options, unknown []string) {
	opts = Options{Shell: DefaultShell}
	params := ParseCmdline(line)
	for _, key := range slices.Sorted(maps.Keys(params)) {
		val := params[key]
		switch key {
		case "shell":
			if val != "" {
				opts.Shell = val
			}
		case "console":
			if val != "" && !strings.HasPrefix(val, "/") {
				val = "/dev/" + val
			}
			opts.Console = val
		case "ip":
			c, err := ParseIPConfig(val)
			if err != nil {
				unknown = append(unknown, err.Error())
				continue
			}
			opts.IP = &c
		case "mount":
			switch val {
			case "off", "0", "no":
				opts.NoMount = true
			case "on", "1", "yes", "":
			default:
				unknown = append(unknown, CmdlinePrefix+key+"="+val)
			}
		default:
			unknown = append(unknown, CmdlinePrefix+key)
		}
	}
	return opts, unknown
}
