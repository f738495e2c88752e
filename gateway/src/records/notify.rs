//! Change notices for cached SS-MIX2 patients on a local file system. Telling that a
//! cached patient is current by its directories' times costs a stat per directory on
//! every read (15 for a patient of four visits, 75 for one of 24), most of a patient
//! read's CPU. On a local file system the kernel queues an inotify event for a change
//! before the call that made it returns, so one non-blocking read of the queue tells
//! whether anything of any cached patient changed: a file written before a read
//! arrives is in that read (read-your-writes holds exactly as with stats).
//!
//! A network file system (NFS, SMB) reports no changes made by other hosts, so sites
//! there keep the stat check; so does a patient whose directories changed in the last
//! second, until a later read finds them settled.

use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

/// Whatever changes a directory's entries or a file in it in place.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::MODIFY
        | WatchMask::ATTRIB
        | WatchMask::CLOSE_WRITE
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

/// Whether `root` is on a file system whose changes all pass through this kernel
/// (so inotify sees them): local disk file systems and tmpfs, not network ones.
pub fn is_local(root: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(root.as_os_str().as_bytes()) else { return false };
    let mut fs = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: `path` is NUL-terminated and `fs` is written by statfs before it is read.
    if unsafe { libc::statfs(path.as_ptr(), fs.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it filled `fs`.
    let kind = unsafe { fs.assume_init() }.f_type as u64;
    const LOCAL: [u64; 9] = [
        0xEF53,      // ext2/3/4
        0x5846_5342, // xfs
        0x9123_683E, // btrfs
        0x0102_1994, // tmpfs
        0xF2F5_2010, // f2fs
        0x2FC1_2FC1, // zfs
        0x3153_464A, // jfs
        0x794C_7630, // overlayfs
        0x5265_4973, // reiserfs
    ];
    LOCAL.contains(&kind)
}

struct Inner {
    inotify: Inotify,
    /// Each watch: the unit (cache key) it belongs to and how many armings hold it
    /// (a re-read unit arms the same directories before the old arming is dropped).
    watches: HashMap<WatchDescriptor, (String, usize)>,
    /// Per unit with an arming: how many armings it has, and the moment of its last
    /// noticed change.
    units: HashMap<String, (usize, u64)>,
    /// Moments: every event read and every arming advances it.
    now: u64,
    /// Armings before this moment tell nothing (the queue overflowed, or failed).
    void_before: u64,
    buffer: Vec<u8>,
}

impl Inner {
    /// Read every queued event, noting when each unit last changed.
    fn drain(&mut self) {
        loop {
            let Inner { inotify, watches, units, now, void_before, buffer } = self;
            let events = match inotify.read_events(buffer) {
                Ok(events) => events,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "reading change notices failed; cached patients are checked by stat");
                    *now += 1;
                    *void_before = *now;
                    return;
                }
            };
            let mut any = false;
            for event in events {
                any = true;
                *now += 1;
                if event.mask.contains(EventMask::Q_OVERFLOW) {
                    *void_before = *now;
                    continue;
                }
                if let Some((key, _)) = watches.get(&event.wd) {
                    if let Some(unit) = units.get_mut(key) {
                        unit.1 = *now;
                    }
                }
                if event.mask.contains(EventMask::IGNORED) {
                    // The directory is gone (or unmounted): its watch with it.
                    watches.remove(&event.wd);
                }
            }
            if !any {
                return;
            }
        }
    }
}

/// The change notices of every cached patient of the local SS-MIX2 sites.
pub struct Notices {
    inner: Mutex<Inner>,
    /// Directories watched, for `/status` and `/metrics`.
    watched: Arc<std::sync::atomic::AtomicU64>,
}

/// The notices locked; the count of watches is published when it is let go.
struct Guard<'a>(std::sync::MutexGuard<'a, Inner>, &'a std::sync::atomic::AtomicU64);

impl std::ops::Deref for Guard<'_> {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::ops::DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut Inner {
        &mut self.0
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        self.1.store(self.0.watches.len() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A unit's directories under watch since a moment it was known current; dropping it
/// lets the watches go when no other arming holds them.
pub struct Armed {
    notices: Arc<Notices>,
    key: String,
    wds: Vec<WatchDescriptor>,
    since: u64,
}

impl std::fmt::Debug for Armed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Armed").field("key", &self.key).field("watches", &self.wds.len()).finish()
    }
}

impl Drop for Armed {
    fn drop(&mut self) {
        let mut inner = self.notices.lock();
        for wd in self.wds.drain(..) {
            let last = match inner.watches.get_mut(&wd) {
                Some((_, held)) => {
                    *held -= 1;
                    *held == 0
                }
                None => false,
            };
            if last {
                inner.watches.remove(&wd);
                // Already gone when its directory was removed: nothing to undo.
                let _ = inner.inotify.watches().remove(wd);
            }
        }
        if let Some(unit) = inner.units.get_mut(&self.key) {
            unit.0 -= 1;
            if unit.0 == 0 {
                inner.units.remove(&self.key);
            }
        }
    }
}

impl Notices {
    /// A notice queue, or `None` when the kernel refuses one (then stats are used).
    pub fn new(watched: Arc<std::sync::atomic::AtomicU64>) -> Option<Arc<Notices>> {
        match Inotify::init() {
            Ok(inotify) => Some(Arc::new(Notices {
                watched,
                inner: Mutex::new(Inner {
                    inotify,
                    watches: HashMap::new(),
                    units: HashMap::new(),
                    now: 0,
                    void_before: 0,
                    buffer: vec![0; 64 * 1024],
                }),
            })),
            Err(e) => {
                tracing::warn!(error = %e, "no change notices (inotify); cached patients are checked by stat");
                None
            }
        }
    }

    fn lock(&self) -> Guard<'_> {
        Guard(self.inner.lock().unwrap_or_else(PoisonError::into_inner), &self.watched)
    }

    /// Whether `armed` still tells its unit current: no change noticed since it was
    /// armed (one non-blocking read of the queue).
    pub fn current(&self, armed: &Armed) -> bool {
        let mut inner = self.lock();
        inner.drain();
        armed.since >= inner.void_before && inner.units.get(&armed.key).is_some_and(|u| u.1 <= armed.since)
    }

    /// Watch `dirs` for unit `key`. Call it before the check that finds the unit
    /// current, and keep the arming only if that check does: a change between the
    /// two is seen by the check, a later one is noticed. `None` if a directory cannot
    /// be watched (the watch limit reached, say): the unit is checked by stat.
    pub fn arm<'a>(self: &Arc<Self>, key: &str, dirs: impl Iterator<Item = &'a Path>) -> Option<Armed> {
        let mut inner = self.lock();
        inner.drain();
        inner.now += 1;
        inner.units.entry(key.to_string()).or_insert((0, 0)).0 += 1;
        let mut armed = Armed { notices: self.clone(), key: key.to_string(), wds: Vec::new(), since: inner.now };
        for dir in dirs {
            match inner.inotify.watches().add(dir, mask()) {
                Ok(wd) => {
                    inner.watches.entry(wd.clone()).or_insert_with(|| (key.to_string(), 0)).1 += 1;
                    armed.wds.push(wd);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "a patient directory could not be watched; it is checked by stat");
                    // Dropping the partial arming (which locks) lets its watches go.
                    drop(inner);
                    return None;
                }
            }
        }
        Some(armed)
    }

    /// How many directories are watched (for metrics and tests).
    pub fn watched(&self) -> usize {
        self.lock().watches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_in_a_watched_directory_is_noticed_before_the_write_returns() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("20261201").join("OMP-01");
        std::fs::create_dir_all(&sub).unwrap();
        let n = Notices::new(Arc::default()).expect("inotify");
        let armed = n.arm("hub/p1", [dir.path(), sub.as_path()].into_iter()).unwrap();
        assert!(n.current(&armed));
        std::fs::write(sub.join("new.hl7"), b"MSH|").unwrap();
        // No wait: the event is queued by the write itself.
        assert!(!n.current(&armed));
        // A new arming (the unit read again) is current until the next change.
        let again = n.arm("hub/p1", [dir.path(), sub.as_path()].into_iter()).unwrap();
        assert!(n.current(&again));
        // A reader still holding the old unit is not told it is current.
        assert!(!n.current(&armed));
        drop(armed);
        // The old arming let go of nothing the new one holds.
        assert_eq!(n.watched(), 2);
        std::fs::remove_file(sub.join("new.hl7")).unwrap();
        assert!(!n.current(&again));
        drop(again);
        assert_eq!(n.watched(), 0);
    }

    #[test]
    fn a_removed_directory_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("p2");
        std::fs::create_dir_all(&sub).unwrap();
        let n = Notices::new(Arc::default()).expect("inotify");
        let armed = n.arm("hub/p2", [sub.as_path()].into_iter()).unwrap();
        assert!(n.current(&armed));
        std::fs::remove_dir(&sub).unwrap();
        assert!(!n.current(&armed));
        assert_eq!(n.watched(), 0, "the kernel dropped the watch with the directory");
    }

    #[test]
    fn a_temporary_directory_is_on_a_local_file_system() {
        assert!(is_local(&std::env::temp_dir()));
        assert!(!is_local(Path::new("/no/such/directory")));
    }
}
