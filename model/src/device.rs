//! Which device runs the model: with the `cuda` feature, the first GPU visible to this process (a backend picks
//! the GPU through `CUDA_VISIBLE_DEVICES`); otherwise, or when no GPU works, the CPU.

use candle_core::Device;

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

/// Parses `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(name: &str) -> crate::Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "auto" => Ok(default_device()),
        s if s == "cuda" || s.starts_with("cuda:") => {
            let ordinal: usize =
                s.strip_prefix("cuda:").unwrap_or("0").parse().map_err(|_| {
                    crate::ModelError::Invalid(format!("bad device '{s}': write cpu, cuda or cuda:N"))
                })?;
            Device::new_cuda(ordinal).map_err(|e| {
                crate::ModelError::Invalid(format!(
                    "cannot use {s}: {e} (build with `--features cuda` on a machine with an NVIDIA GPU)"
                ))
            })
        }
        other => {
            Err(crate::ModelError::Invalid(format!("unknown device '{other}': write cpu, cuda, cuda:N or auto")))
        }
    }
}
