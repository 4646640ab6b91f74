//! Where log lines go: stdout, through one shared buffer that a background thread writes out
//! every 100 ms (sooner when 64 KiB wait, and at exit). A busy gateway writes one log line per
//! request; writing each with its own locked `write` made the worker threads queue on stdout and
//! wake each other. Here a line costs a short, uncontended copy.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Written out at once when this much waits.
const FLUSH_AT: usize = 64 * 1024;

/// The buffered stdout, shared by every thread that logs.
#[derive(Clone)]
pub struct BufferedStdout {
    shared: Arc<Shared>,
}

struct Shared {
    buffer: Mutex<Vec<u8>>,
    /// Wakes the writer thread early when the buffer is full.
    full: Condvar,
}

static INSTANCE: OnceLock<BufferedStdout> = OnceLock::new();

impl BufferedStdout {
    /// The process's buffered stdout; starts its writer thread on first use.
    pub fn get() -> Self {
        INSTANCE
            .get_or_init(|| {
                let shared = Arc::new(Shared {
                    buffer: Mutex::new(Vec::with_capacity(FLUSH_AT)),
                    full: Condvar::new(),
                });
                let background = Arc::clone(&shared);
                let _ = std::thread::Builder::new()
                    .name("log-writer".into())
                    .spawn(move || loop {
                        let batch = {
                            let buffer = lock(&background.buffer);
                            let (mut buffer, _) = background
                                .full
                                .wait_timeout(buffer, FLUSH_EVERY)
                                .unwrap_or_else(|p| p.into_inner());
                            std::mem::take(&mut *buffer)
                        };
                        write_out(&batch);
                    });
                Self { shared }
            })
            .clone()
    }

    /// Writes out whatever waits (at exit, and before a process ends with an error).
    pub fn flush() {
        if let Some(instance) = INSTANCE.get() {
            let batch = std::mem::take(&mut *lock(&instance.shared.buffer));
            write_out(&batch);
        }
    }
}

fn write_out(batch: &[u8]) {
    if !batch.is_empty() {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(batch);
        let _ = stdout.flush();
    }
}

/// A log line's writer: appends to the shared buffer.
pub struct LineWriter<'a> {
    shared: &'a Shared,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let mut buffer = lock(&self.shared.buffer);
        buffer.extend_from_slice(bytes);
        if buffer.len() >= FLUSH_AT {
            self.shared.full.notify_one();
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BufferedStdout {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            shared: &self.shared,
        }
    }
}

/// A log buffer stays usable even if a thread panicked while appending to it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
