//! Numpy-style (multidirectional) broadcasting for binary element-wise kernels, with fast paths
//! for equal shapes and scalars, which are what the supported models use almost exclusively.

use super::KResult;

/// The broadcast shape of `a` and `b`, or an error when they are incompatible.
pub(crate) fn broadcast_shape(a: &[usize], b: &[usize]) -> KResult<Vec<usize>> {
    let r = a.len().max(b.len());
    let mut out = vec![0; r];
    for (i, o) in out.iter_mut().enumerate() {
        let da = dim_at(a, r, i);
        let db = dim_at(b, r, i);
        *o = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return Err(format!("shapes {a:?} and {b:?} cannot be broadcast")),
        };
    }
    Ok(out)
}

/// Dimension `i` of `shape` right-aligned to rank `r` (1 for the padded leading dims).
fn dim_at(shape: &[usize], r: usize, i: usize) -> usize {
    let pad = r - shape.len();
    if i < pad { 1 } else { shape[i - pad] }
}

/// Element strides of `shape` viewed with broadcast shape `out` (0 on broadcast dims).
fn strides_for(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let r = out.len();
    let mut strides = vec![0; r];
    let mut acc = 1;
    for i in (0..r).rev() {
        let d = dim_at(shape, r, i);
        strides[i] = if d == 1 { 0 } else { acc };
        acc *= d;
    }
    strides
}

/// Calls `f(out_index, a_index, b_index)` for every element of the broadcast shape `out`.
fn for_each_index(
    out: &[usize],
    sa: &[usize],
    sb: &[usize],
    mut f: impl FnMut(usize, usize, usize),
) {
    let total: usize = out.iter().product();
    if total == 0 {
        return;
    }
    let r = out.len();
    if r == 0 {
        f(0, 0, 0);
        return;
    }
    let inner = out[r - 1];
    let (ia, ib) = (sa[r - 1], sb[r - 1]);
    let mut counter = vec![0usize; r.saturating_sub(1)];
    let (mut base_a, mut base_b) = (0usize, 0usize);
    let mut o = 0;
    loop {
        for j in 0..inner {
            f(o, base_a + j * ia, base_b + j * ib);
            o += 1;
        }
        // Advance the outer counter (odometer over dims 0..r-1).
        let mut d = r - 1;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            counter[d] += 1;
            base_a += sa[d];
            base_b += sb[d];
            if counter[d] < out[d] {
                break;
            }
            base_a -= sa[d] * out[d];
            base_b -= sb[d] * out[d];
            counter[d] = 0;
        }
    }
}

/// `f` applied element-wise to `a` and `b` with broadcasting; returns the output shape and data.
pub(crate) fn zip<A: Copy, B: Copy, O>(
    a: &[A],
    ash: &[usize],
    b: &[B],
    bsh: &[usize],
    f: impl Fn(A, B) -> O,
) -> KResult<(Vec<usize>, Vec<O>)> {
    if ash == bsh {
        return Ok((
            ash.to_vec(),
            a.iter().zip(b).map(|(&x, &y)| f(x, y)).collect(),
        ));
    }
    if b.len() == 1 && bsh.len() <= ash.len() {
        let y = b[0];
        return Ok((ash.to_vec(), a.iter().map(|&x| f(x, y)).collect()));
    }
    if a.len() == 1 && ash.len() <= bsh.len() {
        let x = a[0];
        return Ok((bsh.to_vec(), b.iter().map(|&y| f(x, y)).collect()));
    }
    let out = broadcast_shape(ash, bsh)?;
    let (sa, sb) = (strides_for(ash, &out), strides_for(bsh, &out));
    let mut data = Vec::with_capacity(out.iter().product());
    for_each_index(&out, &sa, &sb, |_, i, j| data.push(f(a[i], b[j])));
    Ok((out, data))
}

/// `acc = f(acc, b)` in place when `b` broadcasts into `acc`'s shape; otherwise the result
/// gets the (larger) broadcast shape.
pub(crate) fn zip_into<A: Copy>(
    acc: &mut Vec<A>,
    acc_shape: &mut Vec<usize>,
    b: &[A],
    bsh: &[usize],
    f: impl Fn(A, A) -> A,
) -> KResult<()> {
    if acc_shape.as_slice() == bsh {
        acc.iter_mut().zip(b).for_each(|(x, &y)| *x = f(*x, y));
        return Ok(());
    }
    if b.len() == 1 && bsh.len() <= acc_shape.len() {
        let y = b[0];
        acc.iter_mut().for_each(|x| *x = f(*x, y));
        return Ok(());
    }
    let out = broadcast_shape(acc_shape, bsh)?;
    if out == *acc_shape {
        let (sa, sb) = (strides_for(acc_shape, &out), strides_for(bsh, &out));
        for_each_index(&out, &sa, &sb, |o, _, j| acc[o] = f(acc[o], b[j]));
        return Ok(());
    }
    let (shape, data) = zip(acc, acc_shape, b, bsh, f)?;
    *acc = data;
    *acc_shape = shape;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(
            broadcast_shape(&[3, 1], &[1, 4]).expect("test data"),
            vec![3, 4]
        );
        assert_eq!(
            broadcast_shape(&[2, 3, 4], &[4]).expect("test data"),
            vec![2, 3, 4]
        );
        assert!(broadcast_shape(&[3], &[4]).is_err());
    }

    #[test]
    fn general_broadcast() {
        // [2,1] + [1,3]
        let (s, d) =
            zip(&[1, 2], &[2, 1], &[10, 20, 30], &[1, 3], |a, b| a + b).expect("test data");
        assert_eq!(s, vec![2, 3]);
        assert_eq!(d, vec![11, 21, 31, 12, 22, 32]);
        // [2,3] + [3] (row vector)
        let (s, d) =
            zip(&[1, 2, 3, 4, 5, 6], &[2, 3], &[1, 0, 1], &[3], |a, b| a * b).expect("test data");
        assert_eq!(s, vec![2, 3]);
        assert_eq!(d, vec![1, 0, 3, 4, 0, 6]);
    }

    #[test]
    fn in_place() {
        let mut acc = vec![1.0f32, 2.0, 3.0, 4.0];
        let mut shape = vec![2, 2];
        zip_into(&mut acc, &mut shape, &[10.0, 20.0], &[2, 1], |a, b| a + b).expect("test data");
        assert_eq!(acc, vec![11.0, 12.0, 23.0, 24.0]);
        zip_into(
            &mut acc,
            &mut shape,
            &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            &[2, 2, 2],
            |a, b| a + b,
        )
        .expect("test data");
        assert_eq!(shape, vec![2, 2, 2]);
        assert_eq!(acc.len(), 8);
    }
}
