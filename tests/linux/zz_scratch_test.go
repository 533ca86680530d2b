package linux

// SCRATCH: diagnostics for the lead; to be deleted.

import (
	"path/filepath"
	"testing"
)

func TestZZIdle(t *testing.T) {
	e := needEnv(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := startGovmm(t, e.govmm, "run", "--api", api, "--modules", e.modules, e.kernel).named("src")
	src.expect(shellReady, bootTimeout)
	waitAPI(t, src, api)
	addr := freeAddr(t)
	dst := startReceiver(t, e, "dst", addr)
	migrate(t, e, api, addr, "--max-bandwidth", "16M")
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	dst.wait(exitTimeout)
}

func TestZZStopCopy(t *testing.T) {
	e := needEnv(t)
	api := filepath.Join(t.TempDir(), "src.sock")
	src := startGovmm(t, e.govmm, "run", "--api", api, "--modules", e.modules, e.kernel).named("src")
	src.expect(shellReady, bootTimeout)
	src.startDirtier(dirtierMiB, dirtierHeartbeat)
	waitAPI(t, src, api)
	addr := freeAddr(t)
	dst := startReceiver(t, e, "dst", addr)
	migrate(t, e, api, addr, "--max-rounds", "1")
	dst.heartbeatAfter(src.lastHeartbeat())
	dst.typeLine("echo $((6*7))-dest")
	dst.expect("42-dest", replyTimeout)
	dst.typeLine("poweroff")
	dst.wait(exitTimeout)
}
