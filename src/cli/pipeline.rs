//! Many inputs through one model: each input read, computed and written,
//! with reads and writes overlapped with compute, a failure reported for its
//! input alone, a progress bar and a summary.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::session::Session;
use crate::Vae;
use crate::output::json_line;

/// Runs `job` on each (input, output) pair: a failure is reported on one line
/// and the rest go on; a summary follows when there were several.
pub(super) fn for_each<P>(
    ctx: &mut Session,
    verb: &str,
    plan: &[P],
    mut job: impl FnMut(&mut Session, &P) -> Result<()>,
) -> ExitCode {
    let mut batch = Batch::start(ctx, plan.len());
    for item in plan {
        let result = job(ctx, item);
        batch.done(ctx, result.map(|()| None));
    }
    batch.finish(ctx, verb)
}

/// What a file reports once its output is written: a line for stderr and,
/// with --json, an object for stdout.
pub(super) struct Written {
    pub(super) message: String,
    pub(super) json: Option<serde_json::Value>,
}

/// [`for_each`] over `chunk` inputs at a time, with the file I/O
/// overlapped with compute: while `compute` runs on this thread (with every
/// core rayon gives it) on the inputs of one chunk that could be read, the
/// next chunk is read on one thread and the previous one's outputs written
/// on another. `compute` returns a result per input it is given; reports
/// stay in input order.
pub(super) fn pipeline<P: Sync, I: Send, O: Send>(
    ctx: &mut Session,
    verb: &str,
    plan: &[P],
    chunk: usize,
    read: impl Fn(&P) -> Result<I> + Sync,
    mut compute: impl FnMut(&mut Session, &[&P], Vec<I>) -> Vec<Result<O>>,
    write: impl Fn(&P, O) -> Result<Written> + Sync,
) -> ExitCode {
    let mut batch = Batch::start(ctx, plan.len());
    let chunks: Vec<&[P]> = plan.chunks(chunk.max(1)).collect();
    std::thread::scope(|s| {
        let (read, write) = (&read, &write);
        let read_all = move |items: &[P]| items.iter().map(|item| timed(|| read(item))).collect::<Vec<_>>();
        let mut next = chunks.first().map(|&items| s.spawn(move || read_all(items)));
        let mut writing = None;
        for (i, &items) in chunks.iter().enumerate() {
            let reading = next.take();
            next = chunks.get(i + 1).map(|&items| s.spawn(move || read_all(items)));
            let inputs = joined(ctx, "read", reading, items.len());
            let outputs = computed(ctx, items, inputs, &mut compute);
            if let Some((previous, n)) = writing.take() {
                for written in joined(ctx, "write", Some(previous), n) {
                    batch.done(ctx, written.map(Some));
                }
            }
            let write_all = move || {
                let each = items.iter().zip(outputs);
                each.map(|(item, output)| timed(|| output.and_then(|output| write(item, output)))).collect::<Vec<_>>()
            };
            writing = Some((s.spawn(write_all), items.len()));
        }
        if let Some((last, n)) = writing {
            for written in joined(ctx, "write", Some(last), n) {
                batch.done(ctx, written.map(Some));
            }
        }
    });
    batch.finish(ctx, verb)
}

/// `compute` run on the inputs of `items` that were read; a result for
/// each of `items`, a read error where it failed.
pub(super) fn computed<P, I, O>(
    ctx: &mut Session,
    items: &[P],
    inputs: Vec<Result<I>>,
    compute: &mut impl FnMut(&mut Session, &[&P], Vec<I>) -> Vec<Result<O>>,
) -> Vec<Result<O>> {
    let mut results: Vec<Option<Result<O>>> = Vec::with_capacity(items.len());
    let (mut read_items, mut read_inputs) = (Vec::new(), Vec::new());
    for (item, input) in items.iter().zip(inputs) {
        match input {
            Ok(input) => {
                read_items.push(item);
                read_inputs.push(input);
                results.push(None);
            }
            Err(err) => results.push(Some(Err(err))),
        }
    }
    let mut outputs = compute(ctx, &read_items, read_inputs).into_iter();
    let mut next =
        || outputs.next().unwrap_or_else(|| Err(anyhow::anyhow!("internal error: an input was not computed")));
    results.into_iter().map(|result| result.unwrap_or_else(&mut next)).collect()
}

/// Runs each pass (indices into `paths`) with `run`, its time recorded as
/// `op`, saying when it was redone in f32, and with --repeat printing its
/// `bench:` line with the times of `again`. A result for each input of a
/// pass (an input in no pass gets an error): a pass that fails, fails each.
pub(super) fn in_passes<O, E: std::fmt::Display>(
    ctx: &mut Session,
    op: &str,
    vae: &mut Vae,
    paths: &[&Path],
    passes: Vec<Vec<usize>>,
    mut run: impl FnMut(&mut Vae, &[usize]) -> Result<Vec<O>, E>,
    mut again: impl FnMut(&mut Vae, &[usize]) -> Vec<Duration>,
) -> Vec<Result<O>> {
    let mut results: Vec<Result<O>> =
        paths.iter().map(|_| Err(anyhow::anyhow!("internal error: not computed"))).collect();
    for pass in passes {
        let pass_paths: Vec<&Path> = pass.iter().map(|&i| paths[i]).collect();
        let before = vae.retried_from();
        let (outputs, first) = timed(|| run(vae, &pass));
        ctx.record(op, first);
        match outputs {
            Ok(outputs) => {
                ctx.retried(&pass_paths, before, vae);
                let runs = again(vae, &pass);
                ctx.bench(op, &pass_paths, vae, first, &runs);
                for (&i, output) in pass.iter().zip(outputs) {
                    results[i] = Ok(output);
                }
            }
            Err(err) => {
                for &i in &pass {
                    results[i] = Err(anyhow::anyhow!("{}: {err}", paths[i].display()));
                }
            }
        }
    }
    results
}

/// The times of `n` more runs of `f`.
pub(super) fn repeated<T>(n: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    (0..n).map(|_| timed(&mut f).1).collect()
}

/// `f`'s result and how long it took.
pub(super) fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    (f(), start.elapsed())
}

/// A stage's result for one input, and how long it took.
pub(super) type Timed<T> = (Result<T>, Duration);

/// The results of a stage run on another thread for `n` inputs, their
/// times recorded as `name`.
pub(super) fn joined<T>(
    ctx: &mut Session,
    name: &str,
    handle: Option<std::thread::ScopedJoinHandle<Vec<Timed<T>>>>,
    n: usize,
) -> Vec<Result<T>> {
    let Some(Ok(results)) = handle.map(|h| h.join()) else {
        return (0..n).map(|_| Err(anyhow::anyhow!("internal error: the {name} thread stopped"))).collect();
    };
    results
        .into_iter()
        .map(|(result, elapsed)| {
            ctx.record(name, elapsed);
            result
        })
        .collect()
}

/// A batch's progress bar (for more than one file), failures and summary.
pub(super) struct Batch {
    total: usize,
    failed: usize,
}

impl Batch {
    fn start(ctx: &mut Session, total: usize) -> Self {
        if total > 1 && !ctx.quiet {
            let style = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} files, {elapsed} (eta {eta})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            ctx.progress = Some(indicatif::ProgressBar::new(total as u64).with_style(style));
        }
        Self { total, failed: 0 }
    }

    /// One file finished: its report, or its error.
    fn done(&mut self, ctx: &Session, result: Result<Option<Written>>) {
        match result {
            Ok(Some(Written { message, json })) => {
                if let Some(json) = json
                    && let Err(err) = json_line(&json)
                {
                    ctx.eprint(format_args!("vae: error: {err:#}"));
                    self.failed += 1;
                }
                ctx.info(message);
            }
            Ok(None) => {}
            Err(err) => {
                ctx.eprint(format_args!("vae: error: {err:#}"));
                self.failed += 1;
            }
        }
        if let Some(bar) = &ctx.progress {
            bar.inc(1);
        }
    }

    fn finish(self, ctx: &mut Session, verb: &str) -> ExitCode {
        if let Some(bar) = ctx.progress.take() {
            bar.finish_and_clear();
        }
        if self.total > 1 {
            ctx.info(format_args!(
                "{verb} {} of {} files{}",
                self.total - self.failed,
                self.total,
                if self.failed > 0 { format!("; {} failed", self.failed) } else { String::new() }
            ));
        }
        if self.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
    }
}
