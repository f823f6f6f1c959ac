//! Running a piece of work inside another network namespace.
//!
//! `setns(CLONE_NEWNET)` changes the namespace of the calling thread only, so the work runs on
//! a scoped thread that enters the namespace and ends with it: the caller's threads never
//! move. Interface names are resolved and XDP links created on that thread, i.e. in the
//! namespace's view. The links are BPF links (file descriptors), so closing them later from
//! any thread detaches them from the right device. The mount namespace is left alone, so
//! `/sys` and tracefs stay the host's.

use std::fs::File;
use std::path::Path;

use nix::sched::{CloneFlags, setns};

/// Runs `work` in the network namespace at `path` (e.g. `/run/netns/NAME`), or right here
/// when `path` is `None`.
pub(crate) fn run_in<T: Send>(
    path: Option<&Path>,
    work: impl FnOnce() -> T + Send,
) -> Result<T, std::io::Error> {
    let Some(path) = path else {
        return Ok(work());
    };
    let file = File::open(path)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)?;
                Ok(work())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_path_runs_on_the_calling_thread() {
        let here = std::thread::current().id();
        assert_eq!(run_in(None, || std::thread::current().id()).unwrap(), here);
    }

    #[test]
    fn a_missing_namespace_is_an_error() {
        let err = run_in(Some(Path::new("/run/netns/x0tel-does-not-exist")), || ()).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }
}
