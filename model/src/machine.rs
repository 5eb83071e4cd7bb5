//! Facts about the machine that bound what the CPU decode path can reach: the CPU's identity, its measured memory
//! read bandwidth and matrix-product rate, and the limits they imply (a roofline).
//!
//! Decoding a batch of `b` rows reads every weight matrix at least once per step (exactly once in the few-rows
//! kernel's row range, [`crate::kernel_choice`]), so a step cannot take less than `weight bytes / read bandwidth`,
//! and `b` new tokens per step give at most `b * bandwidth / weight bytes` new tokens per second. Each row also costs
//! one multiply-add (2 FLOPs) per weight, so a step cannot take less than `2 * weights * b / FLOP rate` either:
//! small batches are bound by memory, large ones by compute. `ideator bench` prints both limits next to what it
//! measured.

use std::time::Instant;

use rayon::prelude::*;

/// The CPU as `/proc/cpuinfo` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuInfo {
    /// `model name`, e.g. "AMD EPYC 9B14 96-Core Processor"; "unknown CPU (no /proc/cpuinfo)" elsewhere.
    pub model_name: String,
    /// `cpu family` (x86: 25 is AMD Zen 3/4, 6 is most Intel cores); `None` when not reported.
    pub family: Option<u32>,
    /// `model` within the family (AMD family 25: 17 is Zen 4 "Genoa"; Intel family 6: 143 is Sapphire Rapids).
    pub model: Option<u32>,
    /// The vector extensions the decode kernels care about that this CPU has (`avx2`, `fma`, `avx512f`, ...).
    pub vector_flags: Vec<String>,
}

/// The flags [`CpuInfo::vector_flags`] reports, when present.
const VECTOR_FLAGS: [&str; 6] = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16"];

impl CpuInfo {
    /// Reads `/proc/cpuinfo`; on a system without it, a clearly unknown CPU (never an error: it is only printed).
    pub fn detect() -> CpuInfo {
        match std::fs::read_to_string("/proc/cpuinfo") {
            Ok(text) => CpuInfo::parse(&text),
            Err(_) => CpuInfo::parse(""),
        }
    }

    /// The first processor's entries of a `/proc/cpuinfo` text.
    pub fn parse(text: &str) -> CpuInfo {
        let field = |name: &str| {
            text.lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().to_string())
        };
        let flags = field("flags").unwrap_or_default();
        let flags: Vec<&str> = flags.split_whitespace().collect();
        CpuInfo {
            model_name: field("model name").unwrap_or_else(|| "unknown CPU (no model name in /proc/cpuinfo)".into()),
            family: field("cpu family").and_then(|v| v.parse().ok()),
            model: field("model").and_then(|v| v.parse().ok()),
            vector_flags: VECTOR_FLAGS.iter().filter(|f| flags.contains(f)).map(|f| f.to_string()).collect(),
        }
    }

    /// One line: name, family, model and flags.
    pub fn summary(&self) -> String {
        let num = |v: Option<u32>| v.map_or("?".to_string(), |v| v.to_string());
        format!(
            "{} (family {}, model {}; {})",
            self.model_name,
            num(self.family),
            num(self.model),
            if self.vector_flags.is_empty() { "no AVX2".to_string() } else { self.vector_flags.join(" ") }
        )
    }
}

/// A measured streaming read bandwidth.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bandwidth {
    /// Threads that read (each its own contiguous share of the buffer).
    pub threads: usize,
    /// Bytes read per pass.
    pub bytes: usize,
    /// Best pass, in GB/s (1e9 bytes per second).
    pub gb_per_s: f64,
}

/// Measures the read bandwidth from memory: a buffer of `bytes` (make it far larger than the last-level cache; 1 GiB
/// is safe) is summed `passes` times by `threads` threads, each over its own contiguous share; the best pass counts
/// (the others lost time to other processes). The buffer is written once first so its pages exist.
///
/// Takes about `passes * bytes / bandwidth` plus the first touch (1 GiB: about half a second per pass).
pub fn read_bandwidth(bytes: usize, threads: usize, passes: usize) -> Bandwidth {
    let threads = threads.max(1);
    let floats = (bytes / 4).max(threads * 64);
    let buf: Vec<f32> = (0..floats).map(|i| (i % 7) as f32).collect();
    let share = floats.div_ceil(threads);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build();
    let mut best = f64::INFINITY;
    let mut checksum = 0f32;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        let sum: f32 = match &pool {
            Ok(pool) => pool.install(|| buf.par_chunks(share).map(sum_stream).sum()),
            Err(_) => buf.chunks(share).map(sum_stream).sum(),
        };
        best = best.min(t0.elapsed().as_secs_f64());
        checksum += sum;
    }
    // Keeps the sums observable so the reads cannot be optimised away.
    std::hint::black_box(checksum);
    Bandwidth { threads, bytes: floats * 4, gb_per_s: (floats * 4) as f64 / best / 1e9 }
}

/// Sums a slice with 64 independent lanes, so the compiler vectorises the loop and the adds never wait on each
/// other: the loop is bound by the memory reads alone.
fn sum_stream(xs: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above); the function only reads `xs`.
            return unsafe { sum_stream_avx2(xs) };
        }
    }
    sum_lanes(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_stream_avx2(xs: &[f32]) -> f32 {
    sum_lanes(xs)
}

#[inline(always)]
fn sum_lanes(xs: &[f32]) -> f32 {
    let mut lanes = [0f32; 64];
    let chunks = xs.chunks_exact(64);
    let tail: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The weight-streaming limit of decoding: each step reads `weight_bytes` at `gb_per_s`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamingLimit {
    /// Bytes of weights read per decode step (every matrix of every layer, plus the output head once).
    pub weight_bytes: usize,
    /// Read bandwidth, GB/s.
    pub gb_per_s: f64,
}

impl StreamingLimit {
    /// Most decode steps per second: `gb_per_s * 1e9 / weight_bytes`.
    pub fn max_steps_per_s(&self) -> f64 {
        self.gb_per_s * 1e9 / self.weight_bytes as f64
    }

    /// Most new tokens per second at `batch` rows (one token per row per step).
    pub fn max_tokens_per_s(&self, batch: usize) -> f64 {
        self.max_steps_per_s() * batch as f64
    }

    /// The share of the limit a measured `tokens_per_s` at `batch` reaches (1.0 = at the limit).
    pub fn fraction(&self, tokens_per_s: f64, batch: usize) -> f64 {
        tokens_per_s / self.max_tokens_per_s(batch)
    }

    /// The bandwidth the weights were effectively streamed at, in GB/s, at a measured `tokens_per_s`.
    pub fn effective_gb_per_s(&self, tokens_per_s: f64, batch: usize) -> f64 {
        tokens_per_s / batch as f64 * self.weight_bytes as f64 / 1e9
    }
}

/// Measures the f32 matrix-product rate in GFLOP/s (1e9 FLOPs per second, a multiply-add counting 2): the best of
/// `passes` products of two `size x size` matrices with candle's CPU kernel, on the threads it is configured with
/// (`RAYON_NUM_THREADS`). `size` 1024 is compute-bound on any current CPU (about 2 GFLOP per pass).
///
/// # Errors
/// The tensor errors of candle.
pub fn matmul_gflop_per_s(size: usize, passes: usize) -> candle_core::Result<f64> {
    use candle_core::{Device, Tensor};
    let a = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    let b = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    std::hint::black_box(a.matmul(&b)?); // warm-up: thread pool and caches
    let mut best = f64::INFINITY;
    for _ in 0..passes.max(1) {
        let t0 = Instant::now();
        std::hint::black_box(a.matmul(&b)?);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(2.0 * (size as f64).powi(3) / best / 1e9)
}

/// Which resource bounds a decode step at a batch size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    /// Streaming the weights from memory takes longer than the products.
    Memory,
    /// The products take longer than streaming the weights.
    Compute,
}

/// The roofline of decoding: the weight-streaming limit and the compute limit of `weights` multiply-adds per row
/// and step at `gflop_per_s`; the lower of the two bounds each batch size. Attention over the cache is left out
/// (at the prompt lengths of an ideator it is a few percent of the products).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Roofline {
    pub streaming: StreamingLimit,
    /// Weights multiplied per row per step (every matrix of every layer, plus the output head once).
    pub weights: usize,
    /// Matrix-product rate, GFLOP/s.
    pub gflop_per_s: f64,
}

impl Roofline {
    /// Most decode steps per second at `batch` rows: the lower of `bandwidth / weight bytes` and
    /// `FLOP rate / (2 * weights * batch)`.
    pub fn max_steps_per_s(&self, batch: usize) -> f64 {
        self.streaming.max_steps_per_s().min(self.compute_steps_per_s(batch))
    }

    fn compute_steps_per_s(&self, batch: usize) -> f64 {
        self.gflop_per_s * 1e9 / (2.0 * self.weights as f64 * batch.max(1) as f64)
    }

    /// Most new tokens per second at `batch` rows.
    pub fn max_tokens_per_s(&self, batch: usize) -> f64 {
        self.max_steps_per_s(batch) * batch as f64
    }

    /// What bounds a step at `batch` rows.
    pub fn bound(&self, batch: usize) -> Bound {
        if self.compute_steps_per_s(batch) < self.streaming.max_steps_per_s() {
            Bound::Compute
        } else {
            Bound::Memory
        }
    }

    /// The share of the roofline a measured `tokens_per_s` at `batch` reaches (1.0 = at the limit).
    pub fn fraction(&self, tokens_per_s: f64, batch: usize) -> f64 {
        tokens_per_s / self.max_tokens_per_s(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_bandwidth_over_weight_bytes_times_the_batch() {
        // The figures: 540 MB of f32 weights at 24 GB/s.
        let limit = StreamingLimit { weight_bytes: 540_000_000, gb_per_s: 24.0 };
        assert!((limit.max_steps_per_s() - 44.444).abs() < 1e-3);
        assert!((limit.max_tokens_per_s(8) - 355.555).abs() < 1e-3);
        assert!((limit.max_tokens_per_s(1) - limit.max_steps_per_s()).abs() < 1e-12);
        // 71.1 tok/s at batch 8 is a fifth of the limit, streamed at 4.8 GB/s.
        assert!((limit.fraction(71.111, 8) - 0.2).abs() < 1e-4);
        assert!((limit.effective_gb_per_s(71.111, 8) - 4.8).abs() < 1e-3);
        // Halving the bytes (bf16) doubles the limit.
        let bf16 = StreamingLimit { weight_bytes: 270_000_000, ..limit };
        assert!((bf16.max_tokens_per_s(8) / limit.max_tokens_per_s(8) - 2.0).abs() < 1e-12);
    }

    #[test]
    fn cpuinfo_gives_name_family_model_and_the_vector_flags() {
        let text = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n\
                    model name\t: AMD EPYC 9B14 96-Core Processor\nflags\t\t: fpu sse avx2 fma avx512f avx512_bf16\n\
                    \nprocessor\t: 1\nmodel name\t: other\n";
        let cpu = CpuInfo::parse(text);
        assert_eq!(cpu.model_name, "AMD EPYC 9B14 96-Core Processor");
        assert_eq!((cpu.family, cpu.model), (Some(25), Some(17)));
        assert_eq!(cpu.vector_flags, vec!["avx2", "fma", "avx512f", "avx512_bf16"]);
        assert_eq!(
            cpu.summary(),
            "AMD EPYC 9B14 96-Core Processor (family 25, model 17; avx2 fma avx512f avx512_bf16)"
        );
        let none = CpuInfo::parse("");
        assert!(none.model_name.contains("unknown CPU"), "{}", none.model_name);
        assert_eq!((none.family, none.model), (None, None));
        assert!(none.summary().contains("family ?, model ?; no AVX2"), "{}", none.summary());
    }

    #[test]
    fn the_bandwidth_probe_reads_the_whole_buffer_and_gives_a_finite_rate() {
        // Small buffer: this checks the accounting, not the machine.
        let bw = read_bandwidth(1 << 20, 2, 2);
        assert_eq!((bw.threads, bw.bytes), (2, 1 << 20));
        assert!(bw.gb_per_s.is_finite() && bw.gb_per_s > 0.0, "{bw:?}");
        assert_eq!(sum_stream(&(0..1000).map(|i| i as f32).collect::<Vec<_>>()), 499_500.0);
    }

    #[test]
    fn the_roofline_is_memory_bound_for_few_rows_and_compute_bound_for_many() {
        // 135M f32 weights (540 MB) at 24 GB/s: 44.4 steps/s from memory. At 100 GFLOP/s one row costs
        // 0.27 GFLOP, so compute allows 370 steps/s at batch 1 and 11.6 at batch 32; they cross near batch 8.3.
        let streaming = StreamingLimit { weight_bytes: 540_000_000, gb_per_s: 24.0 };
        let roof = Roofline { streaming, weights: 135_000_000, gflop_per_s: 100.0 };
        assert_eq!(
            (roof.bound(1), roof.bound(8), roof.bound(9), roof.bound(32)),
            (Bound::Memory, Bound::Memory, Bound::Compute, Bound::Compute)
        );
        assert!((roof.max_steps_per_s(1) - streaming.max_steps_per_s()).abs() < 1e-12);
        assert!((roof.max_tokens_per_s(32) - 100e9 / 2.7e8).abs() < 1e-6, "{}", roof.max_tokens_per_s(32));
        assert!((roof.fraction(roof.max_tokens_per_s(32) / 2.0, 32) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn the_matmul_probe_gives_a_finite_rate() {
        let rate = matmul_gflop_per_s(64, 2).unwrap();
        assert!(rate.is_finite() && rate > 0.0, "{rate}");
    }
}
