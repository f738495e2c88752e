//! The embedded store's audit journal: where an event becomes durable before the read
//! it records is answered. Events are appended to segment files, each group once,
//! and flushed with one `fdatasync`; the `audit_event` table (the auditor's index) is
//! filled from the journal afterwards, in larger transactions. A segment is used again
//! once every event in it is in the index and the index is on disk, so the hot path
//! overwrites blocks its files already have: a flush writes the events' blocks, not a
//! new size or new extents, and no B-tree page.
//!
//! A segment starts with a header block (magic, the first sequence number it holds and
//! the chain hash before it); records follow: magic, length, sequence number, chain
//! hash, then the stored entry. A record that fits in a 4 KB block never straddles
//! two (the rest of the block is zeros), so an event written alone dirties one block.
//! Reading back stops at the first record that is not the next link of the chain (a
//! torn write, or an older use of the segment), so nothing after a crash is taken for
//! what was not flushed.

use super::log::chain_hash;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const SEGMENT_MAGIC: &[u8; 8] = b"KKAJSEG1";
const RECORD_MAGIC: u32 = 0x4B4B_4A52;
/// Magic, length, sequence number, hash.
const RECORD_HEADER: usize = 4 + 4 + 8 + 32;
const BLOCK: u64 = 4096;
/// The header block.
const HEADER: u64 = BLOCK;
/// Largest entry a record holds (a `$everything` naming every resource returned stays
/// far below).
const MAX_ENTRY: usize = 64 << 20;

/// The journal could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O error on one of its files.
    #[error("audit journal {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// An entry too large for a record.
    #[error("an audit entry of {0} bytes is larger than a journal record holds")]
    TooLarge(usize),
    /// Another process has the journal open: two gateways on one SQLite database
    /// would write over each other's events.
    #[error("audit journal {0}: another gateway process has it open (one SQLite database serves one gateway; use PostgreSQL for several)")]
    Busy(String),
    /// A failed append could not be undone, so nothing more is appended until the
    /// journal is opened again.
    #[error("the audit journal could not undo a failed append; restart the gateway")]
    Poisoned,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> JournalError + '_ {
    move |source| JournalError::Io { path: path.display().to_string(), source }
}

/// An appended event's place in the chain: sequence number, previous hash, its hash.
pub type Link = (i64, [u8; 32], [u8; 32]);

/// One event read back from the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Sequence number.
    pub seq: i64,
    /// The previous event's chain hash.
    pub prev: [u8; 32],
    /// Its own.
    pub hash: [u8; 32],
    /// The stored entry.
    pub entry: String,
}

struct Segment {
    path: PathBuf,
    file: File,
    /// Its size in bytes.
    size: u64,
    /// First sequence number it holds (the header's).
    first: i64,
    /// The chain hash before it (the header's).
    prev: [u8; 32],
    /// Last one it holds (first - 1 while empty).
    last: i64,
}

impl Segment {
    /// Its records that continue the chain from its header, and where the next goes.
    fn records(&self) -> Result<(Vec<Record>, u64), JournalError> {
        read_records(&self.file, self.size, self.first, self.prev).map_err(io(&self.path))
    }
}

/// An open journal, its head known.
pub struct Journal {
    dir: PathBuf,
    segment_bytes: u64,
    /// Segments with a header, in the order of their first sequence numbers; the last
    /// is the one being written.
    segments: Vec<Segment>,
    /// Files without a valid header, ready for use.
    spare: Vec<(PathBuf, File, u64)>,
    /// Where the next record goes in the current segment.
    offset: u64,
    head: (i64, [u8; 32]),
    /// Files made so far (for new names).
    made: usize,
    /// A failed append left bytes that could not be cleared: refuse every append.
    poisoned: bool,
    /// Held open for the journal's life: its exclusive lock keeps other processes out.
    _lock: File,
    /// Tests: the next new segment cannot be had (as on a full disk).
    #[cfg(test)]
    fail_next_segment: bool,
}

impl Journal {
    /// Open the journal in `dir` (created when absent) for a chain whose index ends at
    /// `index_head`; returns it with the events it holds past that head, in order,
    /// for the index. A journal that ends before the index head (none yet, or one
    /// deleted) goes on from the index head.
    pub fn open(
        dir: &Path,
        segment_bytes: u64,
        index_head: (i64, [u8; 32]),
    ) -> Result<(Journal, Vec<Record>), JournalError> {
        {
            use std::os::unix::fs::DirBuilderExt;
            // Events name patients and readers: the gateway's user alone reads them,
            // as it alone reads the database.
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        }
        // The directory's own entry, and the entries of files a start cut short
        // adopted below, must survive a power cut like the events in them.
        for d in [Some(dir), dir.parent()].into_iter().flatten().filter(|d| !d.as_os_str().is_empty()) {
            File::open(d).and_then(|f| f.sync_all()).map_err(io(d))?;
        }
        let lock = lock(dir)?;
        let mut segments = Vec::new();
        let mut spare = Vec::new();
        let mut made = 0;
        let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(io(dir))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "kkj"))
            .collect();
        names.sort();
        for path in names {
            made += 1;
            let file = OpenOptions::new().read(true).write(true).open(&path).map_err(io(&path))?;
            let size = file.metadata().map_err(io(&path))?.len();
            match read_header(&file).map_err(io(&path))? {
                Some((first, prev)) if size > HEADER => {
                    segments.push(Segment { path, file, size, first, prev, last: first - 1 })
                }
                _ => spare.push((path, file, size)),
            }
        }
        segments.sort_by_key(|s| s.first);
        let mut j = Journal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(2 * HEADER),
            segments,
            spare,
            offset: HEADER,
            head: index_head,
            made,
            poisoned: false,
            _lock: lock,
            #[cfg(test)]
            fail_next_segment: false,
        };
        let replay = j.recover(index_head)?;
        Ok((j, replay))
    }

    /// Follow the chain from `index_head` through the segments: the segment holding
    /// that event (or starting right after it), then each segment whose header goes on
    /// from the last event read. What is found is the journal (its last event the
    /// head, the records past the index head to replay); every other file is spare: an
    /// older use of a segment, or one begun by an append that a crash cut short before
    /// its flush (whose reads were never answered).
    fn recover(&mut self, index_head: (i64, [u8; 32])) -> Result<Vec<Record>, JournalError> {
        let mut pool: Vec<Segment> = std::mem::take(&mut self.segments);
        let mut chain: Vec<Segment> = Vec::new();
        let mut replay = Vec::new();
        let mut cur = index_head;
        let mut end = HEADER;
        loop {
            // The segment starting right after `cur`; failing that, for the first, the
            // one holding `cur` (records read once, kept for what follows it).
            let mut next = pool.iter().position(|s| s.first == cur.0 + 1 && s.prev == cur.1).map(|i| (i, None));
            if next.is_none() && chain.is_empty() {
                for (i, seg) in pool.iter().enumerate().filter(|(_, s)| s.first <= cur.0) {
                    let (records, at) = seg.records()?;
                    if let Some(k) = records.iter().position(|r| r.seq == cur.0 && r.hash == cur.1) {
                        next = Some((i, Some((records, at, k + 1))));
                        break;
                    }
                }
            }
            let Some((i, read)) = next else { break };
            let mut seg = pool.swap_remove(i);
            let (records, at, skip) = match read {
                Some(read) => read,
                None => {
                    let (records, at) = seg.records()?;
                    (records, at, 0)
                }
            };
            replay.extend(records.into_iter().skip(skip));
            if let Some(last) = replay.last().filter(|r| r.seq > cur.0) {
                cur = (last.seq, last.hash);
            }
            seg.last = cur.0;
            end = at;
            chain.push(seg);
        }
        for s in pool {
            // Events past the table's head that do not follow it: the table was
            // restored from a backup or replaced, or the journal is another's. They are
            // set aside (their file is used again), so say so loudly.
            if s.first > cur.0 + 1 && s.records().is_ok_and(|(r, _)| !r.is_empty()) {
                tracing::error!(
                    file = %s.path.display(),
                    first = s.first,
                    table = index_head.0,
                    "the audit journal holds events past the table's head that do not follow it; they are set aside"
                );
            }
            self.spare.push((s.path, s.file, s.size));
        }
        if chain.is_empty() {
            self.restart_at(index_head);
        } else {
            self.segments = chain;
            self.head = cur;
            self.offset = end;
        }
        Ok(replay)
    }

    /// Forget the segments held (their events are all in the index) and go on from `head`.
    fn restart_at(&mut self, head: (i64, [u8; 32])) {
        for s in std::mem::take(&mut self.segments) {
            self.spare.push((s.path, s.file, s.size));
        }
        self.head = head;
        self.offset = HEADER;
    }

    /// The last event appended: sequence number and chain hash.
    pub fn head(&self) -> (i64, [u8; 32]) {
        self.head
    }

    /// Append `entries` after the head and flush them; returns each one's sequence
    /// number, previous hash and hash. On an error nothing counts as appended (the
    /// next append writes over the same place).
    pub fn append(&mut self, entries: &[&[u8]]) -> Result<Vec<Link>, JournalError> {
        if self.poisoned {
            return Err(JournalError::Poisoned);
        }
        let (mut seq, mut prev) = self.head;
        // What this append wrote where (segment, offset, length), to clear on failure.
        let mut writes: Vec<(usize, u64, usize)> = Vec::new();
        let mut out = Vec::with_capacity(entries.len());
        let mut buf: Vec<u8> = Vec::with_capacity(entries.iter().map(|e| e.len() + RECORD_HEADER + 64).sum());
        let mut start = self.offset;
        let saved = (self.segments.len(), self.offset);
        let result = (|| {
            for entry in entries {
                if entry.len() > MAX_ENTRY {
                    return Err(JournalError::TooLarge(entry.len()));
                }
                let len = RECORD_HEADER + entry.len();
                let mut at = start + buf.len() as u64;
                let room = BLOCK - at % BLOCK;
                if (len as u64) > room && (len as u64) <= BLOCK {
                    buf.resize(buf.len() + room as usize, 0);
                    at += room;
                }
                if self.segments.is_empty() || at + len as u64 > self.current_size() {
                    // Finish what goes into this segment, then go on in another.
                    if !self.segments.is_empty() {
                        writes.push((self.segments.len() - 1, start, buf.len()));
                        self.write_at(start, &buf)?;
                    }
                    buf.clear();
                    self.next_segment(seq + 1, prev, HEADER + len as u64 + BLOCK)?;
                    start = HEADER;
                }
                seq += 1;
                let hash = chain_hash(seq, &prev, entry);
                buf.extend_from_slice(&RECORD_MAGIC.to_le_bytes());
                buf.extend_from_slice(&(entry.len() as u32).to_le_bytes());
                buf.extend_from_slice(&seq.to_le_bytes());
                buf.extend_from_slice(&hash);
                buf.extend_from_slice(entry);
                out.push((seq, prev, hash));
                prev = hash;
            }
            writes.push((self.segments.len() - 1, start, buf.len()));
            self.write_at(start, &buf)?;
            // Each segment written, once, in order.
            for (k, &(i, _, _)) in writes.iter().enumerate() {
                if k == 0 || writes[k - 1].0 != i {
                    let s = &self.segments[i];
                    s.file.sync_data().map_err(io(&s.path))?;
                }
            }
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.offset = start + buf.len() as u64;
                self.head = (seq, prev);
                if let Some(s) = self.segments.last_mut() {
                    s.last = seq;
                }
                Ok(out)
            }
            Err(e) => {
                // Its reads are refused, so what it wrote must never be read back as
                // events: a later append may go to another segment, and a crash would
                // then find these bytes as the chain's next links and lose the later,
                // answered ones. Clear them, and the headers of segments it began.
                let mut cleared = Ok(());
                for &(i, at, len) in writes.iter().filter(|w| w.0 < saved.0) {
                    let s = &self.segments[i];
                    cleared = cleared
                        .and_then(|()| s.file.write_all_at(&vec![0u8; len], at))
                        .and_then(|()| s.file.sync_data());
                }
                while self.segments.len() > saved.0 {
                    if let Some(s) = self.segments.pop() {
                        cleared = cleared
                            .and_then(|()| s.file.write_all_at(&[0u8; HEADER as usize], 0))
                            .and_then(|()| s.file.sync_data());
                        self.spare.push((s.path, s.file, s.size));
                    }
                }
                if let Err(c) = cleared {
                    tracing::error!(error = %c, "a failed audit journal append could not be cleared; refusing appends until restart");
                    self.poisoned = true;
                }
                self.offset = saved.1;
                Err(e)
            }
        }
    }

    /// Every event up to `seq` is in the index, on disk: segments holding nothing
    /// later may be used again.
    pub fn indexed(&mut self, seq: i64) {
        let n = self.segments.len();
        let mut keep = Vec::with_capacity(n);
        for (i, s) in std::mem::take(&mut self.segments).into_iter().enumerate() {
            if i + 1 < n && s.last <= seq {
                self.spare.push((s.path, s.file, s.size));
            } else {
                keep.push(s);
            }
        }
        self.segments = keep;
    }

    /// How many segment files the journal holds (in use and spare).
    pub fn files(&self) -> usize {
        self.segments.len() + self.spare.len()
    }

    fn current_size(&self) -> u64 {
        self.segments.last().map_or(0, |s| s.size)
    }

    fn write_at(&self, at: u64, buf: &[u8]) -> Result<(), JournalError> {
        let s = self.segments.last().expect("a current segment");
        s.file.write_all_at(buf, at).map_err(io(&s.path))
    }

    /// Make a segment starting at `first` (after `prev`) current: a spare file of at
    /// least `need` bytes, or a new one filled with zeros and flushed, so that later
    /// flushes write data only.
    fn next_segment(&mut self, first: i64, prev: [u8; 32], need: u64) -> Result<(), JournalError> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_segment) {
            return Err(io(&self.dir)(std::io::Error::from_raw_os_error(28)));
        }
        let found = self.spare.iter().position(|(_, _, size)| *size >= need);
        let (path, file, size) = match found {
            Some(i) => self.spare.swap_remove(i),
            None => self.make_file(need.max(self.segment_bytes))?,
        };
        let mut header = vec![0u8; HEADER as usize];
        header[..8].copy_from_slice(SEGMENT_MAGIC);
        header[8..16].copy_from_slice(&first.to_le_bytes());
        header[16..48].copy_from_slice(&prev);
        // The first block after the header is cleared with it, so that what an older
        // use left there cannot be read as this segment's first record.
        header.resize(2 * HEADER as usize, 0);
        file.write_all_at(&header, 0).map_err(io(&path))?;
        // The segment left behind holds everything before this one's first.
        if let Some(left) = self.segments.last_mut() {
            left.last = first - 1;
        }
        self.segments.push(Segment { path, file, size, first, prev, last: first - 1 });
        Ok(())
    }

    fn make_file(&mut self, size: u64) -> Result<(PathBuf, File, u64), JournalError> {
        let size = size.div_ceil(BLOCK) * BLOCK;
        loop {
            self.made += 1;
            let path = self.dir.join(format!("{:08}.kkj", self.made));
            use std::os::unix::fs::OpenOptionsExt;
            let file = match OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(&path)(e)),
            };
            // Block by block: the page cache sizes a folio by the write that creates it,
            // and a later 0.5 KB event written into a 1 MB folio dirtied, and flushed,
            // the whole megabyte (measured: 1 MB written per read arriving alone).
            let zeros = [0u8; BLOCK as usize];
            let mut at = 0;
            let filled = (|| {
                while at < size {
                    let n = (size - at).min(zeros.len() as u64) as usize;
                    file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                file.sync_all()?;
                File::open(&self.dir)?.sync_all()
            })();
            if let Err(e) = filled {
                // A file that could not be filled (the disk is full) is not left behind.
                let _ = std::fs::remove_file(&path);
                return Err(io(&path)(e));
            }
            return Ok((path, file, size));
        }
    }
}

/// An exclusive lock on the journal in `dir` (`lock` in it), released when the file is
/// closed, by the process's end too: a second gateway on the same database cannot
/// append to the same segments.
fn lock(dir: &Path) -> Result<File, JournalError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io(&path))?;
    // SAFETY: flock(2) on a descriptor this function owns.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            JournalError::Busy(dir.display().to_string())
        } else {
            io(&path)(e)
        });
    }
    Ok(file)
}

/// The header of a segment: its first sequence number and the hash before it.
fn read_header(file: &File) -> std::io::Result<Option<(i64, [u8; 32])>> {
    let mut h = [0u8; 48];
    match file.read_exact_at(&mut h, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    if &h[..8] != SEGMENT_MAGIC {
        return Ok(None);
    }
    let first = i64::from_le_bytes(h[8..16].try_into().unwrap_or_default());
    let mut prev = [0u8; 32];
    prev.copy_from_slice(&h[16..48]);
    Ok(Some((first, prev)))
}

/// The records of a segment that continue the chain from (`first`, `prev`), and where
/// the next one would go.
fn read_records(file: &File, size: u64, first: i64, prev: [u8; 32]) -> std::io::Result<(Vec<Record>, u64)> {
    let mut out = Vec::new();
    let (mut at, mut seq, mut prev) = (HEADER, first, prev);
    let mut head = [0u8; RECORD_HEADER];
    while at + RECORD_HEADER as u64 <= size {
        file.read_exact_at(&mut head, at)?;
        let magic = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        if magic == 0 && at % BLOCK != 0 {
            // The rest of a block left empty: the next record starts the next block.
            at += BLOCK - at % BLOCK;
            continue;
        }
        if magic != RECORD_MAGIC {
            break;
        }
        let len = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
        let n = i64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if n != seq || len > MAX_ENTRY || at + (RECORD_HEADER + len) as u64 > size {
            break;
        }
        let mut entry = vec![0u8; len];
        file.read_exact_at(&mut entry, at + RECORD_HEADER as u64)?;
        let hash = chain_hash(seq, &prev, &entry);
        if hash[..] != head[16..48] {
            break;
        }
        let Ok(entry) = String::from_utf8(entry) else { break };
        out.push(Record { seq, prev, hash, entry });
        prev = hash;
        seq += 1;
        at += (RECORD_HEADER + len) as u64;
    }
    Ok((out, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::GENESIS;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kk-journal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn entry(i: usize) -> Vec<u8> {
        format!("{{\"v\":1,\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(300 + i % 700)).into_bytes()
    }

    /// A new journal in `d` with `n` events appended one at a time.
    fn with_events(d: &Path, segment_bytes: u64, n: usize) -> Journal {
        let (mut j, replay) = Journal::open(d, segment_bytes, (0, GENESIS)).unwrap();
        assert!(replay.is_empty());
        for i in 0..n {
            j.append(&[&entry(i)]).unwrap();
        }
        j
    }

    #[test]
    fn appended_events_are_read_back_after_a_reopen_and_chain_from_the_index_head() {
        let d = dir("reopen");
        let (mut j, replay) = Journal::open(&d, 64 << 10, (0, GENESIS)).unwrap();
        assert!(replay.is_empty());
        let entries: Vec<Vec<u8>> = (0..300).map(entry).collect();
        let mut all = Vec::new();
        for chunk in entries.chunks(7) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            all.extend(j.append(&refs).unwrap());
        }
        assert_eq!(all.len(), 300);
        assert_eq!(all[0].0, 1);
        assert_eq!(all[0].1, GENESIS);
        assert!(j.files() > 2, "300 events of about 0.7 KB fill several 64 KB segments");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(&j.segments[0].path).unwrap().permissions().mode() & 0o777, 0o600);
        let head = j.head();
        drop(j);
        // Nothing indexed yet: everything comes back, in order, linked.
        let (j2, replay) = Journal::open(&d, 64 << 10, (0, GENESIS)).unwrap();
        assert_eq!(j2.head(), head);
        drop(j2);
        assert_eq!(replay.len(), 300);
        for (r, (seq, prev, hash)) in replay.iter().zip(&all) {
            assert_eq!((r.seq, r.prev, r.hash), (*seq, *prev, *hash));
        }
        assert_eq!(replay[41].entry.as_bytes(), &entries[41][..]);
        // Indexed up to 250: only the rest is replayed.
        let at250 = (all[249].0, all[249].2);
        let (_, replay) = Journal::open(&d, 64 << 10, at250).unwrap();
        assert_eq!(replay.first().map(|r| r.seq), Some(251));
        assert_eq!(replay.len(), 50);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_lone_small_event_never_straddles_two_blocks() {
        let d = dir("blocks");
        let (mut j, _) = Journal::open(&d, 1 << 20, (0, GENESIS)).unwrap();
        let mut ends = Vec::new();
        for i in 0..200 {
            j.append(&[&entry(i)]).unwrap();
            ends.push(j.offset);
        }
        for (i, end) in ends.iter().enumerate() {
            let len = (RECORD_HEADER + entry(i).len()) as u64;
            let start = end - len;
            assert_eq!(start / BLOCK, (end - 1) / BLOCK, "record {i} at {start}..{end} stays in one block");
        }
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_torn_tail_ends_the_journal_at_the_last_whole_event_and_is_written_over() {
        let d = dir("torn");
        let j = with_events(&d, 1 << 20, 10);
        let (path, end) = (j.segments[0].path.clone(), j.offset);
        drop(j);
        // The 10th event's last bytes never reached the disk.
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.write_all_at(&[0u8; 8], end - 8).unwrap();
        let (mut j, replay) = Journal::open(&d, 1 << 20, (0, GENESIS)).unwrap();
        assert_eq!(replay.len(), 9);
        assert_eq!(j.head().0, 9);
        let appended = j.append(&[&entry(99)]).unwrap();
        assert_eq!(appended[0].0, 10, "the next event takes the torn one's place and number");
        drop(j);
        let (_, replay) = Journal::open(&d, 1 << 20, (0, GENESIS)).unwrap();
        assert_eq!(replay.len(), 10);
        assert_eq!(replay[9].entry.as_bytes(), &entry(99)[..]);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn indexed_segments_are_used_again_and_no_file_is_added_in_steady_state() {
        let d = dir("reuse");
        let (mut j, _) = Journal::open(&d, 64 << 10, (0, GENESIS)).unwrap();
        let mut last = 0;
        for round in 0..50 {
            let batch: Vec<Vec<u8>> = (0..20).map(|i| entry(round * 20 + i)).collect();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            last = j.append(&refs).unwrap().last().unwrap().0;
            j.indexed(last);
        }
        assert_eq!(last, 1000);
        assert!(j.files() <= 3, "segments are reused once indexed: {} files", j.files());
        // A reopen after reuse finds the newest events, not an older use's.
        let head = j.head();
        drop(j);
        let (j, replay) = Journal::open(&d, 64 << 10, head).unwrap();
        assert!(replay.is_empty());
        assert_eq!(j.head(), head);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_refused_append_leaves_nothing_a_later_recovery_would_take() {
        let d = dir("refused");
        let mut j = with_events(&d, 64 << 10, 5);
        let head = j.head();
        // A batch whose first event is written into the current segment and whose
        // second needs a new segment that cannot be had: refused.
        let big = vec![b'y'; 60 << 10];
        j.fail_next_segment = true;
        assert!(j.append(&[&entry(5), &big]).is_err());
        assert_eq!(j.head(), head);
        // The next batch, answered, goes on in a new segment.
        let answered = j.append(&[&big]).unwrap();
        assert_eq!(answered[0].0, head.0 + 1);
        drop(j);
        let (j, replay) = Journal::open(&d, 64 << 10, (0, GENESIS)).unwrap();
        assert_eq!(j.head(), (answered[0].0, answered[0].2), "recovered up to the answered event");
        assert_eq!(replay.len(), 6);
        assert_eq!(replay[5].entry.len(), big.len(), "the refused event is not read back in its place");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_journal_is_held_by_one_opener_at_a_time() {
        let d = dir("lock");
        let j = with_events(&d, 1 << 20, 1);
        assert!(matches!(Journal::open(&d, 1 << 20, (0, GENESIS)), Err(JournalError::Busy(_))));
        drop(j);
        let (j, replay) = Journal::open(&d, 1 << 20, (0, GENESIS)).unwrap();
        assert_eq!((replay.len(), j.head().0), (1, 1), "free again once the holder is gone");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_journal_behind_the_index_goes_on_from_the_index_head() {
        let d = dir("behind");
        drop(with_events(&d, 1 << 20, 1));
        let index_head = (500, [7u8; 32]);
        let (mut j, replay) = Journal::open(&d, 1 << 20, index_head).unwrap();
        assert!(replay.is_empty());
        let appended = j.append(&[&entry(2)]).unwrap();
        assert_eq!((appended[0].0, appended[0].1), (501, [7u8; 32]));
        let _ = std::fs::remove_dir_all(d);
    }
}
