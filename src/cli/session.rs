//! What every command shares: verbosity, the stage clock, the progress bar,
//! and loading the model as the model flags ask.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};

use super::pipeline::timed;
use super::{DeviceArg, ModelArgs};
use crate::Vae;
use crate::device::{self, Precision};
use crate::model::{Family, Model};
use crate::tiling::{Plan, Tile, TileOptions, default_max_memory, gib};
use crate::vae::Retried;
use crate::weights::Parts;

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

    pub(super) fn load(&mut self, args: &ModelArgs, parts: Parts) -> Result<Vae> {
        let chosen = self.stage("device", || device::choose(args.device.into()))?;
        let precision = Precision::from(args.precision);
        device::check_precision(&chosen, precision)?;
        self.device = Some(chosen.description.clone());
        if matches!(args.device, DeviceArg::Auto) {
            self.info(format_args!("device: {chosen} (--device auto)"));
        } else {
            self.info(format_args!("device: {chosen}"));
        }
        if let (Tile::Rows(rows), false) = (args.tile, precision == Precision::F32) {
            bail!("--tile {rows}: bands run in f32 only; drop --tile or use --precision f32");
        }
        let hub = super::progress::hub(self.quiet);
        let source = crate::weights::resolve(args.weights.as_deref(), args.revision.as_deref(), &hub)?;
        let dtype = precision.dtype();
        let mut vae =
            self.stage("load", || Vae::load_in(&source, &chosen.device, dtype, args.scaling_factor, parts))?;
        // Bands bound the host's memory (--max-memory), and move every band
        // through it: on a GPU the default is the plain pass.
        let tile = if chosen.gpu && args.tile == Tile::Auto { Tile::Off } else { args.tile };
        vae.tiling = TileOptions { tile, max_memory: args.max_memory.unwrap_or_else(default_max_memory) };
        (vae.batch, vae.gpu) = (args.batch_size, chosen.gpu);
        // Only an AutoencoderKL's config.json says how its latents are scaled.
        let scaling_in_config = source.config_json.is_some() && matches!(vae.model, Model::Kl(_));
        if let Some(family) = args.family {
            self.apply_family(&mut vae, family, scaling_in_config, args.scaling_factor.is_some())?;
        }
        let (scaling, _) = vae.model.latent_scaling();
        self.info(format_args!(
            "weights: {} ({}, {} layout, {}, {} latent channels, scaling {})",
            vae.info.path.display(),
            vae.model.class_name(),
            vae.info.layout,
            vae.info.dtype,
            vae.model.latent_channels(),
            scaling
        ));
        if args.family.is_none() {
            for note in &vae.info.notes {
                self.info(format_args!("weights: {note}"));
            }
        }
        if matches!(vae.model, Model::Tiny(_)) && args.tile != Tile::Auto {
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

    /// Says when a reduced-precision result held NaN or Inf and was redone
    /// in f32 (for each input of the pass).
    pub(super) fn retried(&self, paths: &[&Path], retried: Retried) {
        if let Retried::InF32 { from } = retried {
            for path in paths {
                self.eprint(format_args!(
                    "{}: warning: the {from:?} result held NaN or Inf; computed again in f32 (and in f32 from here on)",
                    path.display()
                ));
            }
        }
    }

    /// `--family`: its scaling unless config.json or --scaling-factor says
    /// otherwise (config.json wins, with a warning when they disagree).
    fn apply_family(&self, vae: &mut Vae, family: Family, has_config: bool, explicit_scaling: bool) -> Result<()> {
        let channels = vae.model.latent_channels();
        if channels != family.latent_channels() {
            bail!(
                "{}: the weights have {} latent channels; --family {} has {}",
                vae.info.path.display(),
                channels,
                family.name(),
                family.latent_channels()
            );
        }
        let (scaling, shift) = family.scaling();
        let (current, current_shift) = vae.model.latent_scaling();
        if has_config {
            if (current, current_shift) != (scaling, shift) {
                self.info(format_args!(
                    "warning: config.json's scaling {current} (shift {current_shift}) differs from --family {}'s {scaling} (shift {shift}); using config.json's",
                    family.name()
                ));
            }
        } else {
            vae.model.set_latent_scaling(if explicit_scaling { current } else { scaling }, shift);
        }
        vae.family = Some(family);
        Ok(())
    }
}
