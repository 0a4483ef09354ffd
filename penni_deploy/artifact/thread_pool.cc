// The CPU thread pool an x86 artifact's kernels run on, compiled into the artifact's library.
//
// TVM's generated code runs each parallel loop through the function pointer
// __TVMBackendParallelLaunch, which TVM's runtime sets when it loads the library. TVM's own pool
// waits with sched_yield in both directions (a worker polling for work, the caller polling for the
// workers), a system call of ~0.7 us on the KVM guests we measured, and each launch paid one or two of
// them: 0.8-1.9 us per launch there, against ~0.1 us here. A CIFAR ResNet56 makes ~60 launches per
// image of 5-10 us each. Its workers also keep calling sched_yield for ~200 ms after the last launch,
// where these sleep after ~1 ms.
//
// The loader (artifact/threads.py, cpp/src/penni_runtime.cc) calls penni_pool_install() after TVM
// has loaded the library, which points __TVMBackendParallelLaunch at penni_pool_launch. Each loaded
// library has its own pool (its own copy of this file's statics).
//
// A launch hands task i to thread i (the caller runs task 0) through one cache line per worker, so
// a worker never reads a slot the caller is rewriting: the caller writes slot i again only after
// worker i has finished the job in it. A second thread launching while a launch is in flight runs
// its tasks itself, one after another, rather than waiting.

#include <dlfcn.h>
#include <immintrin.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

// Bind to the oldest versions of the glibc functions we call. Linked on a glibc >= 2.34 they would
// otherwise carry version GLIBC_2.34 (where libpthread and libdl moved into libc), and the artifact
// would not load on the older systems TVM's runtime wheel supports (manylinux_2_27).
__asm__(".symver pthread_create,pthread_create@GLIBC_2.2.5");
__asm__(".symver pthread_mutex_trylock,pthread_mutex_trylock@GLIBC_2.2.5");
__asm__(".symver pthread_once,pthread_once@GLIBC_2.2.5");
__asm__(".symver dladdr,dladdr@GLIBC_2.2.5");
__asm__(".symver dlopen,dlopen@GLIBC_2.2.5");

extern "C" {
typedef struct {
  void* sync_handle;
  int32_t num_task;
} TVMParallelGroupEnv;
typedef int (*FTVMParallelLambda)(int task_id, TVMParallelGroupEnv* penv, void* cdata);

// Defined by TVM's code generator in the same library; weak, so that a library without parallel
// loops (or with barriers, which this pool does not provide) still links.
extern __attribute__((weak)) void* __TVMBackendParallelLaunch;
extern __attribute__((weak)) void* __TVMBackendParallelBarrier;
}

namespace {

constexpr int kMaxThreads = 256;
constexpr int64_t kWorkerSpinNs = 1000000;  // a worker polls this long after its last task, then sleeps
constexpr int64_t kCallerSpinNs = 1000000;  // the caller polls this long, then yields the core too

struct alignas(64) Slot {
  std::atomic<uint32_t> seq{0};  // bumped once per job handed to this worker
  std::atomic<int> sleeping{0};
  FTVMParallelLambda fn = nullptr;
  void* cdata = nullptr;
  int first = 0, stride = 1, num_task = 0;
  uint32_t born = 0;  // seq when the thread was created: a launch may bump it before the thread runs
};

Slot slots[kMaxThreads];
alignas(64) std::atomic<int> pending{0};
alignas(64) std::atomic<int> failed{0};
std::atomic<uint64_t> launches{0};
std::atomic<int> wanted_threads{1};  // what the loader asked for
int started = 1;         // threads that exist, the caller included
pthread_mutex_t launch_lock = PTHREAD_MUTEX_INITIALIZER;
thread_local bool in_worker = false;

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

int RunTasks(FTVMParallelLambda fn, void* cdata, int first, int stride, int num_task) {
  TVMParallelGroupEnv env{nullptr, num_task};
  int rc = 0;
  for (int task = first; task < num_task; task += stride) rc |= fn(task, &env, cdata);
  return rc;
}

void* WorkerMain(void* arg) {
  Slot& slot = slots[reinterpret_cast<intptr_t>(arg)];
  in_worker = true;
  uint32_t seen = slot.born;
  for (;;) {
    int64_t idle_since = NowNs();
    for (unsigned polls = 1; slot.seq.load(std::memory_order_acquire) == seen; ++polls) {
      _mm_pause();
      if (polls % 64 != 0 || NowNs() - idle_since < kWorkerSpinNs) continue;
      // Announce the sleep, then check once more: the caller bumps seq before it reads sleeping.
      slot.sleeping.store(1);
      if (slot.seq.load() == seen) {
        syscall(SYS_futex, reinterpret_cast<uint32_t*>(&slot.seq), FUTEX_WAIT_PRIVATE, seen, nullptr, nullptr, 0);
      }
      slot.sleeping.store(0);
      idle_since = NowNs();
    }
    seen = slot.seq.load(std::memory_order_acquire);
    if (RunTasks(slot.fn, slot.cdata, slot.first, slot.stride, slot.num_task) != 0) failed.store(1);
    pending.fetch_sub(1, std::memory_order_acq_rel);
  }
  return nullptr;
}

// Under launch_lock: create workers up to wanted_threads (fewer if the system refuses threads).
void StartWorkers() {
  for (; started < wanted_threads.load(); ++started) {
    slots[started].born = slots[started].seq.load();
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t thread;
    int rc = pthread_create(&thread, &attr, WorkerMain, reinterpret_cast<void*>(static_cast<intptr_t>(started)));
    pthread_attr_destroy(&attr);
    if (rc != 0) {
      wanted_threads.store(started);
      break;
    }
  }
}

// A forked child has only the forking thread: forget the workers (new ones start on the next
// launch) and the lock another thread may have held.
void ForgetWorkersAfterFork() {
  pthread_mutex_init(&launch_lock, nullptr);
  for (int i = 1; i < started; ++i) {
    slots[i].seq.store(0);
    slots[i].sleeping.store(0);
  }
  started = 1;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) int penni_pool_launch(FTVMParallelLambda fn, void* cdata, int num_task) {
  int threads = wanted_threads.load(std::memory_order_relaxed);
  int n = num_task > 0 ? num_task : threads;
  int active = n < threads ? n : threads;
  if (active <= 1 || in_worker || pthread_mutex_trylock(&launch_lock) != 0) {
    return RunTasks(fn, cdata, 0, 1, n) != 0 ? -1 : 0;
  }
  StartWorkers();
  if (active > started) active = started;
  launches.fetch_add(1, std::memory_order_relaxed);
  failed.store(0, std::memory_order_relaxed);
  pending.store(active - 1, std::memory_order_relaxed);
  for (int w = 1; w < active; ++w) {
    Slot& slot = slots[w];
    slot.fn = fn;
    slot.cdata = cdata;
    slot.first = w;
    slot.stride = active;
    slot.num_task = n;
    slot.seq.fetch_add(1);  // seq_cst: ordered before the load of sleeping below
    if (slot.sleeping.load()) {
      syscall(SYS_futex, reinterpret_cast<uint32_t*>(&slot.seq), FUTEX_WAKE_PRIVATE, 1, nullptr, nullptr, 0);
    }
  }
  int rc = RunTasks(fn, cdata, 0, active, n);
  int64_t waiting_since = NowNs();
  for (unsigned polls = 1; pending.load(std::memory_order_acquire) != 0; ++polls) {
    if (polls % 64 == 0 && NowNs() - waiting_since > kCallerSpinNs) {
      sched_yield();  // a worker is descheduled or its task is long: stop holding the core
    } else {
      _mm_pause();
    }
  }
  rc |= failed.load();
  pthread_mutex_unlock(&launch_lock);
  // A failed task has set its error in its own thread; the caller can only report that one failed.
  return rc != 0 ? -1 : 0;
}

// Point the library's kernels at this pool, with `threads` threads (the caller included).
// Returns the thread count, or 0 when the library keeps TVM's pool (no parallel loops, or loops
// that use TVM's barrier).
__attribute__((visibility("default"))) int penni_pool_install(int threads) {
  if (&__TVMBackendParallelLaunch == nullptr || &__TVMBackendParallelBarrier != nullptr) return 0;
  // The workers run code of this library until the process ends: never let it be unloaded under
  // them (TVM 0.27 does not unload libraries today; this keeps it so).
  Dl_info self;
  if (dladdr(reinterpret_cast<void*>(&penni_pool_install), &self) != 0 && self.dli_fname != nullptr) {
    dlopen(self.dli_fname, RTLD_LAZY | RTLD_NOLOAD | RTLD_NODELETE);
  }
  static pthread_once_t fork_handler_once = PTHREAD_ONCE_INIT;
  pthread_once(&fork_handler_once, [] { pthread_atfork(nullptr, nullptr, ForgetWorkersAfterFork); });
  pthread_mutex_lock(&launch_lock);
  wanted_threads.store(threads < 1 ? 1 : (threads > kMaxThreads ? kMaxThreads : threads));
  pthread_mutex_unlock(&launch_lock);
  __TVMBackendParallelLaunch = reinterpret_cast<void*>(&penni_pool_launch);
  return wanted_threads.load();
}

// Threads a launch uses now, and launches so far that used more than one (for tests and inspect).
__attribute__((visibility("default"))) int penni_pool_threads() { return wanted_threads.load(); }
__attribute__((visibility("default"))) uint64_t penni_pool_launches() { return launches.load(); }

}  // extern "C"
