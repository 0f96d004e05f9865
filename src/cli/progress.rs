//! The CLI's side of the library's progress reports: what the Hub downloads,
//! said on stderr, with an indicatif bar when stderr is a terminal.

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};

use indicatif::{HumanBytes, ProgressBar, ProgressStyle};

use crate::hub::{Hub, HubRepo, Progress};

/// The Hub as the environment sets it up; unless `quiet`, each download is
/// announced on stderr, with a bar on a terminal.
pub(super) fn hub(quiet: bool) -> Hub {
    let hub = Hub::from_env();
    if quiet { hub } else { hub.progress(Arc::new(DownloadBar::default())) }
}

/// One line per download, then a bar while it runs (terminals only).
#[derive(Default)]
struct DownloadBar(Mutex<Option<ProgressBar>>);

impl DownloadBar {
    fn bar(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        // A bar is only drawn: one left by a panicking thread is still fine to use.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Progress for DownloadBar {
    fn start(&self, repo: &HubRepo, file: &str, size: u64) {
        eprintln!("downloading {}/{file} ({})", repo.id, HumanBytes(size));
        if std::io::stderr().is_terminal() {
            let style =
                ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes}, {bytes_per_sec} (eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar());
            *self.bar() = Some(ProgressBar::new(size).with_style(style).with_message(file.to_owned()));
        }
    }

    fn advance(&self, bytes: u64) {
        if let Some(bar) = &*self.bar() {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar().take() {
            bar.finish_and_clear();
        }
    }
}
