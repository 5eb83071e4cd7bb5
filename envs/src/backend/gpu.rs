//! GPUs of this machine, for the local backend's slots. With the `cuda` feature they are discovered through the
//! CUDA driver (cudarc) with their free memory; without it, discovery reports that it is unavailable and a config
//! must list GPU ids itself.

use serde::{Deserialize, Serialize};

/// One GPU as the driver reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct GpuInfo {
    /// Ordinal, as `CUDA_VISIBLE_DEVICES` takes it.
    pub id: u32,
    pub name: String,
    pub free_bytes: u64,
    pub total_bytes: u64,
}

/// The GPUs visible to this process.
#[cfg(feature = "cuda")]
pub(crate) fn discover() -> Result<Vec<GpuInfo>, String> {
    use cudarc::driver::CudaContext;
    let count = CudaContext::device_count().map_err(|e| format!("cannot count CUDA devices: {e}"))?;
    let mut gpus = Vec::new();
    for i in 0..count.max(0) as usize {
        let ctx = CudaContext::new(i).map_err(|e| format!("cannot open CUDA device {i}: {e}"))?;
        let (free, total) = ctx.mem_get_info().map_err(|e| format!("cannot read memory of CUDA device {i}: {e}"))?;
        gpus.push(GpuInfo {
            id: i as u32,
            name: ctx.name().unwrap_or_else(|_| "unknown".into()),
            free_bytes: free as u64,
            total_bytes: total as u64,
        });
    }
    Ok(gpus)
}

/// The GPUs visible to this process (this build has no CUDA support).
#[cfg(not(feature = "cuda"))]
pub(crate) fn discover() -> Result<Vec<GpuInfo>, String> {
    Err("GPU discovery needs a build with the `cuda` feature; list the GPU ids in the config instead".into())
}

/// How many runs fit on a GPU given the memory each needs (at least one).
pub(crate) fn runs_that_fit(gpu: &GpuInfo, memory_per_run_bytes: u64) -> usize {
    if memory_per_run_bytes == 0 {
        return 1;
    }
    ((gpu.free_bytes / memory_per_run_bytes) as usize).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_gpu_holds_several_runs() {
        let g = GpuInfo { id: 0, name: "x".into(), free_bytes: 140 << 30, total_bytes: 141 << 30 };
        assert_eq!(runs_that_fit(&g, 30 << 30), 4);
        assert_eq!(runs_that_fit(&g, 200 << 30), 1, "at least one");
        assert_eq!(runs_that_fit(&g, 0), 1);
    }
}
