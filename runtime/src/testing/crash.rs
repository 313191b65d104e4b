//! What crash and memory tests share: a worker process (the test binary itself, re-executed to
//! run one test) that is SIGKILLed, also when the test fails; the number of kill rounds and the
//! random seed, from the environment; a reproducible random sequence; and the process's
//! resident set.

use std::process::{Child, Command, Stdio};

/// A child process running one test of the current test binary; SIGKILLed when dropped, so a
/// failing test leaves none behind.
#[derive(Debug)]
pub struct Worker(Child);

impl Worker {
    /// Run the test named `test` of this test binary in a child process (which must do its work
    /// only when it finds its variables in `env`), its standard output discarded.
    pub fn spawn(test: &str, env: &[(&str, String)]) -> std::io::Result<Worker> {
        let mut command = Command::new(std::env::current_exe()?);
        command
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null());
        command.spawn().map(Worker)
    }

    /// SIGKILL it and wait for it to end.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How many times a crash test kills its worker, and the seed of its writers.
#[derive(Debug, Clone, Copy)]
pub struct CrashPlan {
    /// `PGREALM_CRASH_ROUNDS`, or the test's default.
    pub rounds: u32,
    /// `PGREALM_CRASH_SEED`, or one from the clock.
    pub seed: u64,
}

impl CrashPlan {
    /// The plan from the environment; prints it, so a failing run can be repeated.
    pub fn from_env(default_rounds: u32) -> CrashPlan {
        let rounds = std::env::var("PGREALM_CRASH_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default_rounds);
        let seed = std::env::var("PGREALM_CRASH_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            });
        println!("PGREALM_CRASH_SEED={seed} PGREALM_CRASH_ROUNDS={rounds}");
        CrashPlan { rounds, seed }
    }
}

impl CrashPlan {
    /// Kill `worker` after a random 300–999 ms and start a new one with `respawn`, [`rounds`]
    /// times, printing each round with the count of `writes` so far; returns the last worker,
    /// running.
    ///
    /// [`rounds`]: CrashPlan::rounds
    pub async fn kill_rounds(
        &self,
        mut worker: Worker,
        mut respawn: impl FnMut() -> Worker,
        writes: &std::sync::atomic::AtomicU64,
    ) -> Worker {
        let mut state = self.seed | 1;
        for round in 0..self.rounds {
            let pause = 300 + xorshift(&mut state) % 700;
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
            worker.kill();
            println!(
                "round {round}: killed after {pause} ms, {} writes so far",
                writes.load(std::sync::atomic::Ordering::Relaxed)
            );
            worker = respawn();
        }
        worker
    }
}

/// The next number of a xorshift64* sequence: reproducible randomness from a seed.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A `/proc/self/status` figure in KiB: `VmRSS:` (resident now) or `VmHWM:` (its peak).
pub fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}
