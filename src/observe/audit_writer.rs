//! The audit trail's writer: one thread per audit file that owns the file, writes the records
//! requests hand it (all that are waiting, with one `write`), flushes them to the disk when
//! `logging.audit.durability` is `fsync`, rotates the file, and tells each request when its
//! record is written. Requests never do I/O for the trail; they wait (for a bounded time) on
//! their record's [`Ticket`].
//!
//! The writer also knows whether the trail can take records ([`AuditWriter::is_healthy`]): a
//! write that fails, a file that cannot be opened, or a path that no longer names the open file
//! and cannot be opened again (checked before each batch and, when idle, every
//! `IDLE_CHECK`) make it unhealthy until a write or a reopen succeeds. With
//! `logging.audit.on_failure: closed` the proxy refuses mutating calls meanwhile.

use super::rotate::{RotatePolicy, RotatingFile};
use crate::config::model::AuditDurability;
use parking_lot::{Condvar, Mutex};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How often an idle writer checks that its file is still there.
const IDLE_CHECK: Duration = Duration::from_millis(250);
/// Longest a request waits for its record; past it the writer counts as stalled (unhealthy).
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of records waiting for the writer beyond which new records are refused (and counted
/// as failed) rather than held.
const MAX_QUEUED: usize = 16 * 1024 * 1024;

/// What the writer applies to the file, set at commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub rotate: RotatePolicy,
    pub durability: AuditDurability,
}

#[derive(Default)]
struct Queue {
    bytes: Vec<u8>,
    tickets: Vec<Arc<Ack>>,
}

/// The writer of one audit file; see the module documentation.
pub struct AuditWriter {
    path: PathBuf,
    settings: Mutex<Settings>,
    queue: Mutex<Queue>,
    wake: Condvar,
    /// The open file; taken by the writer for each batch, and by the export while it opens
    /// the rotated files (so that no rotation happens in between).
    file: Mutex<Option<RotatingFile>>,
    healthy: AtomicBool,
    retired: AtomicBool,
    running: AtomicBool,
    syncs: AtomicU64,
}

impl AuditWriter {
    /// A writer for `path`: memory only, nothing opened or started.
    pub fn new(path: &Path, settings: Settings) -> Arc<AuditWriter> {
        Arc::new(AuditWriter {
            path: path.to_path_buf(),
            settings: Mutex::new(settings),
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            file: Mutex::new(None),
            healthy: AtomicBool::new(false),
            retired: AtomicBool::new(false),
            running: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the last write (or check of the file) succeeded and no request gave up waiting
    /// since.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// How many times the writer flushed the file to the disk.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    pub(super) fn set_settings(&self, settings: Settings) {
        *self.settings.lock() = settings;
    }

    fn set_healthy(&self, ok: bool) {
        if self.healthy.swap(ok, Ordering::AcqRel) != ok {
            crate::metrics::audit_writable(ok);
            if ok {
                log::info!("audit trail {}: writable again", self.path.display());
            } else {
                log::error!(
                    "audit trail {}: records cannot be written",
                    self.path.display()
                );
            }
        }
    }

    /// Opens the file and starts the writer thread (once). A file that cannot be opened leaves
    /// the writer unhealthy; it tries again while idle.
    pub(super) fn start(self: &Arc<Self>) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let ok = self.check_file();
        self.healthy.store(ok, Ordering::Release);
        crate::metrics::audit_writable(ok);
        if !ok {
            log::error!(
                "audit trail {}: cannot open the file; records cannot be written",
                self.path.display()
            );
        }
        let writer = self.clone();
        let spawned = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            self.running.store(false, Ordering::Release);
            self.set_healthy(false);
            log::error!(
                "audit trail {}: cannot start the writer: {e}",
                self.path.display()
            );
        }
    }

    /// The config in force no longer names this file: the writer ends once the requests of the
    /// old config are done with it.
    pub(super) fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        let _guard = self.queue.lock();
        self.wake.notify_one();
    }

    /// Hands one record (without its newline) to the writer.
    pub fn submit(&self, mut line: Vec<u8>) -> Ticket {
        line.push(b'\n');
        let ack = Arc::new(Ack::default());
        {
            let mut q = self.queue.lock();
            if !self.is_running() || q.bytes.len() + line.len() > MAX_QUEUED {
                drop(q);
                crate::metrics::audit_written(false);
                self.set_healthy(false);
                return Ticket {
                    ack: None,
                    wait: false,
                };
            }
            q.bytes.extend_from_slice(&line);
            q.tickets.push(ack.clone());
        }
        self.wake.notify_one();
        Ticket {
            ack: Some(ack),
            // A writer known to be failing or stalled is not waited for.
            wait: self.is_healthy(),
        }
    }

    /// A request gave up waiting: the writer is stalled until it completes a batch.
    pub fn note_timeout(&self) {
        self.set_healthy(false);
    }

    /// Opens every file of the trail, oldest first, while the writer cannot rotate; the open
    /// handles then stay valid across later rotations.
    pub fn open_all(&self) -> std::io::Result<Vec<File>> {
        let max_files = self.settings.lock().rotate.max_files;
        let _no_rotation = self.file.lock();
        super::rotate::files_oldest_first(&self.path, max_files)
            .iter()
            .map(File::open)
            .collect()
    }

    /// Closes the file: the next batch (or the idle check) opens the path again (`SIGUSR1`).
    pub fn reopen(&self) {
        *self.file.lock() = None;
        self.wake.notify_one();
    }

    fn run(self: Arc<Self>) {
        loop {
            let (batch, tickets) = {
                let mut q = self.queue.lock();
                if q.bytes.is_empty() {
                    // Only this thread holds the writer: no request can add a record any more.
                    if self.retired.load(Ordering::Acquire) && Arc::strong_count(&self) == 1 {
                        break;
                    }
                    self.wake.wait_for(&mut q, IDLE_CHECK);
                }
                (std::mem::take(&mut q.bytes), std::mem::take(&mut q.tickets))
            };
            if batch.is_empty() {
                let ok = self.check_file();
                self.set_healthy(ok);
                continue;
            }
            let result = self.write_batch(&batch);
            if let Err(e) = &result {
                log::error!(
                    "audit trail {}: cannot write {} records: {e}",
                    self.path.display(),
                    tickets.len()
                );
            }
            let ok = result.is_ok();
            self.set_healthy(ok);
            for t in &tickets {
                crate::metrics::audit_written(ok);
                t.done(ok);
            }
        }
        *self.file.lock() = None;
        self.running.store(false, Ordering::Release);
    }

    /// Makes sure the path names the open file, reopening it if it was removed or renamed away
    /// (external rotation). Says whether the trail is writable.
    fn check_file(&self) -> bool {
        let rotate = self.settings.lock().rotate;
        let mut file = self.file.lock();
        self.current_file(&mut file, rotate).is_ok()
    }

    fn current_file<'a>(
        &self,
        slot: &'a mut Option<RotatingFile>,
        rotate: RotatePolicy,
    ) -> std::io::Result<&'a mut RotatingFile> {
        if slot.as_ref().is_some_and(|f| !f.is_current()) {
            *slot = None;
        }
        let f = match slot {
            Some(f) => f,
            None => slot.insert(RotatingFile::open(&self.path, rotate)?),
        };
        f.policy = rotate;
        Ok(f)
    }

    fn write_batch(&self, batch: &[u8]) -> std::io::Result<()> {
        let settings = *self.settings.lock();
        let mut slot = self.file.lock();
        let written = self.current_file(&mut slot, settings.rotate).and_then(|f| {
            f.write_lines(batch)?;
            if settings.durability == AuditDurability::Fsync {
                f.sync()?;
                self.syncs.fetch_add(1, Ordering::Relaxed);
                crate::metrics::audit_synced();
            }
            Ok(())
        });
        if written.is_err() {
            // Opened again (or found missing) at the next batch.
            *slot = None;
        }
        written
    }
}

/// The writer's answer for one record.
#[derive(Default)]
struct Ack {
    /// `Some(written)` once the writer is done with the record.
    done: std::sync::Mutex<Option<bool>>,
    cv: std::sync::Condvar,
    notify: tokio::sync::Notify,
}

impl Ack {
    fn done(&self, ok: bool) {
        if let Ok(mut d) = self.done.lock() {
            *d = Some(ok);
        }
        self.cv.notify_all();
        self.notify.notify_waiters();
    }

    fn result(&self) -> Option<bool> {
        self.done.lock().ok().and_then(|d| *d)
    }

    fn wait_blocking(&self, timeout: Duration) -> Option<bool> {
        let deadline = Instant::now() + timeout;
        let mut done = self.done.lock().ok()?;
        loop {
            if let Some(ok) = *done {
                return Some(ok);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            done = self.cv.wait_timeout(done, left).ok()?.0;
        }
    }

    async fn wait_async(&self) -> Option<bool> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(ok) = self.result() {
                return Some(ok);
            }
            notified.await;
        }
    }
}

/// What became of a record that a request waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Written (and flushed to the disk with `durability: fsync`).
    Yes,
    /// The writer could not write it (or refused it).
    Failed,
    /// Not known: the writer did not answer within [`ACK_TIMEOUT`], or was known to be failing
    /// so the request did not wait.
    Unknown,
}

/// A request's claim on its record's write.
pub struct Ticket {
    ack: Option<Arc<Ack>>,
    wait: bool,
}

impl Ticket {
    /// Waits until the writer is done with the record, blocking this thread: on a
    /// multi-threaded Tokio runtime the worker first hands its other tasks to another thread
    /// (`block_in_place`), so that they are not held up.
    pub fn wait(self) -> Written {
        let Some(ack) = self.ack else {
            return Written::Failed;
        };
        if !self.wait {
            return Written::Unknown;
        }
        if let Some(ok) = ack.result() {
            return written(Some(ok));
        }
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        let result = if multi_thread {
            tokio::task::block_in_place(|| ack.wait_blocking(ACK_TIMEOUT))
        } else {
            ack.wait_blocking(ACK_TIMEOUT)
        };
        written(result)
    }

    /// Waits until the writer is done with the record, without blocking the thread.
    pub async fn wait_async(self) -> Written {
        let Some(ack) = self.ack else {
            return Written::Failed;
        };
        if !self.wait {
            return Written::Unknown;
        }
        written(
            tokio::time::timeout(ACK_TIMEOUT, ack.wait_async())
                .await
                .ok()
                .flatten(),
        )
    }
}

fn written(r: Option<bool>) -> Written {
    match r {
        Some(true) => Written::Yes,
        Some(false) => Written::Failed,
        None => Written::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(durability: AuditDurability) -> Settings {
        Settings {
            rotate: RotatePolicy {
                max_bytes: 1 << 20,
                max_files: 3,
            },
            durability,
        }
    }

    fn wait_until(what: &str, f: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn new_has_no_side_effect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = AuditWriter::new(&path, settings(AuditDurability::Buffered));
        assert!(!path.exists());
        assert!(!w.is_running());
        assert!(!w.is_healthy());
        // Not started: a record is refused, not held.
        assert_eq!(w.submit(b"{}".to_vec()).wait(), Written::Failed);
        assert!(!path.exists());
    }

    #[test]
    fn records_are_written_before_the_ticket_says_so() {
        for durability in [AuditDurability::Buffered, AuditDurability::Fsync] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.log");
            let w = AuditWriter::new(&path, settings(durability));
            w.start();
            assert!(w.is_healthy());
            let tickets: Vec<Ticket> = (0..50)
                .map(|i| w.submit(format!("{{\"n\":{i}}}").into_bytes()))
                .collect();
            for t in tickets {
                assert_eq!(t.wait(), Written::Yes);
            }
            let text = std::fs::read_to_string(&path).unwrap();
            assert_eq!(text.lines().count(), 50, "{durability:?}");
            assert!(
                text.lines()
                    .enumerate()
                    .all(|(i, l)| l == format!("{{\"n\":{i}}}"))
            );
            if durability == AuditDurability::Fsync {
                // Batched: at most one flush per record, at least one.
                assert!((1..=50).contains(&w.syncs()), "{}", w.syncs());
            } else {
                assert_eq!(w.syncs(), 0);
            }
            w.retire();
            drop(w);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_wait_without_doing_io() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = AuditWriter::new(&path, settings(AuditDurability::Fsync));
        w.start();
        // From async code, and from a worker thread of a multi-threaded runtime (as Pingora's
        // body filter does), without stalling the runtime.
        assert_eq!(
            w.submit(b"{\"a\":1}".to_vec()).wait_async().await,
            Written::Yes
        );
        let w2 = w.clone();
        let blocking = tokio::spawn(async move { w2.submit(b"{\"a\":2}".to_vec()).wait() });
        assert_eq!(blocking.await.unwrap(), Written::Yes);
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        w.retire();
    }

    #[test]
    fn a_trail_that_cannot_be_written_is_unhealthy_until_it_can() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("audit");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("audit.log");
        let w = AuditWriter::new(&path, settings(AuditDurability::Buffered));
        w.start();
        assert_eq!(w.submit(b"{\"n\":1}".to_vec()).wait(), Written::Yes);
        // The directory is replaced by a file: the path names nothing the writer can open.
        std::fs::remove_dir_all(&sub).unwrap();
        std::fs::write(&sub, "not a directory").unwrap();
        wait_until("the writer notices while idle", || !w.is_healthy());
        assert_eq!(w.submit(b"{\"n\":2}".to_vec()).wait(), Written::Unknown);
        // Back: the writer opens a new file and is healthy again.
        std::fs::remove_file(&sub).unwrap();
        std::fs::create_dir(&sub).unwrap();
        wait_until("the writer recovers", || w.is_healthy());
        assert_eq!(w.submit(b"{\"n\":3}".to_vec()).wait(), Written::Yes);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"n\":3"), "{text}");
        assert!(
            !text.contains("\"n\":1"),
            "the old file went with its directory"
        );
        w.retire();
    }

    #[test]
    fn a_file_rotated_away_is_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = AuditWriter::new(&path, settings(AuditDurability::Buffered));
        w.start();
        assert_eq!(w.submit(b"{\"n\":1}".to_vec()).wait(), Written::Yes);
        std::fs::rename(&path, dir.path().join("audit.log.old")).unwrap();
        assert_eq!(w.submit(b"{\"n\":2}".to_vec()).wait(), Written::Yes);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
        w.retire();
    }

    #[test]
    fn a_retired_writer_ends_once_nobody_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let w = AuditWriter::new(&path, settings(AuditDurability::Buffered));
        w.start();
        let held = w.clone();
        w.retire();
        drop(w);
        // A request of the old config still holds it: still written.
        std::thread::sleep(IDLE_CHECK * 2);
        assert!(held.is_running());
        assert_eq!(
            held.submit(b"{\"late\":true}".to_vec()).wait(),
            Written::Yes
        );
        let watch = Arc::downgrade(&held);
        drop(held);
        wait_until("the writer ends and frees the writer", || {
            watch.upgrade().is_none()
        });
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"late\":true}\n");
    }
}
