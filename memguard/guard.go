package memguard

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Memory is guest RAM as gvmm sees it, behind the guest's memory slots:
// gvmm reads and writes protected pages through it whatever the slots say.
// WriteAt must mark the pages in the VMM-side dirty bitmap, so migration
// sends what gvmm wrote on the owner's behalf. *vmm.Memory satisfies it.
type Memory interface {
	PhysReader
	WriteAt(p []byte, gpa uint64) error
}

// HostMemory is implemented by a Memory that can show its host mapping;
// when it is, a Guard locks protected pages in host RAM (mlock).
type HostMemory interface {
	Slice(gpa, n uint64) ([]byte, error)
}

// Range is a guest-physical range [GPA, GPA+Size).
type Range struct {
	GPA, Size uint64
}

func (r Range) end() uint64 { return r.GPA + r.Size }

func (r Range) contains(gpa, n uint64) bool {
	return gpa >= r.GPA && gpa-r.GPA <= r.Size && n <= r.Size-(gpa-r.GPA)
}

// Defaults of Config's limits.
const (
	DefaultMaxRegions = 64
	// MaxRegionsLimit is the largest MaxRegions a VMM may configure.
	MaxRegionsLimit = 1024
	DefaultMaxPages = 64 << 20 / pageSize // 64 MiB
	// DefaultMaxSlots leaves headroom under KVM's usual 509 user slots for
	// the slots the VMM has outside RAM.
	DefaultMaxSlots = 480
	DefaultLogSize  = 4096
)

// Config is what a Guard needs from the VMM. The zero value of every field
// but Memory and RAM is safe.
type Config struct {
	// Memory is guest RAM.
	Memory Memory
	// RAM is the guest-physical layout of RAM, in order, not overlapping.
	RAM []Range
	// Reserved are RAM ranges gvmm itself uses (boot page tables, ACPI
	// tables, the reset stub) or that devices are mapped over; a region
	// that maps any of them is refused.
	Reserved []Range
	// MaxRegions, MaxPages and MaxSlots bound what the guest can ask for
	// (0: the defaults). MaxSlots is the number of memory slots the RAM
	// layout may use; set it from KVM_CAP_NR_MEMSLOTS less the slots the
	// VMM keeps for itself.
	MaxRegions, MaxPages, MaxSlots int
	// InjectFaults makes HandleAccess ask for a fault on a violation.
	InjectFaults bool
	// Logger receives refusals and violations (nil: slog.Default()).
	Logger *slog.Logger
	// Now is the clock of the measurement log (nil: time.Now).
	Now func() time.Time
	// LogSize bounds the measurement log (0: DefaultLogSize).
	LogSize int
	// DeferHostLock leaves the host locks (mlock, munlock) of protected
	// pages to SyncHost instead of doing them at registration and
	// release. A VMM sets it to lock pages only while no vCPU is in guest
	// mode: locking part of guest RAM splits the host's VMA, and with it
	// a transparent huge page, which makes the host kernel invalidate the
	// guest's nested page tables and drain per-CPU page lists, both by
	// interrupting every CPU, those running vCPUs included.
	DeferHostLock bool
}

// region is one protected range of an owner's virtual memory.
type region struct {
	id    uint64
	owner uint64 // owner identity: user-mode top-level table GPA
	la57  bool
	mode  Mode
	va    uint64
	pages []uint64 // GPA of each 4 KiB page, in VA order
	// path[i] is the last-level table that maps pages[i] (its PTE, PDE or
	// PDPTE page): a check that the owner still lives compares it.
	path []uint64

	locked     bool
	violations uint64
	// unexpected counts the measurements that found the region changed
	// with no owner write through gvmm since the one before.
	unexpected uint64
	// writes counts owner writes made through gvmm; measuredWrites is its
	// value at the last measurement, so a change with no write between
	// two measurements is unexpected.
	writes, measuredWrites uint64
	last                   *Measurement
}

func (r *region) length() uint64 { return uint64(len(r.pages)) * pageSize }

// Guard is the protected-memory registry of one VM. Its methods are safe
// for concurrent use by the vCPU threads.
type Guard struct {
	cfg Config
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	nextID  uint64
	regions map[uint64]*region
	// byPage maps every protected GPA page to its region.
	byPage map[uint64]*region
	// sorted is byPage's keys in order, for range queries.
	sorted     []uint64
	ranges     []*measuredRange
	mlog       []Measurement
	violations uint64
	refusals   uint64
	// layoutGen counts changes of the protected page set.
	layoutGen uint64
	// npages is len(byPage), readable without the lock: MMIO exits of a
	// VM with nothing protected skip the lock.
	npages atomic.Int64
	// hostOps are the host locks and unlocks Config.DeferHostLock left to
	// SyncHost, in order.
	hostOps []hostOp
}

// hostOp is one deferred lockPages: lock r's pages (r is set), or unlock
// pages of a released region.
type hostOp struct {
	r     *region
	pages []uint64
	lock  bool
}

// New returns an empty Guard.
func New(cfg Config) (*Guard, error) {
	if cfg.Memory == nil {
		return nil, errors.New("memguard: new: no guest memory")
	}
	if len(cfg.RAM) == 0 {
		return nil, errors.New("memguard: new: no RAM layout")
	}
	for i, r := range cfg.RAM {
		if r.Size == 0 || r.GPA%pageSize != 0 || r.Size%pageSize != 0 || r.GPA+r.Size < r.GPA {
			return nil, fmt.Errorf("memguard: new: RAM range %d [%#x,+%#x) is not page aligned", i, r.GPA, r.Size)
		}
		if i > 0 && r.GPA < cfg.RAM[i-1].end() {
			return nil, fmt.Errorf("memguard: new: RAM ranges out of order at %d", i)
		}
	}
	if cfg.MaxRegions <= 0 {
		cfg.MaxRegions = DefaultMaxRegions
	}
	if cfg.MaxRegions > MaxRegionsLimit {
		return nil, fmt.Errorf("memguard: new: %d regions exceed the limit of %d", cfg.MaxRegions, MaxRegionsLimit)
	}
	if cfg.MaxPages <= 0 {
		cfg.MaxPages = DefaultMaxPages
	}
	if cfg.MaxSlots <= 0 {
		cfg.MaxSlots = DefaultMaxSlots
	}
	if cfg.LogSize <= 0 {
		cfg.LogSize = DefaultLogSize
	}
	g := &Guard{
		cfg:     cfg,
		log:     cfg.Logger,
		now:     cfg.Now,
		nextID:  1,
		regions: make(map[uint64]*region),
		byPage:  make(map[uint64]*region),
	}
	if g.log == nil {
		g.log = slog.Default()
	}
	if g.now == nil {
		g.now = time.Now
	}
	return g, nil
}

// IOResult is the outcome of a port request.
type IOResult struct {
	// Regs are the registers to write back (KVM_SET_REGS) before the
	// vCPU runs again.
	Regs Regs
	// LayoutChanged says the protected page set changed: the VMM must
	// apply Slots() before this vCPU runs again, with every vCPU paused.
	LayoutChanged bool
}

// HandleIO serves a 32-bit OUT to Port. regs are the vCPU's registers at
// the exit; the result's registers go back to the vCPU. Every field of
// regs and ctx is the guest's and is checked.
func (g *Guard) HandleIO(ctx VCPUContext, regs Regs) IOResult {
	out := regs
	res := IOResult{}
	op := uint32(regs.RAX)
	var err error
	switch op {
	case OpVersion:
		out.RBX, out.RCX, out.RSI = ABIVersion, uint64(g.cfg.MaxRegions), uint64(g.cfg.MaxPages)
	case OpRegister:
		var id uint64
		var released bool
		id, released, err = g.register(ctx, regs.RBX, regs.RCX, Mode(regs.RSI))
		res.LayoutChanged = released
		if err == nil {
			out.RBX = id
			res.LayoutChanged = true
		}
	case OpUnregister:
		err = g.unregister(ctx, regs.RBX)
		res.LayoutChanged = err == nil
	case OpMeasure:
		var d [32]byte
		d, err = g.measureFor(ctx, regs.RBX)
		if err == nil {
			out.RBX, out.RCX, out.RSI, out.RDI = le64(d[0:]), le64(d[8:]), le64(d[16:]), le64(d[24:])
		}
	default:
		err = fmt.Errorf("operation %#x: %w", op, ENOSYS)
	}
	out.RAX = 0
	if err != nil {
		var e Errno
		if !errors.As(err, &e) {
			e = EINVAL
		}
		out.RAX = uint64(-int64(e))
		g.mu.Lock()
		g.refusals++
		n := g.refusals
		g.mu.Unlock()
		// A guest can refuse itself as often as it likes: the log
		// keeps the first refusals and then every 1024th.
		if n <= 64 || n%1024 == 0 {
			g.log.Warn("memguard: request refused", "vcpu", ctx.VCPU, "op", op,
				"rip", fmt.Sprintf("%#x", ctx.RIP), "cr3", fmt.Sprintf("%#x", ctx.CR3), "cpl", ctx.CPL,
				"err", err, "refusals", n)
		}
	}
	return IOResult{Regs: out, LayoutChanged: res.LayoutChanged}
}

func le64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

// callerOK refuses requests that do not come from user mode in 64-bit
// paging.
func callerOK(ctx VCPUContext) error {
	if ctx.CPL != 3 {
		return fmt.Errorf("caller at CPL %d: %w", ctx.CPL, EPERM)
	}
	if !ctx.longMode() {
		return fmt.Errorf("caller not in 64-bit paging: %w", EPERM)
	}
	return nil
}

// register translates and binds [va, va+length) of the caller's address
// space.
// It reports whether it released dead owners' regions on the way, which
// changes the layout even when the registration fails.
func (g *Guard) register(ctx VCPUContext, va, length uint64, mode Mode) (uint64, bool, error) {
	if err := callerOK(ctx); err != nil {
		return 0, false, fmt.Errorf("register: %w", err)
	}
	r, err := g.translate(ctx.root(), ctx.la57(), va, length, mode, true)
	if err != nil {
		return 0, false, fmt.Errorf("register: %w", err)
	}
	r.owner = ctx.owner()
	g.mu.Lock()
	defer g.mu.Unlock()
	// A frame the kernel hands to a new process may still be bound to
	// an owner that died since the last check: check those owners now.
	released := false
	for _, p := range r.pages {
		if o, ok := g.byPage[p]; ok {
			if err := g.alive(o); err != nil {
				g.log.Warn("memguard: owner gone", "id", o.id, "owner", fmt.Sprintf("%#x", o.owner), "err", err)
				g.release(o, "owner gone (found at a registration)")
				released = true
			}
		}
	}
	if err := g.admit(r); err != nil {
		return 0, released, fmt.Errorf("register: %w", err)
	}
	r.id = g.nextID
	g.nextID++
	g.insert(r)
	g.log.Info("memguard: region registered", "id", r.id, "mode", mode, "owner", fmt.Sprintf("%#x", r.owner),
		"va", fmt.Sprintf("%#x", va), "len", length, "vcpu", ctx.VCPU, "locked", r.locked)
	return r.id, released, nil
}

// translate walks every page of the range. It checks only what needs no
// lock: shape, mapping, permissions and RAM. Registration needs writable
// pages; a restore needs only what a live owner keeps (see alive), since
// the kernel may have write-protected a page for a while when the VM was
// saved.
func (g *Guard) translate(root uint64, la57 bool, va, length uint64, mode Mode, needWrite bool) (*region, error) {
	if !mode.valid() {
		return nil, fmt.Errorf("mode %d: %w", mode, EINVAL)
	}
	if length == 0 || va%pageSize != 0 || length%pageSize != 0 {
		return nil, fmt.Errorf("range [%#x,+%#x) not page aligned or empty: %w", va, length, EINVAL)
	}
	if va+length < va || va+length > userLimit(la57) {
		return nil, fmt.Errorf("range [%#x,+%#x): %w", va, length, EOVERFLOW)
	}
	n := length / pageSize
	if n > uint64(g.cfg.MaxPages) {
		return nil, fmt.Errorf("%d pages over the limit of %d: %w", n, g.cfg.MaxPages, ENOSPC)
	}
	r := &region{owner: root, la57: la57, mode: mode, va: va, pages: make([]uint64, n), path: make([]uint64, n)}
	seen := make(map[uint64]bool, n)
	tables := make(map[uint64]bool)
	for i := uint64(0); i < n; i++ {
		a := va + i*pageSize
		t, err := Walk(g.cfg.Memory, root, la57, a)
		if err != nil {
			return nil, fmt.Errorf("page %#x: %w: %w", a, err, EFAULT)
		}
		if !t.User {
			return nil, fmt.Errorf("page %#x: %w: %w", a, ErrNotUser, EFAULT)
		}
		if needWrite && !t.Writable {
			return nil, fmt.Errorf("page %#x: %w: %w", a, ErrNotWritable, EFAULT)
		}
		gpa := t.GPA &^ (pageSize - 1)
		if err := g.physOK(gpa); err != nil {
			return nil, fmt.Errorf("page %#x at %#x: %w", a, gpa, err)
		}
		if seen[gpa] {
			return nil, fmt.Errorf("page %#x maps %#x twice: %w", a, gpa, EBUSY)
		}
		seen[gpa] = true
		for _, tb := range t.Tables[:t.Levels] {
			tables[tb] = true
		}
		r.pages[i] = gpa
		r.path[i] = t.Tables[t.Levels-1]
	}
	// A protected page that is also one of the owner's page tables would
	// take the tables away from the CPU's own walk.
	for gpa := range seen {
		if tables[gpa] {
			return nil, fmt.Errorf("page %#x is a page table: %w", gpa, EACCES)
		}
	}
	return r, nil
}

// physOK refuses a page outside RAM or in a reserved range.
func (g *Guard) physOK(gpa uint64) error {
	in := false
	for _, r := range g.cfg.RAM {
		if r.contains(gpa, pageSize) {
			in = true
			break
		}
	}
	if !in {
		return fmt.Errorf("outside RAM: %w", EACCES)
	}
	for _, r := range g.cfg.Reserved {
		if gpa < r.end() && r.GPA < gpa+pageSize {
			return fmt.Errorf("reserved memory: %w", EACCES)
		}
	}
	return nil
}

// admit checks r against the registry and the limits. g.mu is held.
func (g *Guard) admit(r *region) error {
	if len(g.regions) >= g.cfg.MaxRegions {
		return fmt.Errorf("%d regions: %w", len(g.regions), ENOSPC)
	}
	if len(g.byPage)+len(r.pages) > g.cfg.MaxPages {
		return fmt.Errorf("%d protected pages + %d: %w", len(g.byPage), len(r.pages), ENOSPC)
	}
	for _, o := range g.regions {
		if o.owner == r.owner && r.va < o.va+o.length() && o.va < r.va+r.length() {
			return fmt.Errorf("virtual range overlaps region %d: %w", o.id, EBUSY)
		}
	}
	for _, p := range r.pages {
		if o, ok := g.byPage[p]; ok {
			return fmt.Errorf("page %#x belongs to region %d: %w", p, o.id, EBUSY)
		}
	}
	// The memory-slot layout must still fit.
	pages := g.protectedLocked()
	for _, p := range r.pages {
		pages = append(pages, ProtectedPage{GPA: p, Mode: r.mode})
	}
	if _, err := Layout(g.cfg.RAM, pages, g.cfg.MaxSlots); err != nil {
		return fmt.Errorf("%w: %w", err, ENOSPC)
	}
	return nil
}

// insert adds r to the registry and locks its pages on the host. g.mu is
// held.
func (g *Guard) insert(r *region) {
	g.regions[r.id] = r
	for _, p := range r.pages {
		g.byPage[p] = r
	}
	g.resort()
	g.layoutGen++
	if hm, ok := g.cfg.Memory.(HostMemory); ok {
		if g.cfg.DeferHostLock {
			g.hostOps = append(g.hostOps, hostOp{r: r, pages: r.pages, lock: true})
			return
		}
		err := lockPages(hm, r.pages, true)
		r.locked = err == nil
		if err != nil {
			g.log.Warn("memguard: cannot lock region in host memory", "id", r.id, "err", err)
		}
	}
}

// release wipes r's pages, then drops them from the registry. g.mu is
// held. The pages are still out of the guest's mapping while they are
// wiped; the VMM maps them again when it applies the new layout.
func (g *Guard) release(r *region, why string) {
	zero := make([]byte, pageSize)
	for _, p := range r.pages {
		if err := g.cfg.Memory.WriteAt(zero, p); err != nil {
			g.log.Error("memguard: wipe failed", "id", r.id, "gpa", fmt.Sprintf("%#x", p), "err", err)
		}
		delete(g.byPage, p)
	}
	g.unlockRegion(r)
	delete(g.regions, r.id)
	g.resort()
	g.layoutGen++
	g.log.Info("memguard: region released", "id", r.id, "why", why)
}

// unlockRegion undoes r's host lock, or with Config.DeferHostLock leaves
// it to SyncHost (a lock still pending is dropped). g.mu is held.
func (g *Guard) unlockRegion(r *region) {
	if g.cfg.DeferHostLock {
		for i, op := range g.hostOps {
			if op.r == r {
				g.hostOps = append(g.hostOps[:i], g.hostOps[i+1:]...)
				break
			}
		}
		if r.locked {
			g.hostOps = append(g.hostOps, hostOp{pages: r.pages})
			r.locked = false
		}
		return
	}
	if r.locked {
		if hm, ok := g.cfg.Memory.(HostMemory); ok {
			_ = lockPages(hm, r.pages, false)
		}
	}
}

// HostPending says whether SyncHost has host locks or unlocks to do.
func (g *Guard) HostPending() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.hostOps) > 0
}

// SyncHost does the host locks and unlocks Config.DeferHostLock left
// pending. The VMM calls it while no vCPU is in guest mode. A page that
// cannot be locked is logged and its region reported as not locked, as
// without DeferHostLock.
func (g *Guard) SyncHost() {
	g.mu.Lock()
	defer g.mu.Unlock()
	hm, ok := g.cfg.Memory.(HostMemory)
	if !ok {
		g.hostOps = nil
		return
	}
	for _, op := range g.hostOps {
		err := lockPages(hm, op.pages, op.lock)
		if op.r == nil {
			continue
		}
		op.r.locked = err == nil
		if err != nil {
			g.log.Warn("memguard: cannot lock region in host memory", "id", op.r.id, "err", err)
		}
	}
	g.hostOps = nil
}

func (g *Guard) resort() {
	g.npages.Store(int64(len(g.byPage)))
	g.sorted = g.sorted[:0]
	for p := range g.byPage {
		g.sorted = append(g.sorted, p)
	}
	sort.Slice(g.sorted, func(i, j int) bool { return g.sorted[i] < g.sorted[j] })
}

func (g *Guard) unregister(ctx VCPUContext, id uint64) error {
	if err := callerOK(ctx); err != nil {
		return fmt.Errorf("unregister: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	r, ok := g.regions[id]
	if !ok {
		return fmt.Errorf("unregister %d: %w", id, ENOENT)
	}
	if r.owner != ctx.owner() {
		return fmt.Errorf("unregister %d: %w", id, EPERM)
	}
	g.release(r, "unregistered by owner")
	return nil
}

// Protected reports whether any page of [gpa, gpa+n) is protected. A VMM
// puts it in front of the memory its emulated devices reach (DMA), so a
// guest kernel cannot have a device read or write a region for it.
func (g *Guard) Protected(gpa, n uint64) bool {
	if g.npages.Load() == 0 {
		// Nothing protected: the devices' path (every ring access and
		// buffer) takes no lock.
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.anyProtectedLocked(gpa, n)
}
