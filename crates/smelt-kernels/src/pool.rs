//! A small persistent thread pool for many short parallel operations (a decode step runs
//! hundreds of matrix-vector products of tens of microseconds each).
//!
//! The calling thread takes part in the work. Idle workers spin on a generation counter for
//! about [`SPIN`] before sleeping on a condition variable, so back-to-back operations start
//! without a wake-up (a futex wake costs tens of microseconds, as long as the work itself).
//! Tasks are handed out dynamically through one atomic counter. A panic in a task is caught
//! and re-raised on the caller once every thread has stopped touching the job.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before it sleeps.
pub const SPIN: Duration = Duration::from_millis(2);

type Job = *const (dyn Fn(usize) + Sync);

struct Shared {
    /// The current job; written by the caller only while every worker is idle.
    job: UnsafeCell<Option<Job>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not yet finished the current generation.
    active: AtomicUsize,
    generation: AtomicUsize,
    shutdown: AtomicBool,
    panic: Mutex<Option<Box<dyn std::any::Any + Send>>>,
    sleepers: AtomicUsize,
    sleep_lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written while no worker reads it (between generations, see `run`), and
// the pointed-to closure is `Sync`.
unsafe impl Sync for Shared {}
unsafe impl Send for Shared {}

thread_local! {
    static IN_POOL: Cell<bool> = const { Cell::new(false) };
}

/// A fixed set of worker threads plus the caller.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    run_lock: Mutex<()>,
}

impl ThreadPool {
    /// A pool running work on `n_threads` threads in all: the caller and `n_threads - 1` workers
    /// (fewer if the system cannot start them; [`n_threads`](Self::n_threads) says how many).
    pub fn new(n_threads: usize) -> ThreadPool {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panic: Mutex::new(None),
            sleepers: AtomicUsize::new(0),
            sleep_lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        // A worker the system refuses to start is left out: the pool runs on fewer threads.
        let workers = (1..n_threads.max(1))
            .filter_map(|k| {
                let s = shared.clone();
                std::thread::Builder::new().name(format!("smelt-worker-{k}")).spawn(move || worker(&s)).ok()
            })
            .collect();
        ThreadPool { shared, workers, run_lock: Mutex::new(()) }
    }

    /// The process-wide pool: `SMELT_THREADS` threads, else one per available CPU.
    pub fn global() -> &'static ThreadPool {
        static POOL: OnceLock<ThreadPool> = OnceLock::new();
        POOL.get_or_init(|| ThreadPool::new(default_threads()))
    }

    /// Threads that run work, the caller included.
    pub fn n_threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Threads a [`run`](Self::run) from here would use: 1 inside a task (nested runs are
    /// inline), else [`n_threads`](Self::n_threads). Callers size their chunks with it, so that
    /// work run inline is not cut into pieces for threads it will never meet.
    pub fn threads_here(&self) -> usize {
        if IN_POOL.with(|c| c.get()) {
            1
        } else {
            self.n_threads()
        }
    }

    /// Calls `f(i)` for every `i in 0..n_tasks`, spread over the pool; returns when all calls
    /// have returned. Called from inside a task, it runs the tasks inline on that thread.
    pub fn run(&self, n_tasks: usize, f: &(dyn Fn(usize) + Sync)) {
        if n_tasks == 0 {
            return;
        }
        if self.workers.is_empty() || n_tasks == 1 || IN_POOL.with(|c| c.get()) {
            (0..n_tasks).for_each(f);
            return;
        }
        let _guard = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let s = &*self.shared;
        // SAFETY: every worker finished the previous generation (`active` reached 0 before the
        // last `run` returned), so none reads `job` now. The lifetime is erased; the pointer
        // is cleared before this function returns, while `f` is still alive.
        unsafe { *s.job.get() = Some(std::mem::transmute::<&(dyn Fn(usize) + Sync), Job>(f)) };
        s.n_tasks.store(n_tasks, Relaxed);
        s.next.store(0, Relaxed);
        s.active.store(self.workers.len(), Relaxed);
        s.generation.fetch_add(1, SeqCst);
        if s.sleepers.load(SeqCst) > 0 {
            let _g = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        IN_POOL.with(|c| c.set(true));
        let mine = catch_unwind(AssertUnwindSafe(|| drain(s, f)));
        IN_POOL.with(|c| c.set(false));
        let mut spins = 0u32;
        while s.active.load(Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: all workers are done with this generation.
        unsafe { *s.job.get() = None };
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if let Some(p) = s.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }

    /// Splits `0..n` into chunks of `chunk` (the last may be shorter) and calls
    /// `f(start..end)` for each, in parallel.
    pub fn for_chunks(&self, n: usize, chunk: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let chunk = chunk.max(1);
        self.run(n.div_ceil(chunk), &|i| f(i * chunk..((i + 1) * chunk).min(n)));
    }
}

/// Runs tasks of the current job until none are left.
fn drain(s: &Shared, f: &(dyn Fn(usize) + Sync)) {
    let n = s.n_tasks.load(Relaxed);
    loop {
        let i = s.next.fetch_add(1, Relaxed);
        if i >= n {
            return;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    IN_POOL.with(|c| c.set(true));
    // The generation when the pool was made, not when this thread happened to start: a `run`
    // may already have begun, and it waits for every worker.
    let mut seen = 0;
    loop {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let g = s.generation.load(Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.shutdown.load(Relaxed) {
                return;
            }
            spins += 1;
            if !spins.is_multiple_of(1024) || start.elapsed() < SPIN {
                std::hint::spin_loop();
                continue;
            }
            let mut guard = s.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, SeqCst);
            while s.generation.load(SeqCst) == seen && !s.shutdown.load(SeqCst) {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, SeqCst);
            drop(guard);
            if s.shutdown.load(SeqCst) {
                return;
            }
        }
        // SAFETY: the caller published the job before bumping the generation (SeqCst/Acquire)
        // and keeps it alive until `active` reaches 0.
        let job = unsafe { (*s.job.get()).map(|p| &*p) };
        if let Some(f) = job {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| drain(s, f))) {
                *s.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
                // Let the other threads stop early.
                s.next.store(usize::MAX / 2, Relaxed);
            }
        }
        s.active.fetch_sub(1, Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, SeqCst);
        {
            let _g = self.shared.sleep_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// `SMELT_THREADS` if set to a positive number, else the number of CPUs this process may use.
pub fn default_threads() -> usize {
    std::env::var("SMELT_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// A raw view of a mutable slice that pool tasks may write through at disjoint indices.
#[derive(Clone, Copy)]
pub struct Disjoint<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: users promise that concurrent tasks touch disjoint elements (see `slice`).
unsafe impl<T: Send> Send for Disjoint<T> {}
unsafe impl<T: Send> Sync for Disjoint<T> {}

impl<T> Disjoint<T> {
    pub fn new(s: &mut [T]) -> Self {
        Disjoint { ptr: s.as_mut_ptr(), len: s.len() }
    }

    /// The sub-slice `range`.
    ///
    /// # Safety
    /// No other live reference (from any thread) may overlap `range`, and the original slice
    /// must outlive the returned one.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, range: std::ops::Range<usize>) -> &mut [T] {
        assert!(range.start <= range.end && range.end <= self.len, "range {range:?} outside 0..{}", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.end - range.start)
    }

    /// The base pointer (for APIs that take raw strided pointers).
    pub fn as_mut_ptr(&self) -> *mut T {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Writes element `i`.
    ///
    /// # Safety
    /// No other thread may access element `i` concurrently.
    pub unsafe fn write(&self, i: usize, v: T) {
        assert!(i < self.len, "index {i} outside 0..{}", self.len);
        self.ptr.add(i).write(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_exactly_once() {
        let pool = ThreadPool::new(3);
        for n in [0, 1, 2, 7, 1000] {
            let counts: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            pool.run(n, &|i| {
                counts[i].fetch_add(1, Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Relaxed) == 1), "n = {n}");
        }
    }

    #[test]
    fn many_small_runs_and_sleeping_workers() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        for round in 0..2000 {
            pool.run(4, &|i| {
                total.fetch_add(i, Relaxed);
            });
            if round == 1000 {
                std::thread::sleep(SPIN * 3); // workers fall asleep and must wake again
            }
        }
        assert_eq!(total.load(Relaxed), 2000 * 6);
    }

    #[test]
    fn nested_runs_execute_inline() {
        let pool = ThreadPool::new(2);
        let total = AtomicUsize::new(0);
        pool.run(4, &|_| pool.run(3, &|j| {
            total.fetch_add(j + 1, Relaxed);
        }));
        assert_eq!(total.load(Relaxed), 4 * 6);
    }

    #[test]
    fn threads_here_is_one_inside_a_task() {
        let pool = ThreadPool::new(2);
        assert_eq!(pool.threads_here(), 2);
        let seen = AtomicUsize::new(0);
        pool.run(8, &|_| {
            seen.fetch_add(pool.threads_here(), Relaxed);
        });
        assert_eq!(seen.load(Relaxed), 8, "every task, on either thread, sees one thread");
        assert_eq!(pool.threads_here(), 2, "back outside, the whole pool again");
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_pool_survives() {
        let pool = ThreadPool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| pool.run(64, &|i| assert!(i != 40, "task 40 fails"))));
        assert!(r.is_err());
        let total = AtomicUsize::new(0);
        pool.run(10, &|_| {
            total.fetch_add(1, Relaxed);
        });
        assert_eq!(total.load(Relaxed), 10);
    }

    #[test]
    fn chunks_cover_the_range() {
        let pool = ThreadPool::new(2);
        let mut out = vec![0usize; 103];
        let d = Disjoint::new(&mut out);
        pool.for_chunks(103, 10, &|r| {
            for i in r {
                // SAFETY: chunks are disjoint.
                unsafe { d.write(i, i * 2) };
            }
        });
        assert!(out.iter().enumerate().all(|(i, &v)| v == 2 * i));
    }
}
