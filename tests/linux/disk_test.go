package linux

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"govmm/guest"
)

// Disk scenarios (virtio-blk, issue 4). The CLI contract they drive:
//
//	govmm run --disk SPEC ...          SPEC: PATH, file:PATH, nbd://HOST:PORT/EXPORT or
//	                                   nbd+unix:///EXPORT?socket=PATH, each with ",readonly"
//	govmm nas serve IMAGE --listen unix:PATH|HOST:PORT [--export NAME]
//	                                   an NBD server for IMAGE, until killed
//
// The guest sees /dev/vda; its init mounts a disk holding an ext2/3/4 file
// system at /mnt/vda (guest.MountDisks). The test host's busybox makes
// ext2 file systems (mke2fs), which the guest mounts with the ext4 driver;
// neither the guest nor the test host has e2fsck, so file-system
// consistency is checked through the files' checksums after a fresh boot.

const diskMiB = 64

// newImage creates a sparse, blank disk image of diskMiB.
func newImage(t testing.TB) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, diskMiB<<20); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestDiskKeepsFilesAcrossBoots: the guest formats a blank file-backed
// disk, writes files and their checksums, syncs and powers off; a fresh
// govmm given the same image read-only finds the file system mounted at
// /mnt/vda by init, every checksum right, and writes refused.
func TestDiskKeepsFilesAcrossBoots(t *testing.T) {
	e := needEnv(t)
	img := newImage(t)

	v := bootToShell(t, "", e.govmm, "run", "--modules", e.modules, "--disk", "file:"+img, e.kernel)
	v.printedAtBoot("/dev/vda holds no ext2/3/4 file system")
	v.typeLine(`echo "sectors=$(cat /sys/block/vda/size)."`)
	v.expect(fmt.Sprintf("sectors=%d.", diskMiB<<20/512), replyTimeout)
	v.typeLine("mke2fs -q /dev/vda && mkdir -p /mnt/vda && mount -t ext4 /dev/vda /mnt/vda && echo mounted-$((1+1))")
	v.expect("mounted-2", 2*replyTimeout)
	// Ten files of random data, 1 MiB each, and their checksums.
	v.typeLine("cd /mnt/vda && for i in 0 1 2 3 4 5 6 7 8 9; do dd if=/dev/urandom of=f$i bs=64k count=16 2>/dev/null; done; " +
		"sha256sum f* > SUMS && sync && cd / && echo wrote-$((5*2))")
	v.expect("wrote-10", 3*replyTimeout)
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after poweroff, want 0", status)
	}
	f, err := os.Open(img)
	if err != nil {
		t.Fatal(err)
	}
	isExt := guest.HasExtFilesystem(f)
	f.Close()
	if !isExt {
		t.Fatal("the image holds no ext file system after the guest formatted it")
	}

	v = bootToShell(t, "", e.govmm, "run", "--modules", e.modules, "--disk", img+",readonly", e.kernel)
	v.printedAtBoot("/dev/vda mounted on /mnt/vda (read-only)")
	v.typeLine(`cd /mnt/vda && sha256sum -c SUMS | grep -c ': OK$' | sed 's/^/ok-files=/'`)
	v.expect("ok-files=10", 2*replyTimeout)
	v.typeLine(`touch /mnt/vda/new 2>&1 | grep -o 'Read-only file system' | sed 's/ /_/g'`)
	v.expect("Read-only_file_system", replyTimeout)
	v.typeLine(`cd / && echo "ro=$(cat /sys/block/vda/ro)."`)
	v.expect("ro=1.", replyTimeout)
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after the second poweroff, want 0", status)
	}
}

// startNAS starts `govmm nas serve img` on a unix socket and returns the
// running server and the socket's path.
func startNAS(t testing.TB, e env, img, sock string) *vm {
	t.Helper()
	nas := startGovmm(t, e.govmm, "nas", "serve", img, "--listen", "unix:"+sock, "--export", "disk")
	deadline := time.Now().Add(listenTimeout)
	for {
		if _, err := os.Stat(sock); err == nil {
			return nas
		}
		select {
		case <-nas.done:
			t.Fatalf("govmm nas serve exited: %v\n%s", nas.err, nas.stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("govmm nas serve did not create %s within %v", sock, listenTimeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stopNAS kills the server and removes its socket.
func stopNAS(t testing.TB, nas *vm, sock string) {
	t.Helper()
	nas.cmd.Process.Kill()
	<-nas.done
	os.Remove(sock)
}

// TestDiskOverNBDSurvivesServerRestart: the disk lives behind govmm's own
// NBD server. Data written through it reads back; with the server killed,
// guest I/O fails with EIO while govmm says why on its stderr and keeps
// running; with the server back, I/O works again and the data is intact.
func TestDiskOverNBDSurvivesServerRestart(t *testing.T) {
	e := needEnv(t)
	img := newImage(t)
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	nas := startNAS(t, e, img, sock)
	spec := "nbd+unix:///disk?socket=" + sock

	v := bootToShell(t, "", e.govmm, "run", "--modules", e.modules, "--disk", spec, e.kernel)
	// 4 MiB of random data at 8 MiB into the disk, and its checksum as
	// read back after dropping the page cache (so it comes from the server).
	v.typeLine("dd if=/dev/urandom of=/tmp/data bs=64k count=64 2>/dev/null && " +
		"dd if=/tmp/data of=/dev/vda bs=64k seek=128 conv=fsync 2>/dev/null && echo 3 > /proc/sys/vm/drop_caches && " +
		`echo "sums=$(sha256sum < /tmp/data | cut -c1-16)-$(dd if=/dev/vda bs=64k skip=128 count=64 2>/dev/null | sha256sum | cut -c1-16)."`)
	m := v.expectMatch(regexp.MustCompile(`sums=([0-9a-f]{16})-([0-9a-f]{16})\.`), 2*replyTimeout)
	if m[1] != m[2] {
		t.Fatalf("data read back through NBD has checksum %s, written %s", m[2], m[1])
	}
	written := m[1]

	stopNAS(t, nas, sock)
	v.typeLine(`echo 3 > /proc/sys/vm/drop_caches; dd if=/dev/vda of=/dev/null bs=4k count=1 skip=2048 2>&1 | grep -o 'Input/output error' | sed 's/ /_/;s/^/got-/'`)
	v.expect("got-Input/output_error", 2*replyTimeout)
	if _, err := v.stderr.expect(regexp.MustCompile(`(?i)nbd.*(lost|disconnect|reconnect)`), replyTimeout, v.done); err != nil {
		t.Errorf("govmm said nothing on stderr about losing its NBD server: %v", err)
	}

	startNAS(t, e, img, sock)
	// The client redials with a backoff of at most a few seconds: retry
	// the read until it works.
	// dd's own status says whether the read worked (in a pipeline, only
	// the last command's would count).
	v.typeLine(`for i in $(seq 30); do echo 3 > /proc/sys/vm/drop_caches; ` +
		`if dd if=/dev/vda of=/tmp/back bs=64k skip=128 count=64 2>/dev/null; then echo "back=$(sha256sum < /tmp/back | cut -c1-16)."; break; fi; sleep 1; done`)
	m = v.expectMatch(regexp.MustCompile(`back=([0-9a-f]{16})\.`), 3*replyTimeout)
	if m[1] != written {
		t.Fatalf("after the NBD server came back the data reads with checksum %s, want %s", m[1], written)
	}
	v.typeLine("poweroff")
	if status := v.wait(exitTimeout); status != 0 {
		t.Fatalf("govmm exited with status %d after poweroff, want 0", status)
	}
}

// TestMigrateWithDisk migrates a guest that keeps writing numbered,
// checksummed records to its NBD disk, each made durable (conv=fsync) and
// then acknowledged on the console. Afterwards every acknowledged record
// is on the disk, in order, and the writer went on on the destination.
func TestMigrateWithDisk(t *testing.T) {
	e := needEnv(t)
	dir := t.TempDir()
	img := newImage(t)
	sock := filepath.Join(dir, "nbd.sock")
	startNAS(t, e, img, sock)
	spec := "nbd+unix:///disk?socket=" + sock
	api := filepath.Join(dir, "src.sock")

	src := bootToShell(t, "src", e.govmm, "run", "--api", api, "--modules", e.modules, "--disk", spec, e.kernel)
	// Record i is one 512-byte sector at sector i: "rec i <first 16 hex
	// digits of sha256("i")>", padded by conv=sync. "acked i" follows
	// once dd's fsync (a virtio-blk FLUSH) has returned.
	src.typeLine(`(i=0; while [ $i -lt 100000 ]; do echo "rec $i $(echo $i | sha256sum | cut -c1-16)" | ` +
		`dd of=/dev/vda bs=512 seek=$i conv=sync,fsync 2>/dev/null && echo "acked $i"; i=$((i+1)); done) &`)
	ackRE := regexp.MustCompile(`acked (\d+)`)
	src.expectMatch(ackRE, replyTimeout)
	waitAPI(t, src, api)

	addr := freeAddr(t)
	dst := startReceiver(t, e, "dst", addr)
	migrate(t, e, api, addr)
	if status := src.wait(exitTimeout); status != 0 {
		t.Errorf("source govmm exited with status %d after the migration, want 0", status)
	}
	lastOnSource := lastMatch(t, src.out.String(), ackRE)
	// The writer goes on on the destination: an ack beyond the source's.
	for {
		n, _ := strconv.Atoi(dst.expectMatch(ackRE, 2*replyTimeout)[1])
		if n > lastOnSource+5 {
			break
		}
	}
	dst.typeLine("kill %1; sleep 1; echo stopped-$((2+2))")
	dst.expect("stopped-4", replyTimeout)
	lastAcked := lastMatch(t, dst.out.String(), ackRE)
	// Read the records back from the disk, bypassing the page cache, and
	// let the guest check them: every record up to the last acked one
	// present, in place, with the right checksum.
	dst.typeLine(fmt.Sprintf(`echo 3 > /proc/sys/vm/drop_caches; bad=0; i=0; while [ $i -le %d ]; do `+
		`r=$(dd if=/dev/vda bs=512 skip=$i count=1 2>/dev/null | tr -d '\0'); `+
		`[ "$r" = "rec $i $(echo $i | sha256sum | cut -c1-16)" ] || { bad=$((bad+1)); echo "BAD record $i: $r"; }; i=$((i+1)); done; echo "checked=$i bad=$bad."`, lastAcked))
	m := dst.expectMatch(regexp.MustCompile(`checked=(\d+) bad=(\d+)\.`), 5*time.Minute)
	t.Logf("records: %d acknowledged on the source, %d in all, %s checked on the destination, %s bad", lastOnSource+1, lastAcked+1, m[1], m[2])
	if m[2] != "0" {
		t.Errorf("%s acknowledged records are missing or wrong on the disk after the migration", m[2])
	}
	dst.typeLine("poweroff")
	if status := dst.wait(exitTimeout); status != 0 {
		t.Errorf("destination govmm exited with status %d after poweroff, want 0", status)
	}
}

// printedAtBoot checks that init printed s before the shell banner.
func (v *vm) printedAtBoot(s string) {
	v.t.Helper()
	if !strings.Contains(v.out.String(), "govmm-init: "+s) {
		v.t.Errorf("init did not print %q while booting", s)
	}
}

// lastMatch returns the number in the last match of re in s.
func lastMatch(t testing.TB, s string, re *regexp.Regexp) int {
	t.Helper()
	all := re.FindAllStringSubmatch(s, -1)
	if len(all) == 0 {
		t.Fatalf("no match of /%s/", re)
	}
	n, err := strconv.Atoi(all[len(all)-1][1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}
