//! Which kernel decoding's matrix products use on this CPU: the few-rows path (AVX-512, AVX2 or portable) and the
//! most rows it takes before candle's gemm does better. Built-in defaults, or a choice measured once per CPU model
//! (`ideator bench calibrate`) and cached in a file.
//!
//! Why measured: issue 16 found that which kernel wins depends on the CPU, not on its flags alone. The few-rows
//! kernel beat gemm up to 16 rows on Zen 4 (family 25 model 17) and was behind from 24; on an Intel Xeon with AMX
//! (family 6 model 167) it was ahead at 24 and 32 rows too (109 against 128 ms a step at 32), and on a second one
//! (model 207) the packed AVX-512 kernel beat gemm at every row count up to 32 (80 against 114 ms at 32;
//! BENCHMARKS.md, 2026-12-06). A fixed threshold is right for one of them only, so the built-in choice already
//! differs for Intel cores with AMX ([`AMX_XEON_MAX_ROWS`]); a calibration overrides it.
//!
//! A choice changes speed, never the model: every path and gemm compute the same products up to float rounding, and
//! within the few-rows range a row gets the same bits whatever the batch (outside it gemm's rounding depends on the
//! batch's shape, as before). A calibration holds for the CPU model and the thread count it was measured on. The
//! cache is a cache: without an entry for this CPU and thread count the built-in choice applies, a broken or stale
//! file falls back to it with a warning, and `IDEATOR_KERNEL_CACHE=off` ignores the file (`scripts/test.sh` sets
//! it, so the suite does not depend on the machine's calibration).

use std::path::{Path as FsPath, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::few_rows::{Path, MAX_ROWS};
use crate::machine::CpuInfo;

/// Environment variable naming the cache file; `off`, `0` or empty disables the cache.
pub const CACHE_ENV: &str = "IDEATOR_KERNEL_CACHE";

/// Version of the cache file's layout; a file of another version is ignored (and rewritten by the next calibration).
const CACHE_VERSION: u32 = 1;

/// The largest row count a calibration may hand to the few-rows kernel: the decode batches `bench` and the configs
/// use go to 32, and past that products are compute-bound, gemm's ground.
pub const MAX_CALIBRATED_ROWS: usize = 64;

/// What decoding's products run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelChoice {
    /// The few-rows kernel's instruction-set path.
    pub few_rows_path: Path,
    /// Batches of `few_rows_min_rows` to `few_rows_max_rows` rows take the few-rows kernel, others candle's gemm
    /// (an empty range, min above max: always gemm). The lower end is 1 unless gemm's matrix-vector kernel won at
    /// the smallest batches.
    pub few_rows_min_rows: usize,
    pub few_rows_max_rows: usize,
}

/// Most rows the built-in choice hands the AVX-512 few-rows kernel on Intel cores with AMX (family 6 with
/// `amx_bf16`: Sapphire Rapids and later). Both such CPUs measured (models 167 and 207) ran it ahead of gemm at 24
/// and 32 rows; decoding at batch 24 / 32 on model 207 measured 1.26x / 1.10-1.15x against gemm (BENCHMARKS.md).
pub const AMX_XEON_MAX_ROWS: usize = 32;

impl KernelChoice {
    /// The choice without a calibration for this CPU: [`KernelChoice::built_in_for`] of the detected CPU and path.
    pub fn built_in() -> KernelChoice {
        KernelChoice::built_in_for(&CpuInfo::detect(), Path::detect())
    }

    /// The choice without a calibration on `cpu` with its widest path `path`: the few-rows kernel up to
    /// [`MAX_ROWS`] rows, or [`AMX_XEON_MAX_ROWS`] on an Intel core with AMX taking the AVX-512 path.
    pub fn built_in_for(cpu: &CpuInfo, path: Path) -> KernelChoice {
        let amx_xeon = cpu.family == Some(6) && cpu.vector_flags.iter().any(|f| f == "amx_bf16");
        let max_rows = if amx_xeon && path == Path::Avx512 { AMX_XEON_MAX_ROWS } else { MAX_ROWS };
        KernelChoice { few_rows_path: path, few_rows_min_rows: 1, few_rows_max_rows: max_rows }
    }

    /// Checks the choice can run here.
    ///
    /// # Errors
    /// A path this CPU lacks, or more rows than [`MAX_CALIBRATED_ROWS`].
    pub fn validate(&self) -> Result<(), String> {
        if !Path::available().contains(&self.few_rows_path) {
            return Err(format!("this CPU cannot run the few-rows {} path", self.few_rows_path.as_str()));
        }
        if self.few_rows_max_rows > MAX_CALIBRATED_ROWS || self.few_rows_min_rows == 0 {
            return Err(format!(
                "few_rows_min_rows {} and few_rows_max_rows {} must lie in 1..={MAX_CALIBRATED_ROWS}",
                self.few_rows_min_rows, self.few_rows_max_rows
            ));
        }
        Ok(())
    }

    /// Whether a decode product of `rows` rows takes the few-rows kernel.
    pub fn few_rows_takes(&self, rows: usize) -> bool {
        (self.few_rows_min_rows..=self.few_rows_max_rows).contains(&rows)
    }

    /// Which kernel a decode product of `rows` rows uses: the few-rows path's name, or `gemm`.
    pub fn kernel_for_rows(&self, rows: usize) -> &'static str {
        if self.few_rows_takes(rows) {
            self.few_rows_path.as_str()
        } else {
            "gemm"
        }
    }
}

/// One calibration point: a decode step's products at `rows` rows, in seconds per step (medians).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    pub rows: usize,
    /// The few-rows kernel per path, in the order measured.
    pub few_rows: Vec<(Path, f64)>,
    /// candle's product as decoding calls it past the few-rows limit (`W x^T`).
    pub gemm: f64,
}

/// Within this fraction of gemm's time the few-rows kernel counts as not slower: below the spread of repeated
/// timings, and the few-rows kernel keeps a row's bits whatever the batch, which gemm does not.
pub const TIE: f64 = 0.02;

/// The choice the timings support: the path fastest in total over the memory-bound batches (1 to [`MAX_ROWS`] rows,
/// or every count measured when none is that small), then the run of consecutive measured row counts where that
/// path is not slower than gemm (within [`TIE`]) that saves the most time in total. A run is trusted between its
/// measured ends and nothing is guessed above it (one loss ends it); one that starts at the smallest count measured
/// also covers the counts below it. `None` without timings.
pub fn choose(timings: &[Timing]) -> Option<KernelChoice> {
    let mut sorted: Vec<&Timing> = timings.iter().filter(|t| !t.few_rows.is_empty()).collect();
    sorted.sort_by_key(|t| t.rows);
    let paths: Vec<Path> = sorted.first()?.few_rows.iter().map(|(p, _)| *p).collect();
    let memory_bound = sorted[0].rows.max(MAX_ROWS);
    let total = |path: Path| -> f64 {
        let counts = sorted.iter().filter(|t| t.rows <= memory_bound);
        counts.map(|t| seconds_of(t, path).unwrap_or(f64::INFINITY)).sum()
    };
    let path = paths.iter().copied().min_by(|a, b| total(*a).total_cmp(&total(*b)))?;
    // The time each count saves with the few-rows kernel; `None` where it loses.
    let savings: Vec<Option<f64>> = sorted
        .iter()
        .map(|t| seconds_of(t, path).filter(|&s| s <= t.gemm * (1.0 + TIE)).map(|s| t.gemm - s))
        .collect();
    // (start, length, saving) of the best run of wins, in indices of `sorted`.
    let (mut best, mut run) = ((0, 0, f64::NEG_INFINITY), None::<(usize, f64)>);
    for (i, saving) in savings.iter().chain([&None]).enumerate() {
        match (saving, run) {
            (Some(x), None) => run = Some((i, *x)),
            (Some(x), Some((start, total))) => run = Some((start, total + x)),
            (None, Some((start, total))) => {
                if total > best.2 {
                    best = (start, i - start, total);
                }
                run = None;
            }
            (None, None) => {}
        }
    }
    let (min_rows, max_rows) = match best {
        (_, 0, _) => (1, 0),
        // A run that starts at the smallest measured count covers every smaller count too.
        (0, len, _) => (1, sorted[len - 1].rows),
        (start, len, _) => (sorted[start].rows, sorted[start + len - 1].rows),
    };
    Some(KernelChoice { few_rows_path: path, few_rows_min_rows: min_rows, few_rows_max_rows: max_rows })
}

fn seconds_of(t: &Timing, path: Path) -> Option<f64> {
    t.few_rows.iter().find(|(p, _)| *p == path).map(|(_, s)| *s)
}

/// One CPU's calibration, as the cache stores it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// [`CpuInfo::summary`] of the CPU measured: with `threads`, the cache's key.
    pub cpu: String,
    pub choice: KernelChoice,
    /// Threads the products ran on (the crossover with gemm moves with them).
    pub threads: usize,
    /// Seconds since the Unix epoch.
    pub measured_unix: u64,
    pub timings: Vec<Timing>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheFile {
    version: u32,
    calibrations: Vec<Calibration>,
}

/// Why a cache could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot read the kernel cache {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write the kernel cache {path}: {source} (set {CACHE_ENV} to a writable file, or to off)")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "the kernel cache {path} is of layout version {found}, this build reads {CACHE_VERSION}; `ideator bench \
         calibrate` replaces it"
    )]
    Stale { path: PathBuf, found: u64 },
    #[error(
        "the kernel cache {path} is not usable ({why}); delete it, or point {CACHE_ENV} at another file, and run \
         `ideator bench calibrate` again"
    )]
    Invalid { path: PathBuf, why: String },
}

/// The cache file: `$IDEATOR_KERNEL_CACHE`, else `$XDG_CACHE_HOME/ideator/kernels.json`, else
/// `$HOME/.cache/ideator/kernels.json`; `None` when disabled (`off`, `0` or empty) or without a home.
pub fn cache_path() -> Option<PathBuf> {
    match std::env::var_os(CACHE_ENV) {
        Some(v) if v.is_empty() || v.eq_ignore_ascii_case("off") || v == "0" => return None,
        Some(v) => return Some(PathBuf::from(v)),
        None => {}
    }
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").filter(|v| !v.is_empty())?).join(".cache"),
    };
    Some(base.join("ideator").join("kernels.json"))
}

/// The calibration stored for `cpu` at `threads` threads in the cache at `path`: `Ok(None)` when the file or the
/// entry is absent.
///
/// # Errors
/// An unreadable file, one that is not a cache of this version, or a stored choice this CPU cannot run.
pub fn load(path: &FsPath, cpu: &CpuInfo, threads: usize) -> Result<Option<Calibration>, CacheError> {
    let Some(file) = read_cache(path)? else { return Ok(None) };
    let key = cpu.summary();
    let Some(found) = file.calibrations.into_iter().find(|c| c.cpu == key && c.threads == threads) else {
        return Ok(None);
    };
    found.choice.validate().map_err(|why| CacheError::Invalid { path: path.into(), why })?;
    Ok(Some(found))
}

/// Stores `calibration` in the cache at `path`, replacing the entry of the same CPU and thread count and keeping the
/// others (a cache of another layout version is replaced whole). Written to a temporary file and renamed, so a
/// reader never sees half; two calibrations writing at the same moment keep one of the two entries.
///
/// # Errors
/// The folder or file cannot be written; an existing file that is not a cache is left alone and reported.
pub fn store(path: &FsPath, calibration: Calibration) -> Result<(), CacheError> {
    let mut file = cache_to_update(path)?;
    file.calibrations.retain(|c| c.cpu != calibration.cpu || c.threads != calibration.threads);
    file.calibrations.push(calibration);
    let write = |e| CacheError::Write { path: path.into(), source: e };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write)?;
    }
    let text = serde_json::to_string_pretty(&file).expect("a cache serialises");
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(write)
}

/// Checks that `store` could write the cache at `path` (absent, or a cache of any version), so that a calibration
/// is not measured only to be refused.
///
/// # Errors
/// As [`load`] for a file that is not a cache.
pub fn check_storable(path: &FsPath) -> Result<(), CacheError> {
    cache_to_update(path).map(drop)
}

/// The cache a calibration is added to: the file's, or an empty one when there is none or it is stale.
fn cache_to_update(path: &FsPath) -> Result<CacheFile, CacheError> {
    match read_cache(path) {
        Ok(Some(file)) => Ok(file),
        Ok(None) | Err(CacheError::Stale { .. }) => {
            Ok(CacheFile { version: CACHE_VERSION, calibrations: Vec::new() })
        }
        Err(e) => Err(e),
    }
}

fn read_cache(path: &FsPath) -> Result<Option<CacheFile>, CacheError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Read { path: path.into(), source }),
    };
    let invalid = |why: String| CacheError::Invalid { path: path.into(), why };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| invalid(e.to_string()))?;
    // Stale only when it is recognisably a cache of another layout; any other JSON is someone else's file.
    match (value.get("version").and_then(|v| v.as_u64()), value.get("calibrations")) {
        (Some(v), Some(_)) if v == u64::from(CACHE_VERSION) => {}
        (Some(found), Some(_)) => return Err(CacheError::Stale { path: path.into(), found }),
        _ => return Err(invalid("no `version` and `calibrations` fields".into())),
    }
    serde_json::from_value(value).map(Some).map_err(|e| invalid(e.to_string()))
}

/// The thread count calibrations are keyed by: rayon's pool, which the products run on.
pub fn threads() -> usize {
    rayon::current_num_threads()
}

/// Where the active choice came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// No usable calibration for this CPU (none run, the cache disabled, or a stale or broken cache).
    BuiltIn,
    /// A calibration in this cache file.
    Calibrated(PathBuf),
}

/// The choice this process decodes with, and its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Active {
    pub choice: KernelChoice,
    pub source: Source,
}

impl Active {
    /// One line for `bench` and logs, e.g. "few-rows avx2 for 1 to 24 rows, gemm otherwise (calibrated ...)".
    pub fn summary(&self) -> String {
        let source = match &self.source {
            Source::BuiltIn => "built-in default; `ideator bench calibrate` measures this CPU".to_string(),
            Source::Calibrated(path) => format!("calibrated for this CPU, {}", path.display()),
        };
        let c = &self.choice;
        if c.few_rows_min_rows > c.few_rows_max_rows {
            return format!("gemm for every batch ({source})");
        }
        format!(
            "few-rows {} for {} to {} rows, gemm otherwise ({source})",
            c.few_rows_path.as_str(),
            c.few_rows_min_rows,
            c.few_rows_max_rows
        )
    }
}

/// The choice of this process: read once, at the first decode product, from the cache for this CPU and the tensor
/// threads (rayon's pool) of that moment.
pub fn active() -> &'static Active {
    static ACTIVE: OnceLock<Active> = OnceLock::new();
    ACTIVE.get_or_init(|| {
        let cpu = CpuInfo::detect();
        let built_in = Active { choice: KernelChoice::built_in_for(&cpu, Path::detect()), source: Source::BuiltIn };
        let Some(path) = cache_path() else { return built_in };
        match load(&path, &cpu, threads()) {
            Ok(Some(c)) => Active { choice: c.choice, source: Source::Calibrated(path) },
            Ok(None) => built_in,
            Err(e) => {
                tracing::warn!("{e}; decoding uses the built-in kernel choice");
                built_in
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing(rows: usize, few: &[(Path, f64)], gemm: f64) -> Timing {
        Timing { rows, few_rows: few.to_vec(), gemm }
    }

    fn cpu_with(family: u32, flags: &str) -> CpuInfo {
        CpuInfo::parse(&format!("model name\t: test CPU\ncpu family\t: {family}\nmodel\t\t: 1\nflags\t\t: {flags}\n"))
    }

    #[test]
    fn built_in_choice_gives_amx_xeons_32_rows_and_every_other_cpu_16() {
        let xeon = cpu_with(6, "fpu avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile");
        let zen4 = cpu_with(25, "fpu avx2 fma avx512f avx512_bf16");
        let older_intel = cpu_with(6, "fpu avx2 fma avx512f");
        assert_eq!(KernelChoice::built_in_for(&xeon, Path::Avx512).few_rows_max_rows, AMX_XEON_MAX_ROWS);
        assert_eq!(KernelChoice::built_in_for(&zen4, Path::Avx512).few_rows_max_rows, MAX_ROWS);
        assert_eq!(KernelChoice::built_in_for(&older_intel, Path::Avx512).few_rows_max_rows, MAX_ROWS);
        // Only the AVX-512 kernel was measured there: another path keeps the common limit.
        assert_eq!(KernelChoice::built_in_for(&xeon, Path::Avx2).few_rows_max_rows, MAX_ROWS);
        for c in [&xeon, &zen4, &older_intel] {
            let choice = KernelChoice::built_in_for(c, Path::Portable);
            assert_eq!((choice.few_rows_path, choice.few_rows_min_rows), (Path::Portable, 1));
            assert!(choice.validate().is_ok());
        }
    }

    #[test]
    fn choose_takes_the_fastest_path_and_the_prefix_where_it_beats_gemm() {
        use Path::{Avx2, Avx512};
        let timings = vec![
            timing(32, &[(Avx512, 0.13), (Avx2, 0.12)], 0.125),
            timing(1, &[(Avx512, 0.030), (Avx2, 0.035)], 0.044),
            timing(8, &[(Avx512, 0.045), (Avx2, 0.050)], 0.110),
            timing(16, &[(Avx512, 0.080), (Avx2, 0.090)], 0.100),
            timing(24, &[(Avx512, 0.100), (Avx2, 0.105)], 0.110),
        ];
        // AVX-512 wins in total over 1-16 rows; it beats gemm up to 24, loses at 32 (AVX2 would win there, but
        // one path serves every batch).
        let want = KernelChoice { few_rows_path: Avx512, few_rows_min_rows: 1, few_rows_max_rows: 24 };
        assert_eq!(choose(&timings), Some(want));
    }

    #[test]
    fn the_longest_run_of_wins_sets_the_range_and_no_win_means_gemm_always() {
        use Path::Portable;
        let range = |t: &[Timing]| choose(t).map(|c| (c.few_rows_min_rows, c.few_rows_max_rows));
        let at = |rows: usize, few: f64| timing(rows, &[(Portable, few)], 2.0);
        // gemm's matrix-vector kernel wins at one row; few-rows from 2 to 24, then gemm again.
        let middle = vec![at(1, 3.0), at(2, 1.0), at(8, 1.0), at(24, 1.0), at(32, 3.0)];
        assert_eq!(range(&middle), Some((2, 24)));
        // One loss ends a run; the run that saves the most time wins, not the one with the most counts (a noisy
        // loss at 8 rows must not hand 1-2 rows to gemm when they save the most).
        let small_save_most = [at(1, 0.5), at(2, 0.5), at(8, 3.0), at(16, 1.9), at(24, 1.9), at(32, 1.9)];
        assert_eq!(range(&small_save_most), Some((1, 2)));
        assert_eq!(range(&[at(1, 1.5), at(8, 3.0), at(16, 1.0), at(24, 1.0)]), Some((16, 24)));
        // Within TIE of gemm counts as a win.
        assert_eq!(range(&[at(1, 1.0), at(8, 2.0 * (1.0 + TIE / 2.0))]), Some((1, 8)));
        assert_eq!(range(&[at(1, 1.0), at(8, 2.0 * (1.0 + 2.0 * TIE))]), Some((1, 1)));
        let never = choose(&[at(1, 3.0), at(8, 3.0)]).unwrap();
        assert_eq!((never.few_rows_min_rows, never.few_rows_max_rows), (1, 0));
        assert!(!never.few_rows_takes(1) && !never.few_rows_takes(8));
        assert_eq!(choose(&[]), None);
    }

    #[test]
    fn kernel_for_rows_names_the_path_then_gemm() {
        let c = KernelChoice { few_rows_path: Path::Portable, few_rows_min_rows: 2, few_rows_max_rows: 24 };
        assert_eq!(c.kernel_for_rows(1), "gemm");
        assert_eq!(c.kernel_for_rows(2), "portable");
        assert_eq!(c.kernel_for_rows(24), "portable");
        assert_eq!(c.kernel_for_rows(25), "gemm");
        let never = KernelChoice { few_rows_max_rows: 0, ..c };
        assert_eq!(never.kernel_for_rows(2), "gemm");
    }

    fn calibration(cpu: &CpuInfo, max_rows: usize) -> Calibration {
        Calibration {
            cpu: cpu.summary(),
            choice: KernelChoice { few_rows_path: Path::Portable, few_rows_min_rows: 1, few_rows_max_rows: max_rows },
            threads: 1,
            measured_unix: 1,
            timings: vec![timing(1, &[(Path::Portable, 0.5)], 0.6)],
        }
    }

    fn cpu(model: u32) -> CpuInfo {
        CpuInfo::parse(&format!("model name\t: Test CPU\ncpu family\t: 25\nmodel\t\t: {model}\nflags\t\t: fpu\n"))
    }

    #[test]
    fn the_cache_keeps_one_entry_per_cpu_and_finds_this_cpu_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("kernels.json");
        assert!(load(&path, &cpu(17), 1).unwrap().is_none(), "no file yet");
        store(&path, calibration(&cpu(17), 24)).unwrap();
        store(&path, calibration(&cpu(1), 8)).unwrap();
        store(&path, calibration(&cpu(17), 32)).unwrap(); // a re-calibration replaces its CPU's entry
        assert_eq!(load(&path, &cpu(17), 1).unwrap().unwrap().choice.few_rows_max_rows, 32);
        assert_eq!(load(&path, &cpu(1), 1).unwrap().unwrap().choice.few_rows_max_rows, 8);
        assert!(load(&path, &cpu(2), 1).unwrap().is_none(), "another CPU model has no entry");
        assert!(load(&path, &cpu(17), 2).unwrap().is_none(), "nor another thread count");
        let mut two_threads = calibration(&cpu(17), 12);
        two_threads.threads = 2;
        store(&path, two_threads).unwrap();
        assert_eq!(load(&path, &cpu(17), 2).unwrap().unwrap().choice.few_rows_max_rows, 12);
        assert_eq!(load(&path, &cpu(17), 1).unwrap().unwrap().choice.few_rows_max_rows, 32);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.matches("\"cpu\"").count(), 3);
    }

    #[test]
    fn a_broken_or_foreign_cache_is_reported_and_never_overwritten_unless_stale() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kernels.json");
        std::fs::write(&path, "not json").unwrap();
        let err = load(&path, &cpu(17), 1).unwrap_err().to_string();
        assert!(err.contains("kernels.json") && err.contains("bench calibrate"), "{err}");
        assert!(store(&path, calibration(&cpu(17), 8)).is_err(), "a file that is not a cache is left alone");
        assert!(check_storable(&path).is_err());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "not json");
        std::fs::write(&path, "{}").unwrap();
        assert!(store(&path, calibration(&cpu(17), 8)).is_err(), "nor is JSON without the cache's fields");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}");

        // A cache of another layout version is stale: reported on load, replaced by the next calibration.
        std::fs::write(&path, r#"{"version": 0, "calibrations": []}"#).unwrap();
        assert!(check_storable(&path).is_ok());
        assert!(load(&path, &cpu(17), 1).is_err());
        store(&path, calibration(&cpu(17), 8)).unwrap();
        assert_eq!(load(&path, &cpu(17), 1).unwrap().unwrap().choice.few_rows_max_rows, 8);

        // A stored choice this build cannot run (more rows than allowed) is refused, not used.
        store(&path, calibration(&cpu(17), MAX_CALIBRATED_ROWS + 1)).unwrap();
        let err = load(&path, &cpu(17), 1).unwrap_err().to_string();
        assert!(err.contains("few_rows_max_rows"), "{err}");
        let mut zero_min = calibration(&cpu(17), 8);
        zero_min.choice.few_rows_min_rows = 0;
        store(&path, zero_min).unwrap();
        assert!(load(&path, &cpu(17), 1).is_err(), "0 rows is not a batch");
    }
}
