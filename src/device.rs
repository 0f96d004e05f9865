//! Where the model computes: `--device` and `--precision` turned into a burn
//! `Device` among the backends this build has, and a float type.
//!
//! The model code is the same on every device; only this module knows which
//! backends exist. The GPU backends are cargo features (`wgpu`, `cuda`); a
//! build without one still accepts its name and refuses it with the feature
//! to rebuild with, so scripts get a clear error instead of clap's list.

use std::fmt;

use burn::tensor::{Device, FloatDType};

/// What `--device` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceRequest {
    /// A GPU when one is usable, else the CPU.
    Auto,
    /// The CPU (burn-flex, with this crate's kernels).
    Cpu,
    /// Any GPU backend built in: CUDA first, then wgpu (a software adapter
    /// such as lavapipe included, which is how GPU code is tested without a GPU).
    Gpu,
    /// wgpu (Vulkan, Metal, DX12), any adapter.
    Wgpu,
    /// CUDA.
    Cuda,
}

/// `--precision`: the float type of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> FloatDType {
        match self {
            Precision::F32 => FloatDType::F32,
            Precision::F16 => FloatDType::F16,
            Precision::Bf16 => FloatDType::BF16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// The backends this build has, as `--device` names them (`vae --version`
/// lists them): the CPU always, the GPU ones as their features were built.
pub fn backends() -> Vec<&'static str> {
    let built = [("cpu", true), ("wgpu", cfg!(feature = "wgpu")), ("cuda", cfg!(feature = "cuda"))];
    built.into_iter().filter(|(_, on)| *on).map(|(name, _)| name).collect()
}

/// The device chosen, and how to describe it.
#[derive(Debug, Clone)]
pub struct Chosen {
    pub device: Device,
    /// e.g. `cpu`, `wgpu (llvmpipe (LLVM 15.0.6, 256 bits), software)`.
    pub description: String,
    /// Whether this is a GPU backend (so burn's own operations run, and
    /// f16 is allowed; the CPU has bf16 products with f32 activations).
    pub gpu: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("this build has no {0} backend; rebuild with --features {0}")]
    NotBuilt(&'static str),
    #[error("no usable GPU: {0}")]
    NoGpu(String),
    #[error(
        "--precision {0} runs on a GPU only (the CPU computes in f32 or bf16); use --device gpu, or --precision f32"
    )]
    ReducedOnCpu(&'static str),
    #[error("--precision bf16 on the CPU needs {0}, which this CPU lacks; use --precision f32 (or --device gpu)")]
    CpuLacks(&'static str),
    #[error("{device} does not support {precision}; use --precision f32")]
    Unsupported { device: String, precision: &'static str },
}

impl fmt::Display for Chosen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.description)
    }
}

/// The device for `request`. `Auto` never fails: with no usable GPU it takes
/// the CPU (the caller says which it took). The explicit GPU requests fail
/// with one line naming what is missing.
pub fn choose(request: DeviceRequest) -> Result<Chosen, DeviceError> {
    if request != DeviceRequest::Cpu {
        keep_tuning_in_user_cache();
    }
    match request {
        DeviceRequest::Cpu => Ok(cpu()),
        DeviceRequest::Auto => Ok(gpu(false).unwrap_or_else(|_| cpu())),
        DeviceRequest::Gpu => gpu(true),
        DeviceRequest::Cuda => cuda(),
        DeviceRequest::Wgpu => wgpu(true),
    }
}

/// Checks that `precision` can run on `chosen`.
pub fn check_precision(chosen: &Chosen, precision: Precision) -> Result<(), DeviceError> {
    if precision == Precision::F32 {
        return Ok(());
    }
    if !chosen.gpu {
        return match precision {
            Precision::Bf16 => crate::kernels::bf16::support().map_err(DeviceError::CpuLacks),
            _ => Err(DeviceError::ReducedOnCpu(precision.name())),
        };
    }
    if !chosen.device.supports_dtype(precision.dtype()) {
        let device = chosen.description.clone();
        return Err(DeviceError::Unsupported { device, precision: precision.name() });
    }
    Ok(())
}

fn cpu() -> Chosen {
    Chosen { device: Device::flex(), description: "cpu".to_owned(), gpu: false }
}

/// CUDA, else wgpu. `software`: whether a software adapter (lavapipe,
/// llvmpipe, WARP) counts; `auto` does not take one, since the CPU backend
/// with its own kernels is far faster than a rasterizer emulating a GPU.
fn gpu(software: bool) -> Result<Chosen, DeviceError> {
    let mut reasons = Vec::new();
    let attempts: [&dyn Fn() -> Result<Chosen, DeviceError>; 2] = [&cuda, &|| wgpu(software)];
    for attempt in attempts {
        match attempt() {
            Ok(chosen) => return Ok(chosen),
            Err(DeviceError::NotBuilt(_)) => {}
            Err(DeviceError::NoGpu(reason)) => reasons.push(reason),
            Err(err) => reasons.push(err.to_string()),
        }
    }
    if reasons.is_empty() {
        return Err(DeviceError::NoGpu(
            "this build has no GPU backend; rebuild with --features wgpu (or cuda)".to_owned(),
        ));
    }
    Err(DeviceError::NoGpu(reasons.join("; ")))
}

#[cfg(not(feature = "cuda"))]
fn cuda() -> Result<Chosen, DeviceError> {
    Err(DeviceError::NotBuilt("cuda"))
}

#[cfg(feature = "cuda")]
fn cuda() -> Result<Chosen, DeviceError> {
    use burn::tensor::{DeviceIndex, DeviceType};
    let found = quietly(|| Device::enumerate(DeviceType::Cuda).into_vec().len()).unwrap_or(0);
    if found == 0 {
        return Err(DeviceError::NoGpu("CUDA found no device".to_owned()));
    }
    let device = Device::cuda(DeviceIndex::Default);
    let name = probe(&device).map_err(|e| DeviceError::NoGpu(format!("CUDA device failed to start: {e}")))?;
    Ok(Chosen { device, description: format!("cuda ({name})"), gpu: true })
}

#[cfg(not(feature = "wgpu"))]
fn wgpu(_software: bool) -> Result<Chosen, DeviceError> {
    Err(DeviceError::NotBuilt("wgpu"))
}

#[cfg(feature = "wgpu")]
fn wgpu(software: bool) -> Result<Chosen, DeviceError> {
    use burn::tensor::{DeviceKind, DeviceType};
    let found = quietly(|| Device::enumerate(DeviceType::Wgpu).into_vec()).unwrap_or_default();
    // Hardware first, in wgpu's order of preference; the software adapter last.
    let kinds = [DeviceKind::DiscreteGpu(0), DeviceKind::IntegratedGpu(0), DeviceKind::VirtualGpu(0), DeviceKind::Cpu];
    let mut failures = Vec::new();
    for kind in kinds {
        let is_software = kind == DeviceKind::Cpu;
        let device = Device::wgpu(kind.clone());
        if !found.contains(&device) || (is_software && !software) {
            continue;
        }
        if is_software && cfg!(feature = "vulkan") {
            // Seen with Debian 12's lavapipe (Mesa 22.3): a segfault in the driver
            // while it compiles cubecl's SPIR-V, which no catch_unwind stops.
            failures.push(format!(
                "{kind:?}: not with this build: software Vulkan drivers crash on its SPIR-V kernels \
                 (feature vulkan); test on one with a --features wgpu build"
            ));
            continue;
        }
        match probe(&device) {
            Ok(name) if is_software => {
                let description = format!("wgpu ({name}, a software adapter: for testing, slower than --device cpu)");
                return Ok(Chosen { device, description, gpu: true });
            }
            Ok(name) => return Ok(Chosen { device, description: format!("wgpu ({name})"), gpu: true }),
            Err(err) => failures.push(format!("{kind:?}: {err}")),
        }
    }
    Err(DeviceError::NoGpu(match (failures.is_empty(), found.is_empty()) {
        (false, _) => format!("wgpu adapters failed to start ({})", failures.join("; ")),
        (true, false) => "wgpu found only a software adapter (use --device gpu to take it)".to_owned(),
        (true, true) => "wgpu found no adapter (no Vulkan, Metal or DX12 driver)".to_owned(),
    }))
}

/// Where cubecl keeps its autotune results between processes. Its default is
/// `target/environment` of the outermost Cargo project above the working
/// directory, which would scatter caches into whatever checkout `vae` happens
/// to run in; an installed tool keeps them in the user cache directory
/// (`$XDG_CACHE_HOME/cubecl`, else `~/.cache/cubecl`) instead. Everything else
/// comes from where cubecl reads it: a `cubecl.toml` above the working
/// directory (its `[environment] path` too, unless that is the default) and
/// `CUBECL_*` variables (`CUBECL_AUTOTUNE_CACHE=0` turns the cache off).
/// Must run before the first GPU device starts, which reads the
/// configuration once.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn keep_tuning_in_user_cache() {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    let mut config = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if matches!(config.environment.path, CacheConfig::Target) {
        config.environment.path = CacheConfig::Global;
    }
    // `false` once a device has read the configuration: it is then settled.
    CubeClRuntimeConfig::try_set(config);
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
fn keep_tuning_in_user_cache() {}

/// Starts `device` with a small computation read back to the host, and
/// returns its name. Backends panic when a device cannot start (cubecl's
/// runtimes `expect` their setup), so the panic is caught and becomes the error.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn probe(device: &Device) -> Result<String, String> {
    use burn::tensor::Tensor;
    quietly(|| {
        let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], device);
        let y = (x * 2.0).sum().into_scalar::<f32>();
        let name = device.identity().map_or_else(|| "unnamed".to_owned(), |id| id.name);
        (y, name)
    })
    .and_then(|(y, name)| if y == 12.0 { Ok(name) } else { Err(format!("computed {y} for 12")) })
}

/// Runs `f`, turning a panic into its message, with the default panic hook
/// silenced meanwhile so that a missing driver prints one line, not a backtrace.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.map_err(|panic| {
        let message = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("the backend panicked");
        message.lines().next().unwrap_or_default().to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_is_always_there_and_auto_falls_back_to_something() {
        assert!(!choose(DeviceRequest::Cpu).unwrap().gpu);
        // Auto never fails, GPU or not.
        assert!(choose(DeviceRequest::Auto).is_ok());
    }

    #[test]
    fn f16_is_refused_on_the_cpu_and_bf16_needs_avx512_bf16() {
        let cpu = choose(DeviceRequest::Cpu).unwrap();
        assert!(check_precision(&cpu, Precision::F32).is_ok());
        let err = check_precision(&cpu, Precision::F16).unwrap_err().to_string();
        assert!(err.contains("--precision f16 runs on a GPU only"), "{err}");
        match crate::kernels::bf16::support() {
            Ok(()) => assert!(check_precision(&cpu, Precision::Bf16).is_ok()),
            Err(isa) => {
                let err = check_precision(&cpu, Precision::Bf16).unwrap_err().to_string();
                assert!(err.contains(&format!("needs {isa}, which this CPU lacks")), "{err}");
            }
        }
    }

    #[cfg(not(feature = "wgpu"))]
    #[test]
    fn a_backend_not_built_names_the_feature() {
        let err = choose(DeviceRequest::Wgpu).unwrap_err().to_string();
        assert_eq!(err, "this build has no wgpu backend; rebuild with --features wgpu");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_not_built_names_the_feature() {
        let err = choose(DeviceRequest::Cuda).unwrap_err().to_string();
        assert_eq!(err, "this build has no cuda backend; rebuild with --features cuda");
    }

    #[cfg(not(any(feature = "wgpu", feature = "cuda")))]
    #[test]
    fn gpu_without_a_backend_says_how_to_get_one() {
        let err = choose(DeviceRequest::Gpu).unwrap_err().to_string();
        assert!(err.contains("rebuild with --features wgpu"), "{err}");
        assert!(!choose(DeviceRequest::Auto).unwrap().gpu);
    }
}
