//! Watchers on their own threads that catch what a test's polling would miss: the key path
//! missing for an instant, a directory changed and changed back.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// What an [`LstatWatcher`] saw.
#[derive(Debug, Clone, Copy, Default)]
pub struct LstatStats {
    pub samples: u64,
    /// lstat() returned ENOENT this many times.
    pub missing: u64,
    /// Any other error.
    pub other_errors: u64,
}

impl LstatStats {
    pub fn saw_missing(&self) -> bool {
        self.missing > 0
    }
}

/// lstat()s a path in a tight loop on its own thread until stopped.
pub struct LstatWatcher {
    stop: Arc<AtomicBool>,
    /// ENOENT results so far, readable while the loop runs.
    missing: Arc<AtomicU64>,
    handle: Option<JoinHandle<LstatStats>>,
}

impl LstatWatcher {
    /// Starts the loop and returns once it has taken its first sample, so whatever the caller
    /// does next is watched even on a loaded machine that schedules the thread late.
    pub fn start(path: &Path) -> LstatWatcher {
        let stop = Arc::new(AtomicBool::new(false));
        let missing = Arc::new(AtomicU64::new(0));
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let path = path.to_path_buf();
        let flag = Arc::clone(&stop);
        let live_missing = Arc::clone(&missing);
        let handle = thread::spawn(move || {
            let mut st = LstatStats::default();
            let mut started = Some(started_tx);
            while !flag.load(Ordering::Relaxed) {
                st.samples += 1;
                match fs::symlink_metadata(&path) {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        st.missing += 1;
                        live_missing.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => st.other_errors += 1,
                }
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
            st
        });
        started_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("lstat watcher thread never ran");
        LstatWatcher {
            stop,
            missing,
            handle: Some(handle),
        }
    }

    /// ENOENT results seen so far.
    pub fn missing_so_far(&self) -> u64 {
        self.missing.load(Ordering::Relaxed)
    }

    /// Stops the loop and returns what it saw.
    pub fn stop(mut self) -> LstatStats {
        self.finish()
    }

    fn finish(&mut self) -> LstatStats {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("lstat watcher thread"))
            .unwrap_or_default()
    }
}

impl Drop for LstatWatcher {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Watches directories on its own thread (names, file types, inodes, modes, owners, every
/// millisecond) and remembers the first change it sees, so a change that is undone before
/// the end (a link made and removed again) is still caught.
pub struct DirWatch {
    stop: Arc<AtomicBool>,
    first_change: Arc<Mutex<Option<String>>>,
    handle: Option<JoinHandle<u64>>,
}

fn dir_listing(dir: &Path) -> Vec<(String, u64, u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let m = fs::symlink_metadata(e.path()).ok()?;
                    Some((
                        e.file_name().to_string_lossy().into_owned(),
                        m.ino(),
                        m.mode(),
                        m.uid(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl DirWatch {
    pub fn start(dirs: &[PathBuf]) -> DirWatch {
        let dirs = dirs.to_vec();
        let before: Vec<_> = dirs.iter().map(|d| dir_listing(d)).collect();
        let stop: Arc<AtomicBool> = Arc::default();
        let first_change: Arc<Mutex<Option<String>>> = Arc::default();
        let (st, fc) = (stop.clone(), first_change.clone());
        let handle = thread::spawn(move || {
            let mut samples = 0;
            while !st.load(Ordering::Relaxed) {
                samples += 1;
                for (d, b) in dirs.iter().zip(&before) {
                    let now = dir_listing(d);
                    if &now != b {
                        let mut g = fc.lock().unwrap();
                        if g.is_none() {
                            *g = Some(format!("{}: {b:?} became {now:?}", d.display()));
                        }
                    }
                }
                thread::sleep(Duration::from_millis(1));
            }
            samples
        });
        DirWatch {
            stop,
            first_change,
            handle: Some(handle),
        }
    }

    /// The first change seen so far, if any.
    pub fn change(&self) -> Option<String> {
        self.first_change.lock().unwrap().clone()
    }

    /// Stops watching; returns the samples taken and the first change seen.
    pub fn stop(mut self) -> (u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let n = self.handle.take().map(|h| h.join().unwrap()).unwrap_or(0);
        (n, self.change())
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
