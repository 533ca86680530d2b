package kmod

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// compressedSuffixes are the extensions that depmod accepts for a compressed
// module file, after ".ko" (kmod's libkmod-file.c knows the same three).
var compressedSuffixes = []string{".gz", ".xz", ".zst"}

// Name returns the module name for a module file path or a module name as a
// user types it: the base name without ".ko" or ".ko.<compression>", with
// every '-' turned into '_'. The kernel makes the same substitution when it
// compares module names (kernel/params.c parameq), so "pvpanic-mmio" and
// "pvpanic_mmio" name one module.
func Name(p string) string {
	base := path.Base(p)
	for _, s := range compressedSuffixes {
		base = strings.TrimSuffix(base, ".ko"+s)
	}
	base = strings.TrimSuffix(base, ".ko")
	return strings.ReplaceAll(base, "-", "_")
}

// Compression returns the compression suffix of a module file (".gz", ".xz",
// ".zst"), or "" for a plain ".ko".
func Compression(p string) string {
	for _, s := range compressedSuffixes {
		if strings.HasSuffix(p, ".ko"+s) {
			return s
		}
	}
	return ""
}

// DepTable is the content of one modules.dep: for every module name, the
// file that holds it and the files it depends on. All paths are relative to
// the modules directory (/lib/modules/<release>) and use '/'.
type DepTable struct {
	// Path maps a module name (see Name) to its file.
	Path map[string]string
	// Deps maps a module file to the files it depends on, as listed in
	// modules.dep. Resolve does not rely on the order of this list: it
	// follows every dependency's own line instead.
	Deps map[string][]string
}

// checkRelPath refuses a module path that is absolute or climbs out of the
// modules directory. modules.dep is a host file, but it is a file we copy
// from into the guest image, so a bad path must not make us read elsewhere.
func checkRelPath(p string) error {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("bad module path %q (want a clean relative path)", p)
	}
	return nil
}

// ParseDep reads a modules.dep file (modules.dep(5)). Blank lines and lines
// starting with '#' are skipped. A malformed line is an error naming its
// line number.
func ParseDep(r io.Reader) (*DepTable, error) {
	t := &DepTable{Path: map[string]string{}, Deps: map[string][]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		file, rest, ok := strings.Cut(line, ":")
		file = strings.TrimSpace(file)
		if !ok {
			return nil, fmt.Errorf("modules.dep line %d: no ':' in %q", n, line)
		}
		if err := checkRelPath(file); err != nil {
			return nil, fmt.Errorf("modules.dep line %d: %w", n, err)
		}
		deps := strings.Fields(rest)
		for _, d := range deps {
			if err := checkRelPath(d); err != nil {
				return nil, fmt.Errorf("modules.dep line %d: %w", n, err)
			}
		}
		t.Path[Name(file)] = file
		t.Deps[file] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.dep: %w", err)
	}
	return t, nil
}

// ParseBuiltin reads modules.builtin, which lists one path per line for
// every module compiled into the kernel image (same path syntax as
// modules.dep, without dependencies). It returns the set of module names.
func ParseBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		set[Name(line)] = true
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading modules.builtin: %w", err)
	}
	return set, nil
}

// Resolution is the answer of Resolve.
type Resolution struct {
	// Files are the module files to load, every file after all the files it
	// depends on, wanted modules in the order they were asked for.
	Files []string
	// Builtin are wanted names that are compiled into the kernel: nothing
	// to load.
	Builtin []string
	// Missing are wanted names that are neither in modules.dep nor
	// built in. The caller decides whether that matters.
	Missing []string
}

// Resolve computes which module files must be loaded, and in which order, so
// that every module in names gets loaded. builtin may be nil.
//
// The order is a depth-first post-order: a module's dependencies are
// emitted (recursively) before the module itself, and a file is emitted only
// once. That is the order modprobe(8) uses. A dependency cycle cannot be
// loaded by any order (each module would need the other already present), so
// it is an error; depmod refuses to write one, so it means a corrupt file.
func (t *DepTable) Resolve(names []string, builtin map[string]bool) (Resolution, error) {
	var res Resolution
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var visit func(file string, chain []string) error
	visit = func(file string, chain []string) error {
		switch state[file] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep: dependency cycle %s -> %s", strings.Join(chain, " -> "), file)
		}
		state[file] = visiting
		for _, dep := range t.Deps[file] {
			// A dependency that is built in has a line in modules.dep
			// only if it is really a file; depmod never lists a
			// built-in module as a dependency, so no check here.
			if err := visit(dep, append(chain, file)); err != nil {
				return err
			}
		}
		state[file] = done
		res.Files = append(res.Files, file)
		return nil
	}
	for _, n := range names {
		name := Name(n)
		file, ok := t.Path[name]
		switch {
		case ok:
			if err := visit(file, nil); err != nil {
				return Resolution{}, err
			}
		case builtin[name]:
			res.Builtin = append(res.Builtin, name)
		default:
			res.Missing = append(res.Missing, name)
		}
	}
	return res, nil
}
