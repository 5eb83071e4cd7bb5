//! Which device runs the model, and in which precision.
//!
//! With the `cuda` feature, `auto` is the first GPU visible to this process (a backend picks the GPU through
//! `CUDA_VISIBLE_DEVICES`); otherwise, or when no GPU works, the CPU. An explicit `cuda` never falls back.
//! Tests take their device from [`test_device`] (`IDEATOR_TEST_DEVICE`), so the same tests run on a GPU.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{ModelError, Result};

/// The variable that chooses the device of the device-agnostic tests: `cpu` (the default) or `cuda[:N]`.
pub(crate) const TEST_DEVICE_VAR: &str = "IDEATOR_TEST_DEVICE";

pub fn default_device() -> Device {
    #[cfg(feature = "cuda")]
    {
        match Device::new_cuda(0) {
            Ok(d) => return d,
            Err(e) => tracing::warn!("no usable CUDA device ({e}); running on the CPU"),
        }
    }
    Device::Cpu
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto`.
///
/// # Errors
/// An unknown name, or `cuda` when the binary was built without the `cuda` feature or no GPU can be opened.
pub fn parse_device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(default_device()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize = s
                .strip_prefix("cuda:")
                .unwrap_or("0")
                .parse()
                .map_err(|_| ModelError::Invalid(format!("bad device '{s}': write cpu, cuda or cuda:N")))?;
            Device::new_cuda(ordinal).map_err(|e| {
                ModelError::Invalid(format!(
                    "cannot use {s}: {e} (build with `--features cuda` on a machine with an NVIDIA GPU)"
                ))
            })
        }
        other => Err(ModelError::Invalid(format!("unknown device '{other}': write cpu, cuda, cuda:N or auto"))),
    }
}

/// The device named by `IDEATOR_TEST_DEVICE` (`cpu` when unset): `cpu`, `cuda` or `cuda:N`.
///
/// # Errors
/// An unknown value, `auto` (a test must know where it runs), or a CUDA device that cannot be opened (a build
/// without the `cuda` feature, no GPU, no driver). Never a silent fall back to the CPU: a GPU test run that
/// quietly ran on the CPU would prove nothing.
pub(crate) fn test_device_from(value: Option<&str>) -> Result<Device> {
    match value.map(str::trim) {
        None | Some("") | Some("cpu") => Ok(Device::Cpu),
        Some(s) if s == "cuda" || s.starts_with("cuda:") => parse_device(s).map_err(|e| {
            ModelError::Invalid(format!(
                "{TEST_DEVICE_VAR}={s} but {e}; build the tests with `--features cuda` on a machine with a GPU, \
                 or unset {TEST_DEVICE_VAR} to test on the CPU"
            ))
        }),
        Some(other) => Err(ModelError::Invalid(format!(
            "{TEST_DEVICE_VAR}={other} is not a test device: write cpu, cuda or cuda:N"
        ))),
    }
}

/// The device the device-agnostic tests run on (`test_device_from` of `IDEATOR_TEST_DEVICE`).
///
/// # Panics
/// When `test_device_from` fails: the test fails loudly instead of running somewhere else.
pub fn test_device() -> Device {
    let value = std::env::var(TEST_DEVICE_VAR).ok();
    match test_device_from(value.as_deref()) {
        Ok(d) => d,
        Err(e) => panic!("{e}"),
    }
}

/// Which implementation an op that has a CPU-only kernel runs.
///
/// The model and the pretrain environment have custom ops (blocked attention, fused log-probs, the frozen-weight
/// matmul of LoRA, the one-row decode matmul, fused GELU/softmax/norm) whose kernels exist for f32 on the CPU
/// only; every other device and dtype must take the portable path, built from candle ops that every backend
/// implements. All of them decide here, so no CUDA tensor can reach a CPU-only kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// The hand-written CPU kernel (f32, CPU).
    CpuFast,
    /// Composed candle ops: any device, any float dtype.
    Portable,
}

thread_local! {
    static FORCE_PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// The kernel for an op over `inputs`: [`Kernel::CpuFast`] only when every input is an f32 CPU tensor and the
/// portable path is not forced on this thread ([`with_portable_kernels`]).
pub fn kernel_for(inputs: &[&Tensor]) -> Kernel {
    let cpu_f32 = inputs.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32);
    if cpu_f32 && !FORCE_PORTABLE.with(Cell::get) {
        Kernel::CpuFast
    } else {
        Kernel::Portable
    }
}

/// Runs `f` with every op on this thread taking the portable path, as it does on a GPU: the CPU tests use it
/// to check the GPU's code path against the fast kernels without a GPU.
pub fn with_portable_kernels<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            FORCE_PORTABLE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(FORCE_PORTABLE.with(|c| c.replace(true)));
    f()
}

/// The floating-point format of the ideator's forward passes (sampling and training), from `[model] dtype`.
///
/// `bf16` keeps the weights the forward reads, the activations and the KV cache in bfloat16 (half the memory
/// traffic, and the GPU's tensor cores); training still keeps f32 master weights and f32 optimiser state, and
/// log-probs, losses and softmaxes over the vocabulary are computed in f32 (mixed precision as in Micikevicius
/// et al. 2018, "Mixed Precision Training", with bf16 instead of fp16, so no loss scaling is needed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(ModelError::Invalid(format!("unknown dtype '{other}': write f32 or bf16"))),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_test_device_is_the_cpu_unless_named() {
        assert!(test_device_from(None).unwrap().is_cpu());
        assert!(test_device_from(Some("cpu")).unwrap().is_cpu());
    }

    #[test]
    fn an_unknown_test_device_is_an_error_that_names_the_variable() {
        for bad in ["gpu", "auto", "CUDA"] {
            let err = test_device_from(Some(bad)).unwrap_err().to_string();
            assert!(err.contains(TEST_DEVICE_VAR) && err.contains(bad), "{err}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_refused_not_replaced_by_the_cpu() {
        let err = test_device_from(Some("cuda")).unwrap_err().to_string();
        assert!(err.contains("--features cuda"), "{err}");
    }

    #[test]
    fn only_f32_cpu_tensors_take_the_cpu_kernels_unless_the_portable_path_is_forced() {
        let f32_cpu = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        let bf16_cpu = Tensor::zeros(3, DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(kernel_for(&[&f32_cpu, &f32_cpu]), Kernel::CpuFast);
        assert_eq!(kernel_for(&[&f32_cpu, &bf16_cpu]), Kernel::Portable);
        assert_eq!(with_portable_kernels(|| kernel_for(&[&f32_cpu])), Kernel::Portable);
        // Nested and then left: the setting is restored.
        with_portable_kernels(|| with_portable_kernels(|| ()));
        assert_eq!(kernel_for(&[&f32_cpu]), Kernel::CpuFast);
    }

    #[test]
    fn precisions_parse_and_print() {
        for p in [Precision::F32, Precision::Bf16] {
            assert_eq!(p.as_str().parse::<Precision>().unwrap(), p);
        }
        assert_eq!(Precision::Bf16.dtype(), DType::BF16);
        assert!("fp16".parse::<Precision>().unwrap_err().to_string().contains("f32 or bf16"));
    }
}
