//! The node's long tasks (resync at start, persisting memory at shutdown) as progress bars,
//! drawn on stderr when it is a terminal (a node run by hand; a service's log stays clean).

use indicatif::{ProgressBar, ProgressStyle};
use kvtier_blockmgr::progress::{Progress, ProgressTask};

/// Progress bars on stderr.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bars;

impl Progress for Bars {
    fn start(&self, what: &'static str, total: u64) -> Box<dyn ProgressTask> {
        let template = match what {
            "persisting" => "persisting {bar:40} {pos}/{len} blocks ({per_sec}, eta {eta})",
            _ => "{prefix} {bar:30} {pos}/{len} blocks {msg}",
        };
        let bar = ProgressBar::new(total)
            .with_style(ProgressStyle::with_template(template).expect("a valid template"))
            .with_prefix(what);
        Box::new(Bar(bar))
    }
}

struct Bar(ProgressBar);

impl ProgressTask for Bar {
    fn grow(&self, n: u64) {
        self.0.inc_length(n);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn note(&self, message: String) {
        self.0.set_message(message);
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
