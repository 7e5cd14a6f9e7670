// Package sched owns one thing: keeping a goroutine that lives in system
// calls (a vCPU in KVM_RUN, a device's event loop in epoll_wait and the
// TAP's read and write) from looking like a goroutine that hogs its P.
//
// Such a goroutine leaves and re-enters its system calls without ever
// passing through the Go scheduler, so its P's scheduling tick stands
// still. Every 10 ms the runtime's monitor thread (sysmon) then takes it
// for a long-running goroutine, preempts it and takes its P away, and
// each time it does, it resets its own polling back to every 20 us for
// the next millisecond and more. Under nested emulation those wake-ups
// cost sysmon 2 to 2.7 s of CPU per 64 MiB sent over virtio-net, more
// than any other thread of gvmm but the vCPU (iobench's per-thread
// figures: the busiest non-vCPU thread sat in nanosleep). QEMU's threads
// have no such monitor.
//
// Yielder lets such a loop pass through the scheduler every few
// milliseconds instead, which is enough for sysmon to back off to its
// 10 ms period. The vCPU loop, virtio-net's event loop and the virtio
// queue workers (disk, entropy, console) use it. A vCPU backs off while
// a migration copies memory: its yields are slow then, each holding the
// guest up for longer than sysmon's polling costs (Yielder.Backoff).
package sched
