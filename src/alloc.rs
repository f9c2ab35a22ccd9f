//! Giving freed memory back to the system: glibc's malloc keeps it in its
//! arenas unless asked.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Freed bytes after which chatd asks the allocator to give free memory
/// back to the system.
pub(crate) const TRIM_AFTER_BYTES: usize = 8 * 1024 * 1024;
/// Bytes freed (by count of charges and streams) since the last trim.
static FREED: AtomicUsize = AtomicUsize::new(0);
/// Whether a trim is running.
static TRIMMING: AtomicBool = AtomicBool::new(false);

/// Notes that about `bytes` were freed. glibc's malloc keeps freed memory
/// in its arenas (10,000 closed streams left their ~35 MB resident), so
/// after every [`TRIM_AFTER_BYTES`] freed, one `malloc_trim` runs on the
/// blocking pool (never two at once) and returns the free pages. Closed
/// connections count here too (`net/`).
pub(crate) fn note_freed(bytes: usize) {
    let total = FREED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if total < TRIM_AFTER_BYTES || TRIMMING.swap(true, Ordering::AcqRel) {
        return;
    }
    FREED.store(0, Ordering::Relaxed);
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            // Ends by itself within milliseconds; the runtime waits for it.
            drop(runtime.spawn_blocking(|| {
                trim_allocator();
                TRIMMING.store(false, Ordering::Release);
            }));
        }
        Err(_) => TRIMMING.store(false, Ordering::Release),
    }
}

/// Returns the allocator's free memory to the system.
fn trim_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it has no
    // preconditions and may be called from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
