//! Dense symmetric eigen-decomposition by cyclic Jacobi rotations, for the small covariance
//! matrices (a few dozen channels) of the PCA detector. No LAPACK: a dependency and a build
//! step for a matrix that fits in cache would cost more than it saves.

/// Eigenvalues (descending) and eigenvectors (column `k` of the row-major `vectors` belongs to
/// `values[k]`) of a symmetric matrix.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SymmetricEigen {
    pub(crate) values: Vec<f64>,
    /// Row-major `n × n`.
    pub(crate) vectors: Vec<f64>,
}

/// Sweeps until the off-diagonal mass is negligible (quadratic convergence: a handful of sweeps
/// for n ≤ 50); the cap only guards against NaN input.
const MAX_SWEEPS: usize = 100;

/// Decomposes the symmetric row-major `n × n` `matrix` (only symmetric input makes sense).
pub(crate) fn symmetric_eigen(matrix: &[f64], n: usize) -> SymmetricEigen {
    let mut a = matrix.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt();
    for _ in 0..MAX_SWEEPS {
        let off: f64 = (0..n)
            .flat_map(|p| ((p + 1)..n).map(move |q| (p, q)))
            .map(|(p, q)| a[p * n + q] * a[p * n + q])
            .sum::<f64>()
            .sqrt();
        if off <= f64::EPSILON * scale * 1e-3 || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in (p + 1)..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation angle that zeroes a[p][q] (Golub & Van Loan, Algorithm 8.4.2).
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let akp = a[k * n + p];
                    let akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let apk = a[p * n + k];
                    let aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let vkp = v[k * n + p];
                    let vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[j * n + j].total_cmp(&a[i * n + i]));
    let values = order.iter().map(|&i| a[i * n + i]).collect();
    let mut vectors = vec![0.0; n * n];
    for (column, &source) in order.iter().enumerate() {
        for row in 0..n {
            vectors[row * n + column] = v[row * n + source];
        }
    }
    SymmetricEigen { values, vectors }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decomposes_a_known_matrix() {
        // [[2,1],[1,2]]: eigenvalues 3 and 1, eigenvectors (1,1)/√2 and (1,−1)/√2.
        let eigen = symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
        assert!((eigen.values[0] - 3.0).abs() < 1e-12);
        assert!((eigen.values[1] - 1.0).abs() < 1e-12);
        let first = [eigen.vectors[0], eigen.vectors[2]];
        assert!((first[0].abs() - 0.5_f64.sqrt()).abs() < 1e-12);
        assert!((first[0] - first[1]).abs() < 1e-12);
    }

    #[test]
    fn reconstructs_a_random_symmetric_matrix() {
        let n = 6;
        let mut m = vec![0.0; n * n];
        for i in 0..n {
            for j in 0..=i {
                let value = ((i * 31 + j * 17) % 13) as f64 - 6.0;
                m[i * n + j] = value;
                m[j * n + i] = value;
            }
        }
        let eigen = symmetric_eigen(&m, n);
        for i in 0..n {
            for j in 0..n {
                let rebuilt: f64 = (0..n)
                    .map(|k| eigen.vectors[i * n + k] * eigen.values[k] * eigen.vectors[j * n + k])
                    .sum();
                assert!((rebuilt - m[i * n + j]).abs() < 1e-9, "({i},{j})");
            }
        }
        assert!(eigen.values.windows(2).all(|w| w[0] >= w[1]));
    }
}
