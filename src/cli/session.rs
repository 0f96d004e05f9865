//! What every command shares: verbosity, the stage clock, the progress bar,
//! and loading the model as the model flags ask.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use burn::tensor::FloatDType;

use super::pipeline::timed;
use super::{DeviceArg, ModelArgs};
use crate::latent_space::LatentSpaceRequest;
use crate::model::Model;
use crate::tiling::{Plan, Tile, gib};
use crate::weights::Parts;
use crate::{Vae, VaeOptions};

/// What every command shares: verbosity and the stage clock.
pub(super) struct Session {
    pub(super) quiet: bool,
    pub(super) timings: Option<Vec<(String, Duration)>>,
    /// The bar of a batch; drawn only when stderr is a terminal.
    pub(super) progress: Option<indicatif::ProgressBar>,
    /// The device the model was loaded on, as `--device` resolved it.
    pub(super) device: Option<String>,
}

impl Session {
    pub(super) fn info(&self, message: impl std::fmt::Display) {
        if !self.quiet {
            self.eprint(message);
        }
    }

    /// A line on stderr, above the progress bar when there is one.
    pub(super) fn eprint(&self, message: impl std::fmt::Display) {
        match &self.progress {
            Some(bar) => bar.suspend(|| eprintln!("{message}")),
            None => eprintln!("{message}"),
        }
    }

    /// Runs `f` as the stage `name`, timing it when --timings is on.
    pub(super) fn stage<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let (out, elapsed) = timed(f);
        self.record(name, elapsed);
        out
    }

    /// Records a stage's time (when --timings is on).
    pub(super) fn record(&mut self, name: &str, elapsed: Duration) {
        if let Some(t) = &mut self.timings {
            t.push((name.to_owned(), elapsed));
        }
    }

    /// Says when `path` runs in bands, and how (with --timings, always),
    /// and warns when even bands are expected to exceed --max-memory.
    pub(super) fn plan(&self, path: &Path, plan: Plan, max_memory: u64) {
        if matches!(plan, Plan::Banded { .. }) || self.timings.is_some() {
            self.info(format_args!("{}: {plan}", path.display()));
        }
        let estimate = match plan {
            Plan::Banded { estimate, .. } => estimate,
            Plan::Whole { .. } => 0,
        };
        if estimate > max_memory {
            self.info(format_args!(
                "{}: warning: needs about {:.2} GiB even in bands, over --max-memory {:.2} GiB",
                path.display(),
                gib(estimate),
                gib(max_memory)
            ));
        }
    }

    pub(super) fn print_timings(&self) {
        if let Some(t) = &self.timings {
            let total: Duration = t.iter().map(|(_, d)| *d).sum();
            let stages: Vec<String> = t.iter().map(|(n, d)| format!("{n} {:.3}s", d.as_secs_f64())).collect();
            eprintln!("timings: {} (total {:.3}s)", stages.join(", "), total.as_secs_f64());
        }
    }

    /// Opens the VAE the model flags ask for ([`Vae::open`]), saying which
    /// device and weights it took. `max_pixels`: the largest image a latent
    /// may decode to.
    pub(super) fn load(&mut self, args: &ModelArgs, parts: Parts, max_pixels: u64) -> Result<Vae> {
        let options = VaeOptions {
            weights: args.weights.clone(),
            revision: args.revision.clone(),
            device: args.device.into(),
            precision: args.precision.into(),
            latent_space: LatentSpaceRequest {
                family: args.family,
                scaling_factor: args.scaling_factor,
                form: args.latent_form,
            },
            tile: args.tile,
            max_memory: args.max_memory,
            tmp_dir: args.tmp_dir.clone(),
            batch: args.batch_size,
            parts,
            max_pixels,
            hub: Some(super::progress::hub(self.quiet)),
        };
        let vae = self.stage("load", || Vae::open(&options))?;
        let chosen = vae.device();
        self.device = Some(chosen.description.clone());
        let auto = if matches!(args.device, DeviceArg::Auto) { " (--device auto)" } else { "" };
        self.info(format_args!("device: {chosen}{auto}"));
        let info = vae.info();
        self.info(format_args!(
            "weights: {} ({}, {} layout, {}, {} latent channels, {})",
            info.path.display(),
            vae.model().class_name(),
            info.layout,
            info.dtype,
            vae.model().latent_channels(),
            vae.latent_space()
        ));
        for note in vae.notes() {
            self.info(format_args!("weights: {note}"));
        }
        if matches!(vae.model(), Model::Tiny(_)) && args.tile != Tile::Auto {
            self.info("weights: TAESD runs untiled; --tile applies to AutoencoderKL");
        }
        Ok(vae)
    }

    /// With --repeat: one `bench: {JSON}` line on stderr (even with --quiet:
    /// it was asked for) with the warm-up time and each repetition's.
    /// A pass of several inputs (`--batch-size`) gives one line, its times
    /// those of the whole pass.
    pub(super) fn bench(&self, op: &str, paths: &[&Path], vae: &Vae, first: Duration, runs: &[Duration]) {
        if runs.is_empty() {
            return;
        }
        let line = serde_json::json!({
            "op": op,
            "input": paths.first().map(|p| p.display().to_string()),
            "inputs": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "batch": paths.len(),
            "device": self.device.as_deref().unwrap_or("cpu"),
            "dtype": format!("{:?}", vae.dtype()),
            "warmup_s": first.as_secs_f64(),
            "runs_s": runs.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        });
        self.eprint(format_args!("bench: {line}"));
    }

    /// Says, for each input of a pass, when a reduced-precision result held
    /// NaN or Inf and was redone in f32 (`before`: what
    /// [`Vae::retried_from`] said before the pass).
    pub(super) fn retried(&self, paths: &[&Path], before: Option<FloatDType>, vae: &Vae) {
        if let (None, Some(from)) = (before, vae.retried_from()) {
            for path in paths {
                self.eprint(format_args!(
                    "{}: warning: the {from:?} result held NaN or Inf; computed again in f32 (and in f32 from here on)",
                    path.display()
                ));
            }
        }
    }
}
