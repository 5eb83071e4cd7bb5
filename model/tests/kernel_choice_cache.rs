//! The kernel cache end to end: a calibration stored for this CPU is what the decode products then use. One test
//! in its own binary, because the choice is read once per process (from `IDEATOR_KERNEL_CACHE`, set here first).

use candle_core::{Device, Tensor};
use ideator_model::few_rows::{self, Path};
use ideator_model::kernel_choice::{self, Calibration, KernelChoice, Source, Timing};
use ideator_model::machine::CpuInfo;

#[test]
fn a_calibration_for_this_cpu_sets_the_rows_the_few_rows_kernel_takes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kernels.json");
    // A choice unlike the built-in one on every CPU: the portable path, for 2 to 24 rows.
    let choice = KernelChoice { few_rows_path: Path::Portable, few_rows_min_rows: 2, few_rows_max_rows: 24 };
    let timing = Timing { rows: 24, few_rows: vec![(Path::Portable, 0.1)], gemm: 0.2 };
    // Keyed by the CPU and the thread count decoding will run with.
    let (cpu, threads) = (CpuInfo::detect().summary(), kernel_choice::threads());
    let calibration = Calibration { cpu, choice, threads, measured_unix: 0, timings: vec![timing] };
    kernel_choice::store(&path, calibration).unwrap();
    std::env::set_var(kernel_choice::CACHE_ENV, &path);

    let active = kernel_choice::active();
    assert_eq!(active.choice, choice);
    assert_eq!(active.source, Source::Calibrated(path.clone()));
    assert!(active.summary().contains("portable for 2 to 24 rows"), "{}", active.summary());

    let w = Tensor::randn(0f32, 1.0, (40, 64), &Device::Cpu).unwrap();
    let rows = |m: usize| Tensor::randn(0f32, 1.0, (m, 64), &Device::Cpu).unwrap();
    assert!(few_rows::applies(&rows(24), &w), "24 rows are within the calibrated range (built-in: 1 to 16)");
    assert!(!few_rows::applies(&rows(25), &w));
    assert!(!few_rows::applies(&rows(1), &w), "one row is below it");
}
