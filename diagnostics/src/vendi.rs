//! Diversity of a batch in embedding space: the Vendi score and the mean pairwise cosine similarity.
//!
//! Vendi score (Friedman & Dieng 2023): with K_ij = cos(e_i, e_j) and lambda the eigenvalues of K/n,
//! `exp(-sum lambda_i ln lambda_i)` — the exponential of the Shannon entropy of the spectrum, read as the effective
//! number of distinct ideas: 1 when all are the same, n when they are mutually orthogonal. K = X X^T for the
//! row-normalised embedding matrix X (n x d), and X^T X (d x d) has the same non-zero eigenvalues, so the smaller
//! of the two is decomposed: batches larger than the embedding width cost O(d^3), not O(n^3).

use nalgebra::{DMatrix, SymmetricEigen};

use crate::error::{DiagnosticsError, Result};

/// The Vendi score of a batch of embeddings (any length, normalised here; zero vectors are rejected).
pub fn vendi_score(embeddings: &[Vec<f32>]) -> Result<f64> {
    let x = unit_rows(embeddings)?;
    let n = x.nrows() as f64;
    // The smaller Gram matrix; both have the same non-zero spectrum.
    let gram = if x.nrows() <= x.ncols() { &x * x.transpose() } else { x.transpose() * &x };
    let eigen = SymmetricEigen::new(gram / n);
    let entropy: f64 = eigen
        .eigenvalues
        .iter()
        // Round-off leaves tiny negative or zero eigenvalues; 0 ln 0 = 0.
        .filter(|&&l| l > 0.0)
        .map(|&l| -l * l.ln())
        .sum();
    Ok(entropy.exp())
}

/// Mean cosine similarity over all pairs i < j; `None` for fewer than two embeddings.
pub fn mean_pairwise_cosine(embeddings: &[Vec<f32>]) -> Result<Option<f64>> {
    let x = unit_rows(embeddings)?;
    let n = x.nrows();
    if n < 2 {
        return Ok(None);
    }
    // sum_{i<j} cos = (|sum_i x_i|^2 - n) / 2 for unit rows.
    let total = x.row_sum();
    let pairs = (n * (n - 1) / 2) as f64;
    Ok(Some((total.norm_squared() - n as f64) / 2.0 / pairs))
}

/// The embeddings as an n x d matrix of unit rows, in f64.
fn unit_rows(embeddings: &[Vec<f32>]) -> Result<DMatrix<f64>> {
    let Some(first) = embeddings.first() else {
        return Err(DiagnosticsError::Invalid("no embeddings given; a batch needs at least one idea".into()));
    };
    let d = first.len();
    if d == 0 {
        return Err(DiagnosticsError::Invalid("embeddings have length 0".into()));
    }
    let mut x = DMatrix::<f64>::zeros(embeddings.len(), d);
    for (i, e) in embeddings.iter().enumerate() {
        if e.len() != d {
            return Err(DiagnosticsError::Invalid(format!(
                "embedding {i} has length {}, the first has {d}",
                e.len()
            )));
        }
        let norm = e.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(DiagnosticsError::Invalid(format!(
                "embedding {i} has norm {norm}; cosine similarity needs finite, non-zero vectors"
            )));
        }
        for (j, &v) in e.iter().enumerate() {
            x[(i, j)] = f64::from(v) / norm;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(n: usize, d: usize, i: usize) -> Vec<f32> {
        assert!(n <= d);
        let mut v = vec![0.0; d];
        v[i] = 1.0;
        v
    }

    #[test]
    fn identical_vectors_score_one() {
        let v = vec![0.3f32, -1.2, 0.5, 2.0];
        let batch = vec![v.clone(); 7];
        assert!((vendi_score(&batch).unwrap() - 1.0).abs() < 1e-9);
        assert!((mean_pairwise_cosine(&batch).unwrap().unwrap() - 1.0).abs() < 1e-12);
        // Scaling does not matter: cosine.
        let scaled: Vec<Vec<f32>> = (1..=5).map(|s| v.iter().map(|x| x * s as f32).collect()).collect();
        assert!((vendi_score(&scaled).unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn orthogonal_vectors_score_n() {
        for n in [1, 2, 5, 16] {
            let batch: Vec<Vec<f32>> = (0..n).map(|i| basis(n, 16, i)).collect();
            assert!((vendi_score(&batch).unwrap() - n as f64).abs() < 1e-9, "n={n}");
        }
        let batch: Vec<Vec<f32>> = (0..4).map(|i| basis(4, 8, i)).collect();
        assert!(mean_pairwise_cosine(&batch).unwrap().unwrap().abs() < 1e-12);
    }

    /// Two vectors at cosine c: K/2 has eigenvalues (1 +- c)/2, so Vendi = exp(H((1+c)/2, (1-c)/2)).
    #[test]
    fn two_vectors_closed_form() {
        for c in [0.0f64, 0.3, 0.8, -0.5] {
            let s = (1.0 - c * c).sqrt();
            let batch = vec![vec![1.0f32, 0.0], vec![c as f32, s as f32]];
            let (a, b) = ((1.0 + c) / 2.0, (1.0 - c) / 2.0);
            let want = (-(a * a.ln()) - if b > 0.0 { b * b.ln() } else { 0.0 }).exp();
            assert!((vendi_score(&batch).unwrap() - want).abs() < 1e-6, "c={c}");
            assert!((mean_pairwise_cosine(&batch).unwrap().unwrap() - c).abs() < 1e-6);
        }
    }

    /// Two clusters of identical vectors (sizes m and n-m, orthogonal between clusters): K/n has eigenvalues m/n and
    /// (n-m)/n, so Vendi is the exponential of the binary entropy of the cluster sizes. This batch is taller than
    /// wide, so it takes the d x d path.
    #[test]
    fn block_case_on_the_feature_side() {
        let (n, m) = (10, 3);
        let batch: Vec<Vec<f32>> =
            (0..n).map(|i| if i < m { vec![1.0, 0.0, 0.0] } else { vec![0.0, 2.0, 0.0] }).collect();
        let (p, q) = (m as f64 / n as f64, (n - m) as f64 / n as f64);
        let want = (-(p * p.ln()) - q * q.ln()).exp();
        assert!((vendi_score(&batch).unwrap() - want).abs() < 1e-9);
    }

    #[test]
    fn both_gram_sides_agree() {
        // Pseudo-random vectors: the score of a batch must not depend on which Gram matrix is decomposed.
        let vecs: Vec<Vec<f32>> =
            (0..12).map(|i| (0..6).map(|j| (((i * 31 + j * 17) % 23) as f32 - 11.0) / 7.0).collect()).collect();
        let x = unit_rows(&vecs).unwrap();
        let n = x.nrows() as f64;
        let entropy = |m: DMatrix<f64>| -> f64 {
            SymmetricEigen::new(m / n).eigenvalues.iter().filter(|&&l| l > 0.0).map(|&l| -l * l.ln()).sum()
        };
        let (big, small) = (entropy(&x * x.transpose()), entropy(x.transpose() * &x));
        assert!((big - small).abs() < 1e-9);
        assert!((vendi_score(&vecs).unwrap() - small.exp()).abs() < 1e-9);
    }

    #[test]
    fn rejects_bad_embeddings() {
        assert!(vendi_score(&[]).is_err());
        assert!(vendi_score(&[vec![0.0, 0.0]]).is_err());
        assert!(vendi_score(&[vec![1.0, 0.0], vec![1.0]]).is_err());
        assert!(mean_pairwise_cosine(&[vec![f32::NAN, 1.0]]).is_err());
        assert_eq!(mean_pairwise_cosine(&[vec![1.0, 0.0]]).unwrap(), None);
    }
}
