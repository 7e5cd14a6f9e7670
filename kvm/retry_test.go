package kvm

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestRetryIoctl(t *testing.T) {
	tests := []struct {
		name      string
		req       uintptr
		errs      []unix.Errno
		wantErr   unix.Errno
		wantCalls int
	}{
		{"success", _KVM_CREATE_VM, []unix.Errno{0}, 0, 1},
		{"EINTR retried", _KVM_CREATE_VM, []unix.Errno{unix.EINTR, unix.EINTR, 0}, 0, 3},
		{"other errors returned", _KVM_SET_USER_MEMORY_REGION, []unix.Errno{unix.EINTR, unix.EINVAL}, unix.EINVAL, 2},
		{"KVM_RUN EINTR returned", _KVM_RUN, []unix.Errno{unix.EINTR, 0}, unix.EINTR, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			_, errno := retryIoctl(tt.req, func() (uintptr, unix.Errno) {
				e := tt.errs[calls]
				calls++
				return 0, e
			})
			if errno != tt.wantErr || calls != tt.wantCalls {
				t.Fatalf("errno %v after %d calls, want %v after %d", errno, calls, tt.wantErr, tt.wantCalls)
			}
		})
	}
}
