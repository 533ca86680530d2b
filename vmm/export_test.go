package vmm

// Test hooks for the external tests in package vmm_test (compiled only
// into tests).

// UsePlainDirtyLog makes vm harvest with plain KVM_GET_DIRTY_LOG even
// where KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 exists, so both paths are tested.
func UsePlainDirtyLog(vm *VM) { vm.dirty.noManual = true }

// ManualDirtyLog reports whether vm harvests with KVM_CLEAR_DIRTY_LOG.
func ManualDirtyLog(vm *VM) bool { return vm.dirty.manual }
