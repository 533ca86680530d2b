# govmm — see README.md. The two commands that matter:
#   make run    boot Debian's cloud kernel to a shell on this terminal
#   make test   every test: unit, KVM, and Linux boots in the test host

GO      ?= go
BIN     := bin/govmm
# govmm is also the guest's /init, so it must be a static binary.
export CGO_ENABLED := 0

# Debian packages the project needs: the test host (QEMU, busybox-static),
# the kernel fetcher (kmod, for depmod) and the ACPI table checks (iasl).
DEBS := qemu-system-x86 busybox-static kmod acpica-tools nbdkit qemu-utils e2fsprogs

.PHONY: all build run test test-migration unit vet deps bench clean

all: build

build:
	$(GO) build -o $(BIN) ./cmd/govmm

# deps installs the Debian packages that are missing (as root, or via sudo).
deps:
	@missing=""; for p in $(DEBS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# run boots the default guest. Where /dev/kvm is hardware-backed, govmm
# runs directly; on a PVM host (see tests/testhost) it runs inside the
# QEMU-TCG test host, with the same console.
run: deps build
	@K=$$(tests/fetch-kernel.sh cloud) && \
	if $(GO) run ./tests/testhost/cmd/testhost -can-run-direct 2>/dev/null; then \
		exec $(BIN) run --modules $$K/lib/modules/* $$K/boot/vmlinuz-*; \
	else \
		echo "govmm: this /dev/kvm cannot boot Linux (PVM); booting inside the QEMU-TCG test host"; \
		exec $(GO) run ./tests/testhost/cmd/testhost -guest; \
	fi

vet:
	@test -z "$$(gofmt -l .)" || { echo "gofmt needed:"; gofmt -l .; exit 1; }
	$(GO) vet ./...

# unit runs everything that needs neither QEMU nor a downloaded kernel.
unit:
	GOVMM_SKIP_TESTHOST=1 $(GO) test ./...

# test is what CI runs: vet, every test that needs no Linux guest (with a
# real Debian bzImage for the parser test; live migration of real KVM
# guests on this host's /dev/kvm), then the Linux scenarios in the test
# host on their own, so that no other test competes with QEMU for the CPU.
#
# The scenarios that migrate a busy Linux guest run in a second, one-CPU
# test host. With two, a dirty-logging guest now and then takes a page
# fault it cannot deliver and triple-faults, or comes back with a corrupted
# CR3. The likely cause: QEMU runs the test host's CPUs on two threads
# (MTTCG), and the test host's KVM updating the guest's nested page tables
# on one CPU races with TCG emulating the guest's page walks on the other,
# which one CPU rules out (measured:
# in one two-CPU run, TestMigrateDirtier triple-faulted in round 2 and
# TestMigratePingPong's source showed CR3 0x104ed2000 in a 512 MiB guest;
# in one-CPU runs all four passed). The other scenarios keep two CPUs,
# where they are twice as fast. TestMigrateWithDisk stays with them: its
# guest writes its disk but little memory, and in the one run it had in a
# one-CPU test host it did not finish in 30 minutes: the guest's writer was
# still acknowledging records (past 980) on the destination when the run
# was cut, so the test never got to stop it. Not understood yet.
#
# GOVMM_REQUIRE_TOOLS=1 turns a test's missing tool (nbdkit, qemu-nbd,
# mkfs.ext4) from a skip into a failure: make deps installs them all.
MIGRATION_SCENARIOS := TestMigrateDirtier|TestMigratePingPong|TestMigrateDestinationKilled|TestMigrateKeepsTCPConnection

test: deps vet
	K=$$(tests/fetch-kernel.sh cloud) && \
	GOVMM_SKIP_TESTHOST=1 GOVMM_REQUIRE_TOOLS=1 GOVMM_TEST_KERNEL=$$(ls $$K/boot/vmlinuz-*) $(GO) test -count=1 ./...
	GOVMM_TESTHOST_SKIP='$(MIGRATION_SCENARIOS)' $(GO) test -count=1 -timeout 40m -run TestLinuxInTestHost ./tests/testhost
	GOVMM_TESTHOST_RUN='$(MIGRATION_SCENARIOS)' GOVMM_TESTHOST_CPUS=1 $(GO) test -count=1 -timeout 40m -run TestLinuxInTestHost ./tests/testhost

# test-migration runs only the Linux migration scenarios, with their
# consoles live.
test-migration: deps
	GOVMM_TESTHOST_RUN='$(MIGRATION_SCENARIOS)' GOVMM_TESTHOST_CPUS=1 $(GO) test -count=1 -v -timeout 40m -run TestLinuxInTestHost ./tests/testhost

# bench runs tests/linux's benchmarks in the test host (or directly on
# hardware KVM) and prints the figures: migration of an idle 512 MiB guest
# and of one rewriting 64 MiB; guest disk throughput and IOPS on a file and
# on NBD, govmm next to QEMU (copied into the test host) with ratios.
bench: deps
	$(GO) run ./tests/testhost/cmd/testhost -bench .

clean:
	rm -rf bin
