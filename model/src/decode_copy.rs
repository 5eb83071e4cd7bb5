//! The copy of a weight matrix that detached decoding reads instead of the weight itself, built on first use.
//!
//! - In f32 on a CPU whose few-rows path is AVX-512 (`kernel_choice::active`): the weight packed tile by tile
//!   (packed_tiles.rs), for the row counts the few-rows kernel takes; batch-8 decoding gained 1.1-1.2x on Zen 4.
//!   It costs a second f32 copy of every projection and of the head (540 MB for SmolLM2-135M), made the first
//!   time a decode step needs it, so a decoder that never samples (the KL reference, scoring) never holds one.
//! - In bf16 (the sampling copy, `Decoder::set_sampling_precision`): every weight matrix rounded to bf16, packed on
//!   AVX-512 and row-major elsewhere (few_rows.rs reads it), half the bytes a step streams.
//!
//! A copy is of the weight as it was when built. After the weights change (an optimiser update, a loaded
//! checkpoint) the owner resets it (`Decoder::refresh_sampling_copy`), and the next decode step rebuilds it. A clone
//! of the owner shares the weights but has copies of its own, reset separately.

use std::sync::OnceLock;

use candle_core::{DType, Tensor};

use crate::device::{kernel_for, Kernel, Precision};
use crate::few_rows::Path;
use crate::linear::FEW_ROWS;
use crate::packed_tiles::PackedWeight;
use crate::Result;

/// The kernel a decode product of `rows` rows runs with on an f32 CPU decoder sampling in `precision`:
/// `packed_avx512`, a few-rows path's name (`few_rows::Path::as_str`), or `gemm`.
pub(crate) fn kernel_name(precision: Precision, rows: usize) -> &'static str {
    let choice = crate::kernel_choice::active().choice;
    let takes = match precision {
        Precision::F32 => choice.few_rows_takes(rows),
        Precision::Bf16 => rows <= FEW_ROWS,
    };
    match (takes, choice.few_rows_path) {
        (false, _) => "gemm",
        (true, Path::Avx512) => "packed_avx512",
        (true, path) => path.as_str(),
    }
}

/// What decoding reads for one weight matrix, in a precision; built on first use.
#[derive(Debug, Clone, Default)]
pub(crate) struct DecodeCopy {
    precision: Precision,
    built: OnceLock<Built>,
}

#[derive(Debug, Clone)]
enum Built {
    /// Packed tiles (AVX-512), f32 or bf16.
    Packed(PackedWeight),
    /// A row-major bf16 tensor (the active few-rows path is not AVX-512).
    RowMajor(Tensor),
    /// No copy: decoding reads the f32 weight itself (f32 off the AVX-512 path, or not on the CPU).
    Weight,
}

impl DecodeCopy {
    /// An empty copy in `precision`, built at the first product that needs it.
    pub(crate) fn new(precision: Precision) -> DecodeCopy {
        DecodeCopy { precision, built: OnceLock::new() }
    }

    /// `x W^T` for `x` `(rows, k)` from the copy of `weight` `(n, k)`, or `None` where the caller's f32 path on
    /// `weight` itself is the one to take (f32 outside the packed kernel's rows or off AVX-512). A bf16 copy
    /// multiplies more than [`FEW_ROWS`] rows (a prompt's prefill, compute-bound) with gemm on the widened copy.
    ///
    /// # Errors
    /// Building the copy or the product: `x` and `weight` disagreeing on `k`, or not on the CPU in f32.
    pub(crate) fn product(&self, weight: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        self.product_up_to(weight, x, FEW_ROWS)
    }

    /// [`DecodeCopy::product`] for the output head, which only ever sees one row per sequence: a bf16 copy takes
    /// the few-rows kernel at every batch size, so a row's logits do not depend on the batch.
    pub(crate) fn head_product(&self, weight: &Tensor, x: &Tensor) -> Result<Option<Tensor>> {
        self.product_up_to(weight, x, usize::MAX)
    }

    fn product_up_to(&self, weight: &Tensor, x: &Tensor, bf16_few_rows: usize) -> Result<Option<Tensor>> {
        let rows = x.dims2()?.0;
        let choice = crate::kernel_choice::active().choice;
        let f32_fast = choice.few_rows_takes(rows) && kernel_for(&[x, weight]) == Kernel::CpuFast;
        if self.precision == Precision::F32 && !f32_fast {
            return Ok(None);
        }
        let y = match self.built(weight)? {
            Built::Weight => return Ok(None),
            Built::Packed(packed) if self.precision == Precision::F32 || rows <= bf16_few_rows => {
                packed.matmul_t(x, Path::Avx512)?
            }
            Built::Packed(packed) => x.matmul(&packed.unpacked_f32()?.t()?)?,
            Built::RowMajor(copy) if rows <= bf16_few_rows => crate::few_rows::matmul_t(&x.contiguous()?, copy)?,
            Built::RowMajor(copy) => x.matmul(&copy.to_dtype(DType::F32)?.t()?)?,
        };
        Ok(Some(y))
    }

    /// Bytes of `weight` `(n, k)` a decode step streams in this copy's precision.
    pub(crate) fn bytes(&self, weight: &Tensor) -> usize {
        let per_value = match self.precision {
            Precision::F32 => weight.dtype().size_in_bytes(),
            copy => copy.dtype().size_in_bytes(),
        };
        weight.elem_count() * per_value
    }

    /// The copy of `weight`, built now if it is not yet.
    fn built(&self, weight: &Tensor) -> Result<&Built> {
        if let Some(built) = self.built.get() {
            return Ok(built);
        }
        let built = self.build(weight)?;
        // Another thread may have built it meanwhile, from the same weight: either copy is the same.
        Ok(self.built.get_or_init(|| built))
    }

    fn build(&self, weight: &Tensor) -> Result<Built> {
        // Not `kernel_for`: its test hook (`with_portable_kernels`) is per thread, and the copy outlives the call.
        let packs = crate::kernel_choice::active().choice.few_rows_path == Path::Avx512
            && weight.device().is_cpu()
            && weight.dtype() == DType::F32;
        Ok(match (self.precision, packs) {
            (Precision::F32, false) => Built::Weight,
            (precision, true) => Built::Packed(PackedWeight::pack(&weight.detach(), precision.dtype())?),
            (precision, false) => Built::RowMajor(weight.detach().to_dtype(precision.dtype())?),
        })
    }
}
