//! Sharing a list of items among threads: each thread takes the next item nobody has
//! taken, so a slow item holds up one thread, not a fixed share of the list.

use anyhow::{anyhow, Result};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Run `work` on every item of `items` from up to `threads` scoped threads (never more
/// threads than items). Each thread first makes a state of its own with `start` (a
/// repository handle, a transaction), passes it to `work` for each item it takes, and at
/// the end hands it to `finish` with whether every thread's work went well, so that it
/// can commit or abort. After a failure no thread takes another item. Returns the results
/// in no particular order, or the first error.
pub fn share<T, S, R>(
    items: &[T],
    threads: usize,
    start: impl Fn() -> Result<S> + Sync,
    work: impl Fn(&mut S, &T) -> Result<R> + Sync,
    finish: impl Fn(S, bool) -> Result<()> + Sync,
) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
{
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results = Mutex::new(Vec::with_capacity(items.len()));
    let run = || -> Result<()> {
        let mut state = start().inspect_err(|_| failed.store(true, Ordering::Relaxed))?;
        let mut mine = Vec::new();
        let worked = (|| -> Result<()> {
            while !failed.load(Ordering::Relaxed) {
                let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    break;
                };
                mine.push(work(&mut state, item)?);
            }
            Ok(())
        })();
        if worked.is_err() {
            failed.store(true, Ordering::Relaxed);
        }
        let finished = finish(state, worked.is_ok() && !failed.load(Ordering::Relaxed));
        worked?;
        finished?;
        results
            .lock()
            .map_err(|_| anyhow!("a worker thread panicked"))?
            .extend(mine);
        Ok(())
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1).min(items.len()))
            .map(|_| s.spawn(run))
            .collect();
        let mut first_error = None;
        for h in handles {
            let r = h
                .join()
                .map_err(|_| anyhow!("a worker thread panicked"))
                .and_then(|r| r);
            if let (Err(e), None) = (r, &first_error) {
                failed.store(true, Ordering::Relaxed);
                first_error = Some(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    })?;
    results
        .into_inner()
        .map_err(|_| anyhow!("a worker thread panicked"))
}

/// [`share`] without a state per thread: `work` on every item, results in no particular
/// order, or the first error.
pub fn map<T, R>(
    items: &[T],
    threads: usize,
    work: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>>
where
    T: Sync,
    R: Send,
{
    share(
        items,
        threads,
        || Ok(()),
        |(), item| work(item),
        |(), _| Ok(()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn every_item_is_worked_on_once() {
        let items: Vec<u32> = (0..1000).collect();
        for threads in [0, 1, 3, 16, 2000] {
            let mut got = map(&items, threads, |&i| Ok(i * 2)).unwrap();
            got.sort_unstable();
            assert_eq!(
                got,
                items.iter().map(|i| i * 2).collect::<Vec<_>>(),
                "{threads}"
            );
        }
        assert!(map(&[] as &[u32], 4, |&i| Ok(i)).unwrap().is_empty());
    }

    #[test]
    fn each_thread_keeps_its_state_and_all_finish_knowing_whether_all_went_well() {
        let items: Vec<u32> = (0..100).collect();
        let starts = AtomicUsize::new(0);
        let finished_ok = Mutex::new(Vec::new());
        let got = share(
            &items,
            4,
            || Ok((starts.fetch_add(1, Ordering::Relaxed), 0u32)),
            |(_, n), &i| {
                *n += 1;
                Ok(i)
            },
            |(id, n), ok| {
                finished_ok.lock().unwrap().push((id, n, ok));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(got.iter().copied().collect::<HashSet<_>>().len(), 100);
        let finished = finished_ok.into_inner().unwrap();
        assert_eq!(finished.len(), starts.load(Ordering::Relaxed));
        assert!(finished.iter().all(|&(_, _, ok)| ok));
        assert_eq!(finished.iter().map(|&(_, n, _)| n).sum::<u32>(), 100);
    }

    #[test]
    fn the_first_error_stops_the_others_and_every_thread_finishes_as_failed() {
        let items: Vec<u32> = (0..10_000).collect();
        let done = AtomicUsize::new(0);
        let finished = Mutex::new(Vec::new());
        let err = share(
            &items,
            4,
            || Ok(()),
            |(), &i| {
                anyhow::ensure!(i != 50, "item {i} is bad");
                done.fetch_add(1, Ordering::Relaxed);
                Ok(i)
            },
            |(), ok| {
                finished.lock().unwrap().push(ok);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "item 50 is bad");
        assert!(done.load(Ordering::Relaxed) < items.len() - 1);
        let finished = finished.into_inner().unwrap();
        assert!(
            !finished.is_empty() && finished.iter().all(|ok| !ok),
            "{finished:?}"
        );
    }

    #[test]
    fn a_failed_start_or_finish_is_the_error() {
        let items = [1, 2, 3];
        let err = share(
            &items,
            2,
            || -> Result<()> { anyhow::bail!("no handle") },
            |(), &i| Ok(i),
            |(), _| Ok(()),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no handle");
        let err = share(
            &items,
            2,
            || Ok(()),
            |(), &i| Ok(i),
            |(), _| anyhow::bail!("no commit"),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "no commit");
    }
}
