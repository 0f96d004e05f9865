//! The command line. clap's derive structs are the help text; each command
//! turns them into calls on the library, and errors are returned to `main`,
//! which prints them on one line and exits non-zero. What the commands share
//! lives beside them: `session` (verbosity, timings, loading the model),
//! `files` (which inputs, which outputs) and `pipeline` (many inputs
//! through one model, I/O overlapped with compute).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::Vae;
use crate::batch::BatchSize;
use crate::dataset::{self, Workers};
use crate::device::{self, DeviceRequest, Precision};
use crate::hub::HubRepo;
use crate::imageio::{self, DEFAULT_MAX_PIXELS};
use crate::latent::{Latent, LatentFormat, Posterior};
use crate::latent_space::LatentForm;
use crate::metrics;
use crate::model::Family;
use crate::output::{Overwrite, check_writable, json_line, print, stdout_closed};
use crate::tiling::{Tile, parse_size};
use crate::weights::Parts;

mod files;
mod pipeline;
mod progress;
mod session;

use files::{check_distinct, expand_globs, expand_inputs, plan_outputs, skip_existing};
use pipeline::{Written, for_each, in_passes, pipeline, repeated};
use session::Session;

/// Stable Diffusion VAE: images to latents and back, matching diffusers.
///
/// Exit codes: 0 success, 1 an input or output failed, 2 bad usage.
#[derive(Debug, Parser)]
#[command(name = "vae", version, long_version = long_version(), about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Print nothing on stderr but errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Print the time of each stage (load, read, encode, decode, write) on stderr.
    #[arg(long, global = true)]
    timings: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Encode an image into a latent file (a 512x512 image gives [1, 4, 64, 64]).
    Encode(EncodeArgs),
    /// Decode a latent file into a PNG.
    Decode(DecodeArgs),
    /// Encode and decode images in memory and report PSNR, SSIM and max error.
    Roundtrip(RoundtripArgs),
    /// A quick RGB look at latent files without the decoder (a per-family
    /// linear map from latent channels to colours, as ComfyUI's previews).
    Preview(PreviewArgs),
    /// Describe weights or latent files: layout, family, dtype, parameters and
    /// checks for weights; shape, metadata and per-channel statistics for latents.
    Inspect {
        /// Weights (a .safetensors file or diffusers folder) or latents
        /// (.safetensors, .latent, .npy); patterns are expanded.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// One JSON object per file on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Download a VAE from the Hugging Face Hub into its cache (config.json and
    /// diffusion_pytorch_model.safetensors, checked against the Hub's SHA-256)
    /// and print its local folder on stdout. Honours HF_HOME, HF_HUB_CACHE,
    /// HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE.
    Fetch {
        /// The repo, e.g. stabilityai/sd-vae-ft-mse, or a folder in one,
        /// e.g. stabilityai/stable-diffusion-xl-base-1.0/vae.
        #[arg(value_name = "REPO")]
        repo: String,
        /// Branch, tag or commit. Default: main.
        #[arg(long, value_name = "REV", value_parser = crate::hub::parse_revision)]
        revision: Option<String>,
    },
    /// Latents for a dataset: WebDataset tar shards or folders of samples,
    /// local or in object storage (s3://, gs://, az://), one output tar per
    /// shard, shared among workers without coordination (README: "Datasets").
    Dataset {
        #[command(subcommand)]
        command: DatasetCommand,
    },
    /// Print a completion script for SHELL on stdout, e.g.
    /// `vae completions bash > ~/.local/share/bash-completion/completions/vae`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
enum DatasetCommand {
    /// Encode this worker's share of the shards: for each input shard NAME,
    /// OUTPUT/NAME.tar (KEY.latent.safetensors and the sample's other files)
    /// and its manifest OUTPUT/NAME.json. Shards whose NAME.tar exists are done.
    Encode(Box<DatasetEncodeArgs>),
    /// Sum the manifests of an output folder: shards, samples, latents,
    /// skipped samples by reason, throughput.
    Report {
        /// The output folder (or s3://, gs://, az:// prefix) of `dataset encode`.
        #[arg(value_name = "OUTPUT")]
        output: String,
        /// One JSON object per shard, then the totals, on stdout.
        #[arg(long)]
        json: bool,
    },
}

/// `dataset encode --format`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum MemberFormat {
    /// KEY.latent.safetensors, with our metadata.
    Safetensors,
    /// KEY.latent.npy.
    Npy,
}

impl From<MemberFormat> for dataset::LatentMember {
    fn from(format: MemberFormat) -> Self {
        match format {
            MemberFormat::Safetensors => dataset::LatentMember::Safetensors,
            MemberFormat::Npy => dataset::LatentMember::Npy,
        }
    }
}

#[derive(Debug, Args)]
struct DatasetEncodeArgs {
    /// Input shards: .tar files, folders of them, folders of samples (or of
    /// such folders), patterns ('shards/*.tar'), WebDataset braces
    /// ('shards/{00000..00099}.tar'), or s3://, gs://, az:// objects and
    /// prefixes ending in '/'. Credentials and endpoints come from the
    /// environment (AWS_*, GOOGLE_*, AZURE_*).
    #[arg(required = true, value_name = "SHARDS")]
    inputs: Vec<String>,
    /// The output folder, or a prefix in a store (s3://bucket/latents/).
    #[arg(short, long, value_name = "FOLDER|URL")]
    output: String,
    /// How many workers share the shards. Default: $VAE_NUM_WORKERS, then
    /// $SLURM_ARRAY_TASK_COUNT, else 1.
    #[arg(long, value_name = "N", env = "VAE_NUM_WORKERS")]
    num_workers: Option<usize>,
    /// This worker's index, from 0. Default: $VAE_WORKER_INDEX, then
    /// $JOB_COMPLETION_INDEX (Kubernetes Indexed Job), then
    /// $SLURM_ARRAY_TASK_ID (less _MIN, over _STEP), else 0.
    #[arg(long, value_name = "I", env = "VAE_WORKER_INDEX")]
    worker_index: Option<usize>,
    /// The latent members' format.
    #[arg(long, value_name = "FORMAT", value_enum, default_value_t = MemberFormat::Safetensors)]
    format: MemberFormat,
    /// Redo shards whose output exists.
    #[arg(long)]
    force: bool,
    /// A JSON object per shard (its manifest) and one for the run on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    input: InputArgs,
}

#[derive(Debug, Args)]
struct ModelArgs {
    /// VAE weights: a .safetensors file (diffusers, CompVis/LDM, or a full SD
    /// checkpoint), a diffusers folder, or a Hugging Face Hub repo
    /// (org/name[/subfolder], from the Hugging Face cache or downloaded into
    /// it); or TAESD's (the same, or madebyollin's taesd_encoder/taesd_decoder
    /// files or their folder). Default: $VAE_WEIGHTS, then ./weights/.
    #[arg(short, long, value_name = "PATH|REPO")]
    weights: Option<PathBuf>,
    /// Branch, tag or commit of a Hub repo given to --weights. Default: main.
    #[arg(long, value_name = "REV", value_parser = crate::hub::parse_revision)]
    revision: Option<String>,
    /// Latent scaling factor. Default: config.json's, else --family's, else
    /// 0.18215 (SD 1.x/2.x). For TAESD, the big VAE's it stands in for.
    #[arg(long, value_name = "F", value_parser = parse_scaling)]
    scaling_factor: Option<f64>,
    /// Model family, for its latent scaling and shift when the weights come
    /// without a config.json: sd1, sd2, sdxl, sd3, flux, flux2 or wan21
    /// (also qwen-image) (for TAESD: that of the big VAE it stands in for).
    /// Recorded in latents.
    #[arg(long, value_name = "NAME")]
    family: Option<Family>,
    /// Which form latents are written in: normalized (as the family's
    /// diffusion model consumes them: scaled, or normalised per channel) or
    /// raw (the VAE's latent as it is). Default: raw for FLUX.2 (its
    /// normalized form is 2x2-patched into 128 channels), normalized for the
    /// rest. Decoding reads either.
    #[arg(long, value_name = "FORM")]
    latent_form: Option<LatentForm>,
    /// Where to compute: auto (a GPU when one is usable, else the CPU), cpu,
    /// gpu (any GPU backend built in, a software adapter included), wgpu or
    /// cuda. GPU backends are cargo features (README: "GPU").
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Float type: f32; f16 or bf16 on a GPU; bf16 on a CPU with
    /// AVX512_BF16 (products of bf16, sums and activations in f32). An output
    /// with NaN or Inf in f16/bf16 is computed again in f32, with a warning.
    #[arg(long, value_enum, default_value_t = PrecisionArg::F32)]
    precision: PrecisionArg,
    /// Run in bands of rows to bound memory: auto (when the estimated peak
    /// exceeds --max-memory), off, or a band height in image pixels. Bands
    /// give the untiled result (README: "Large images"). TAESD always runs untiled.
    #[arg(long, value_name = "auto|off|PIXELS", default_value = "auto")]
    tile: Tile,
    /// Peak memory to stay under with --tile auto, e.g. 1.5G or 800M.
    /// Default: half of the available memory, at most 1.5 GiB.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_memory: Option<u64>,
    /// Folder for activations that do not fit --max-memory (in files that
    /// have no name there, gone when vae ends however it ends), and for
    /// dataset shards on their way from or to a store. Default: $TMPDIR, else /tmp.
    #[arg(long, value_name = "DIR")]
    tmp_dir: Option<PathBuf>,
    /// Inputs of one size computed together, in one pass of the model
    /// (encode, decode, dataset encode): auto is up to 8 on a GPU (at most
    /// 4 megapixels a pass), 1 on the CPU, where a batch is no faster. On
    /// the CPU with --tile auto, a pass takes no more than --max-memory holds.
    #[arg(long, value_name = "auto|N", default_value = "auto")]
    batch_size: BatchSize,
    /// Benchmarking (encode, decode): after each pass's result, compute it
    /// N more times and print one `bench: {JSON}` line on stderr with the
    /// first (warm-up) and each further time, read back to the host
    /// (tools/gpu-check times GPUs with it).
    #[arg(long, value_name = "N", default_value_t = 0, hide = true)]
    repeat: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum DeviceArg {
    /// A GPU when one is usable, else the CPU.
    Auto,
    /// The CPU (burn-flex backend).
    Cpu,
    /// Any GPU backend built in (CUDA, then wgpu).
    Gpu,
    /// wgpu: Vulkan, Metal or DX12 (feature `wgpu`).
    Wgpu,
    /// CUDA (feature `cuda`).
    Cuda,
}

impl From<DeviceArg> for DeviceRequest {
    fn from(arg: DeviceArg) -> Self {
        match arg {
            DeviceArg::Auto => DeviceRequest::Auto,
            DeviceArg::Cpu => DeviceRequest::Cpu,
            DeviceArg::Gpu => DeviceRequest::Gpu,
            DeviceArg::Wgpu => DeviceRequest::Wgpu,
            DeviceArg::Cuda => DeviceRequest::Cuda,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PrecisionArg {
    F32,
    F16,
    Bf16,
}

impl From<PrecisionArg> for Precision {
    fn from(arg: PrecisionArg) -> Self {
        match arg {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

#[derive(Debug, Args)]
struct InputArgs {
    /// Refuse images with more pixels than this, before decoding them.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    /// Draw the latent from the posterior instead of taking its mean.
    #[arg(long)]
    sample: bool,
    /// Seed of the posterior draw (with --sample).
    #[arg(long, value_name = "N", requires = "sample", default_value_t = 0)]
    seed: u64,
}

#[derive(Debug, Args)]
struct EncodeArgs {
    /// Images to encode (PNG, JPEG, WebP, BMP, TIFF), folders of them, or
    /// patterns such as 'photos/*.png'.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
    /// Latent file to write: .safetensors (ours), .latent (ComfyUI) or .npy
    /// (NumPy), by extension. With several inputs or a folder, a folder
    /// (created if missing). Default: beside each image, as NAME.safetensors.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    outputs: OutputFlags,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// What encode and decode do with their outputs.
#[derive(Debug, Args)]
struct OutputFlags {
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
    /// Leave inputs whose output exists alone (resume an interrupted batch).
    #[arg(long, conflicts_with = "force")]
    skip_existing: bool,
    /// Print one JSON object per file written on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DecodeArgs {
    /// Latent files (ours; ComfyUI .latent; NumPy .npy; any safetensors file
    /// with one [C,h,w] or [1,C,h,w] float tensor holding a scaled latent),
    /// folders of them, or patterns such as 'latents/*.safetensors'.
    #[arg(required = true, value_name = "LATENT")]
    latents: Vec<PathBuf>,
    /// PNG to write; with several inputs or a folder, a folder (created if
    /// missing). Default: beside each latent, as NAME.png.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    #[command(flatten)]
    outputs: OutputFlags,
    /// Refuse latents that would decode to more pixels than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
    #[command(flatten)]
    model: ModelArgs,
}

#[derive(Debug, Args)]
struct PreviewArgs {
    /// Latent files (any format `decode` reads), folders of them, or patterns.
    #[arg(required = true, value_name = "LATENT")]
    latents: Vec<PathBuf>,
    /// PNG to write; with several inputs or a folder, a folder. Default:
    /// beside each latent, as NAME.preview.png.
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// The latents' family (sd1, sd2, sdxl, sd3, flux). Default: the latent's
    /// metadata, else 4 channels: sd1, 16: flux.
    #[arg(long, value_name = "NAME")]
    family: Option<Family>,
    /// Pixels per latent position along each side (8: the image's size; 16
    /// for wan22, whose latent positions are 16 pixels apart).
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    scale: u16,
    /// Replace the output file if it exists.
    #[arg(short, long)]
    force: bool,
    /// Refuse previews with more pixels than this.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PIXELS)]
    max_pixels: u64,
}

#[derive(Debug, Args)]
struct RoundtripArgs {
    /// Images to encode and decode, folders of them, or patterns.
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// Write the reconstruction here (with several images: an existing folder,
    /// receiving NAME.recon.png for each).
    #[arg(short, long, value_name = "PATH")]
    output: Option<PathBuf>,
    /// Write a grey map of the per-pixel max error (white = 32 levels or more)
    /// here (with several images: a folder, receiving NAME.error.png).
    #[arg(long, value_name = "PATH")]
    error_map: Option<PathBuf>,
    /// Print one JSON object per image on stdout instead of a table row.
    #[arg(long)]
    json: bool,
    /// Replace output files that exist.
    #[arg(short, long)]
    force: bool,
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    model: ModelArgs,
}

/// `--version` (`-V` is the version alone): also which backends this build
/// has, and whether wgpu compiles its shaders to SPIR-V (`vulkan`).
fn long_version() -> &'static str {
    static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TEXT.get_or_init(|| {
        let spirv = if cfg!(feature = "vulkan") { "; wgpu with SPIR-V on Vulkan" } else { "" };
        format!("{} (backends: {}{spirv})", env!("CARGO_PKG_VERSION"), device::backends().join(", "))
    })
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    let mut ctx = Session { quiet: cli.quiet, timings: cli.timings.then(Vec::new), progress: None, device: None };
    let code = match cli.command {
        Command::Encode(args) => encode(&mut ctx, args),
        Command::Decode(args) => decode(&mut ctx, args),
        Command::Inspect { files, json } => inspect(&ctx, &files, json),
        Command::Preview(args) => preview(&mut ctx, args),
        Command::Fetch { repo, revision } => fetch(&mut ctx, &repo, revision.as_deref()),
        Command::Completions { shell } => {
            // Into memory first: clap_complete panics on a failed write.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "vae", &mut script);
            print(&String::from_utf8_lossy(&script))
                .map(|()| ExitCode::SUCCESS)
                .context("writing the completion script")
        }
        Command::Roundtrip(args) => roundtrip(&mut ctx, args),
        Command::Dataset { command: DatasetCommand::Encode(args) } => dataset_encode(&mut ctx, *args),
        Command::Dataset { command: DatasetCommand::Report { output, json } } => dataset_report(&ctx, &output, json),
    };
    ctx.print_timings();
    code
}

fn inspect(ctx: &Session, files: &[PathBuf], json: bool) -> Result<ExitCode> {
    let files = expand_globs(files)?;
    let mut failed = 0;
    for file in &files {
        match crate::inspect::inspect(file) {
            Ok(report) if json => {
                print(&format!("{}\n", serde_json::to_string(&report)?)).context("writing to stdout")?
            }
            Ok(report) => {
                let gap = if files.len() > 1 { "\n" } else { "" };
                print(&format!("{gap}{}", crate::inspect::render(&report))).context("writing to stdout")?;
            }
            Err(e) => {
                failed += 1;
                eprintln!("vae: error: {e:#}");
            }
        }
        // Its reader has gone (`| head`): the output ends here.
        if stdout_closed() {
            break;
        }
    }
    if failed > 0 && files.len() > 1 {
        ctx.info(format_args!("inspected {} of {} files; {failed} failed", files.len() - failed, files.len()));
    }
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn fetch(ctx: &mut Session, spec: &str, revision: Option<&str>) -> Result<ExitCode> {
    let Some(repo) = HubRepo::parse(spec, revision) else {
        bail!("{spec}: not a Hugging Face Hub repo id (org/name, or org/name/subfolder)");
    };
    let hub = progress::hub(ctx.quiet);
    let folder = ctx.stage("fetch", || hub.fetch(&repo))?;
    print(&format!("{}\n", folder.display())).context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

/// `--scaling-factor`: finite, nonzero and of a size f32 latents can hold.
fn parse_scaling(text: &str) -> Result<f64, String> {
    let value = text.trim().parse::<f64>().map_err(|_| format!("'{text}' is not a number"))?;
    crate::latent::check_scaling(value)?;
    Ok(value)
}

/// `--sample` needs a posterior, which TAESD's deterministic encoder lacks:
/// said once, before any input is read (the library refuses each encode).
fn check_posterior(vae: &Vae, args: &InputArgs) -> Result<()> {
    if args.sample && !vae.has_posterior() {
        bail!("{}: {}", vae.info().path.display(), crate::vae::VaeError::NoPosterior);
    }
    Ok(())
}

fn posterior(args: &InputArgs) -> Posterior {
    if args.sample { Posterior::Sample { seed: args.seed } } else { Posterior::Mean }
}

fn overwrite(force: bool) -> Overwrite {
    if force { Overwrite::Replace } else { Overwrite::Refuse }
}

fn encode(ctx: &mut Session, args: EncodeArgs) -> Result<ExitCode> {
    let inputs = expand_inputs(&args.images, &imageio::EXTENSIONS)?;
    let plan = plan_outputs(&args.images, inputs, args.output.as_deref(), "safetensors")?;
    let plan = skip_existing(ctx, plan, args.outputs.skip_existing);
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut vae = ctx.load(&args.model, Parts::Encoder, args.input.max_pixels)?;
    check_posterior(&vae, &args.input)?;
    let chunk = vae.read_ahead();
    let read = |(input, output): &(PathBuf, PathBuf)| {
        check_writable(output, overwrite(args.outputs.force))?;
        Ok(imageio::load(input, args.input.max_pixels)?)
    };
    let encode = |ctx: &mut Session, items: &[&(PathBuf, PathBuf)], images: Vec<imageio::InputImage>| {
        let paths: Vec<&Path> = items.iter().map(|(input, _)| input.as_path()).collect();
        let passes = vae.encode_passes(&images.iter().collect::<Vec<_>>());
        for (path, image) in paths.iter().zip(&images) {
            ctx.plan(path, vae.encode_plan(image), vae.tiling().max_memory);
        }
        let pick = |pass: &[usize]| pass.iter().map(|&i| &images[i]).collect::<Vec<_>>();
        let posteriors = |pass: &[usize]| vec![posterior(&args.input); pass.len()];
        let latents = in_passes(
            ctx,
            "encode",
            &mut vae,
            &paths,
            passes,
            |vae, pass| vae.encode_batch(&pick(pass), &posteriors(pass)),
            |vae, pass| repeated(args.model.repeat, || vae.encode_batch(&pick(pass), &posteriors(pass))),
        );
        let sized = latents.into_iter().zip(&images);
        sized.map(|(latent, image)| latent.map(|l| (l, image.width, image.height))).collect()
    };
    let write = |(input, output): &(PathBuf, PathBuf), (latent, width, height): (Latent, usize, usize)| {
        latent.write(output, overwrite(args.outputs.force))?;
        let shape = [1, latent.channels, latent.height, latent.width];
        Ok(Written {
            message: format!("wrote {} (latent {shape:?} from {width}x{height})", output.display()),
            json: args.outputs.json.then(|| {
                serde_json::json!({ "input": input, "output": output, "latent": shape, "width": width, "height": height })
            }),
        })
    };
    Ok(pipeline(ctx, "encoded", &plan, chunk, read, encode, write))
}

fn decode(ctx: &mut Session, args: DecodeArgs) -> Result<ExitCode> {
    let inputs = expand_inputs(&args.latents, &LatentFormat::EXTENSIONS)?;
    let plan = plan_outputs(&args.latents, inputs, args.output.as_deref(), "png")?;
    let plan = skip_existing(ctx, plan, args.outputs.skip_existing);
    if plan.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    let mut vae = ctx.load(&args.model, Parts::Decoder, args.max_pixels)?;
    let chunk = vae.read_ahead();
    let read = |(input, output): &(PathBuf, PathBuf)| {
        check_writable(output, overwrite(args.outputs.force))?;
        Ok(Latent::read(input)?)
    };
    let decode = |ctx: &mut Session, items: &[&(PathBuf, PathBuf)], latents: Vec<Latent>| {
        let paths: Vec<&Path> = items.iter().map(|(input, _)| input.as_path()).collect();
        let mut refused = Vec::new();
        let mut checked = Vec::new();
        for (i, (path, latent)) in paths.iter().zip(&latents).enumerate() {
            if let Err(err) = vae.check_latent(latent) {
                refused.push((i, err));
                continue;
            }
            // A latent scaled as this model scales (one it encoded, say) is
            // what it is: only one scaled for another family is worth a look.
            let own = vae.latent_space();
            let same = latent.meta.scaling_factor == Some(own.scaling_factor)
                && latent.meta.shift_factor.unwrap_or(0.0) == own.shift_factor
                && latent.meta.channel_stats == own.channel_stats;
            // A raw latent has no expected spread to compare with.
            let std = vae.rescaled_std(latent);
            if !same && own.form() != LatentForm::Raw && !(0.2..=5.0).contains(&std) {
                ctx.info(format_args!(
                    "{}: warning: its std after scaling is {std:.3}, far from the ~1 of a latent of this family; \
                     was it scaled for another one (see --family, --scaling-factor)?",
                    path.display()
                ));
            }
            if own.family == Some(Family::Flux2) {
                let form = vae.latent_form_of(latent).name();
                ctx.info(format_args!("{}: the {form} form ({} channels)", path.display(), latent.channels));
            }
            ctx.plan(path, vae.decode_plan(latent), vae.tiling().max_memory);
            checked.push(i);
        }
        let passes = vae.decode_passes(&checked.iter().map(|&i| &latents[i]).collect::<Vec<_>>());
        let passes = passes.into_iter().map(|pass| pass.into_iter().map(|j| checked[j]).collect()).collect();
        let pick = |pass: &[usize]| pass.iter().map(|&i| &latents[i]).collect::<Vec<_>>();
        let mut images = in_passes(
            ctx,
            "decode",
            &mut vae,
            &paths,
            passes,
            |vae, pass| vae.decode_batch(&pick(pass)),
            |vae, pass| repeated(args.model.repeat, || vae.decode_batch(&pick(pass))),
        );
        for (i, err) in refused {
            images[i] = Err(named(paths[i], err));
        }
        images
    };
    let write = |(input, output): &(PathBuf, PathBuf), image: imageio::OutputImage| {
        image.save_png(output, overwrite(args.outputs.force))?;
        let (width, height) = (image.width, image.height);
        Ok(Written {
            message: format!("wrote {} ({width}x{height})", output.display()),
            json: args
                .outputs
                .json
                .then(|| serde_json::json!({ "input": input, "output": output, "width": width, "height": height })),
        })
    };
    Ok(pipeline(ctx, "decoded", &plan, chunk, read, decode, write))
}

fn preview(ctx: &mut Session, args: PreviewArgs) -> Result<ExitCode> {
    let inputs = expand_inputs(&args.latents, &LatentFormat::EXTENSIONS)?;
    let plan = plan_outputs(&args.latents, inputs, args.output.as_deref(), "preview.png")?;
    let scale = usize::from(args.scale);
    Ok(for_each(ctx, "previewed", &plan, |ctx, (input, output)| {
        check_writable(output, overwrite(args.force))?;
        let latent = Latent::read(input)?;
        let Some(family) = crate::preview::family_of(&latent, args.family) else {
            bail!("{}: no preview for a latent of {} channels with this family", input.display(), latent.channels);
        };
        if !crate::preview::has_factors(family) {
            bail!(
                "{}: no preview for {} latents: ComfyUI has no latent_rgb_factors for them (decode it instead)",
                input.display(),
                family.name()
            );
        }
        let pixels = (latent.height * scale) as u64 * (latent.width * scale) as u64;
        if pixels > args.max_pixels {
            bail!("{}: preview of {pixels} pixels is over --max-pixels {}", input.display(), args.max_pixels);
        }
        let image = crate::preview::preview(&latent, family, scale).with_context(|| input.display().to_string())?;
        image.save_png(output, overwrite(args.force))?;
        ctx.info(format_args!(
            "wrote {} ({}x{}, {} factors)",
            output.display(),
            image.width,
            image.height,
            family.name()
        ));
        Ok(())
    }))
}

fn roundtrip(ctx: &mut Session, args: RoundtripArgs) -> Result<ExitCode> {
    let images = expand_inputs(&args.images, &imageio::EXTENSIONS)?;
    let several = images.len() > 1 || args.images.iter().any(|p| p.is_dir());
    let target = |dir_or_file: &Option<PathBuf>, image: &Path, suffix: &str| -> Result<Option<PathBuf>> {
        let Some(path) = dir_or_file else { return Ok(None) };
        if !several {
            return Ok(Some(path.clone()));
        }
        if !path.is_dir() {
            if path.exists() {
                bail!("{}: with several images this must be a folder", path.display());
            }
            // As encode, decode and preview do.
            std::fs::create_dir_all(path).with_context(|| format!("{}: cannot create folder", path.display()))?;
        }
        let stem = image.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Ok(Some(path.join(format!("{stem}.{suffix}.png"))))
    };
    let inputs: Vec<&Path> = images.iter().map(PathBuf::as_path).collect();
    let mut plan = Vec::new();
    for image in &images {
        let recon = target(&args.output, image, "recon")?;
        let error_map = target(&args.error_map, image, "error")?;
        for out in recon.iter().chain(&error_map) {
            check_distinct(out, &inputs)?;
        }
        plan.push((image.clone(), recon, error_map));
    }
    if args.model.repeat > 0 {
        bail!("--repeat applies to encode and decode");
    }
    if args.model.batch_size != BatchSize::Auto {
        bail!("--batch-size applies to encode, decode and dataset encode");
    }
    let mut vae = ctx.load(&args.model, Parts::Both, args.input.max_pixels)?;
    check_posterior(&vae, &args.input)?;
    Ok(for_each(ctx, "round-tripped", &plan, |ctx, (path, recon, error_map)| {
        // With stdout's reader gone (`| head`), only written files are still wanted.
        if stdout_closed() && recon.is_none() && error_map.is_none() {
            return Ok(());
        }
        for out in recon.iter().chain(error_map) {
            check_writable(out, overwrite(args.force))?;
        }
        roundtrip_one(ctx, &mut vae, &args, path, recon.as_deref(), error_map.as_deref())
    }))
}

fn roundtrip_one(
    ctx: &mut Session,
    vae: &mut Vae,
    args: &RoundtripArgs,
    path: &Path,
    recon: Option<&Path>,
    error_map: Option<&Path>,
) -> Result<()> {
    let image = ctx.stage("read", || imageio::load(path, args.input.max_pixels))?;
    ctx.plan(path, vae.encode_plan(&image), vae.tiling().max_memory);
    let start = Instant::now();
    let before = vae.retried_from();
    let latent = ctx.stage("encode", || vae.encode(&image, posterior(&args.input))).map_err(|e| named(path, e))?;
    ctx.retried(&[path], before, vae);
    let encode_s = start.elapsed().as_secs_f64();
    ctx.plan(path, vae.decode_plan(&latent), vae.tiling().max_memory);
    let start = Instant::now();
    let before = vae.retried_from();
    let decoded = ctx.stage("decode", || vae.decode(&latent)).map_err(|e| named(path, e))?;
    ctx.retried(&[path], before, vae);
    let decode_s = start.elapsed().as_secs_f64();
    let (w, h) = (image.width, image.height);
    let ssim = metrics::ssim(&image.rgb8, &decoded.rgb8, w, h).ok();
    let psnr = metrics::psnr(&image.rgb8, &decoded.rgb8);
    let max_err = metrics::max_abs_error(&image.rgb8, &decoded.rgb8);
    if let Some(out) = recon {
        ctx.stage("write", || decoded.save_png(out, overwrite(args.force)))?;
    }
    if let Some(out) = error_map {
        let grey = metrics::error_map(&image.rgb8, &decoded.rgb8, w, h);
        let rgb8 = grey.iter().flat_map(|&g| [g, g, g]).collect();
        let map = imageio::OutputImage { width: w, height: h, rgb8 };
        map.save_png(out, overwrite(args.force)).with_context(|| "writing the error map")?;
    }
    let finite = |v: f64| if v.is_finite() { serde_json::json!(v) } else { serde_json::Value::Null };
    if args.json {
        let row = serde_json::json!({
            "image": path.display().to_string(),
            "width": w,
            "height": h,
            "latent_shape": [1, latent.channels, latent.height, latent.width],
            "psnr": finite(psnr),
            "ssim": ssim.map(finite),
            "max_abs_error": max_err,
            "encode_seconds": encode_s,
            "decode_seconds": decode_s,
        });
        print(&format!("{row}\n")).context("writing to stdout")?;
    } else {
        let ssim = ssim.map_or("n/a (image under 11 px)".to_owned(), |s| format!("{s:.4}"));
        print(&format!(
            "{}\t{w}x{h}\tPSNR {psnr:.2} dB\tSSIM {ssim}\tmax error {max_err}\tencode {encode_s:.2}s\tdecode {decode_s:.2}s\n",
            path.display()
        ))
        .context("writing to stdout")?;
    }
    Ok(())
}

/// `err` naming the input `path` it was about.
fn named(path: &Path, err: crate::vae::VaeError) -> anyhow::Error {
    anyhow::anyhow!("{}: {err}", path.display())
}

fn dataset_encode(ctx: &mut Session, args: DatasetEncodeArgs) -> Result<ExitCode> {
    if args.model.repeat > 0 {
        bail!("--repeat applies to encode and decode");
    }
    let (workers, from) = Workers::resolve(args.worker_index, args.num_workers, |name| std::env::var(name).ok())?;
    let output = dataset::output_location(&args.output)?;
    let shards = dataset::expand(&args.inputs)?;
    if let Some(variable) = from.job_variable() {
        ctx.info(format_args!("worker index {} of {} from ${variable}", workers.index, workers.count));
    }
    let options = dataset::Options {
        output,
        workers,
        format: args.format.into(),
        posterior: posterior(&args.input),
        max_pixels: args.input.max_pixels,
        tmp_dir: args.model.tmp_dir.clone().unwrap_or_else(std::env::temp_dir),
        force: args.force,
        quiet: ctx.quiet,
        json: args.json,
    };
    let report = dataset::run(&shards, &options, || {
        let vae = ctx.load(&args.model, Parts::Encoder, args.input.max_pixels)?;
        check_posterior(&vae, &args.input)?;
        Ok(vae)
    })?;
    let total = report.totals(workers);
    ctx.info(format_args!(
        "worker {} of {}: {} shards encoded, {} done before, {} failed; {} latents, {} samples skipped, {:.1} s ({:.2} images/s)",
        workers.index,
        workers.count,
        report.summaries.len(),
        report.done_before,
        report.failed,
        total.encoded,
        total.skipped,
        report.seconds,
        total.images_per_second
    ));
    if args.json {
        json_line(&serde_json::to_value(dataset::RunLine { report: total })?)?;
    }
    Ok(if report.failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn dataset_report(ctx: &Session, output: &str, json: bool) -> Result<ExitCode> {
    let (summaries, total) = dataset::report(&dataset::output_location(output)?)?;
    if json {
        for summary in &summaries {
            json_line(&serde_json::to_value(summary)?)?;
        }
        json_line(&serde_json::to_value(dataset::TotalLine { total })?)?;
    } else {
        let mut out = String::new();
        for s in &summaries {
            writeln!(
                out,
                "{}: {} samples, {} latents, {} skipped, {:.1} s, {:.2} images/s (worker {} of {})",
                s.shard,
                s.samples,
                s.encoded,
                s.skipped.len(),
                s.seconds,
                s.images_per_second,
                s.worker,
                s.workers
            )?;
        }
        let by_reason: Vec<String> = total.skipped_by_reason.iter().map(|(kind, n)| format!("{kind}: {n}")).collect();
        writeln!(
            out,
            "total: {} shards, {} samples, {} latents, {} skipped{}; {:.2} images/s per worker",
            total.shards,
            total.samples,
            total.encoded,
            total.skipped,
            if by_reason.is_empty() { String::new() } else { format!(" ({})", by_reason.join(", ")) },
            total.images_per_second_per_worker
        )?;
        print(&out).context("writing to stdout")?;
    }
    if summaries.is_empty() {
        ctx.info(format_args!("{output}: no finished shard"));
    }
    Ok(ExitCode::SUCCESS)
}
