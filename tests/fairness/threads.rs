//! What `/proc` says about a process's threads: the fairness tests check where the engine ran
//! work, and at which priority.

/// The task directories (`/proc/<pid>/task/<tid>`) of `pid`'s threads named `comm` (as the
/// kernel keeps it: cut to 15 bytes).
pub(crate) fn threads_named(pid: u32, comm: &str) -> Vec<std::path::PathBuf> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .map(|task| task.path())
        .filter(|task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|name| name.trim() == comm)
        })
        .collect()
}

/// Field `n` (numbered from 1, as in `proc(5)`) of a task's `stat`.
pub(crate) fn stat_field<T: std::str::FromStr>(task: &std::path::Path, n: usize) -> Option<T> {
    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
    // Fields after the command name's closing parenthesis start at field 3.
    stat.rsplit(')')
        .next()?
        .split_whitespace()
        .nth(n - 3)?
        .parse()
        .ok()
}

/// Each of `pid`'s threads named `comm`: its nice value (field 19 of its `stat`) and the CPU
/// time it ran so far (the first field of its `schedstat`, in ns).
pub(crate) fn nice_and_cpu_ns(pid: u32, comm: &str) -> Vec<(i32, u64)> {
    threads_named(pid, comm)
        .iter()
        .filter_map(|task| {
            let schedstat = std::fs::read_to_string(task.join("schedstat")).ok()?;
            let ran = schedstat.split_whitespace().next()?.parse().ok()?;
            Some((stat_field(task, 19)?, ran))
        })
        .collect()
}
