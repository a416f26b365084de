//! Boxes inside a tensor's global shape, and copying between them: the whole of resharding.
//!
//! A saved shard and a requested local shard are both boxes (`offset`, `shape`) of the global
//! tensor, each stored densely in row-major order. Loading copies every saved box's
//! intersection with the requested box; whatever the N-rank and M-rank layouts are.

/// A box of a tensor: its start index and extent in each dimension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub offset: Vec<usize>,
    pub shape: Vec<usize>,
}

impl Region {
    pub fn new(offset: Vec<usize>, shape: Vec<usize>) -> Self {
        Self { offset, shape }
    }

    /// The whole of a tensor of `shape`.
    pub fn full(shape: &[usize]) -> Self {
        Self {
            offset: vec![0; shape.len()],
            shape: shape.to_vec(),
        }
    }

    /// Number of elements.
    pub fn volume(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the box lies inside a tensor of `global` shape; `None` when it does, else why not.
    pub fn out_of_bounds(&self, global: &[usize]) -> Option<String> {
        if self.offset.len() != global.len() || self.shape.len() != global.len() {
            return Some(format!(
                "offset {:?} and shape {:?} must have one entry per dimension of the global shape {global:?}",
                self.offset, self.shape
            ));
        }
        for d in 0..global.len() {
            if self.offset[d] + self.shape[d] > global[d] {
                return Some(format!(
                    "offset {:?} + shape {:?} exceeds the global shape {global:?} in dimension {d}",
                    self.offset, self.shape
                ));
            }
        }
        None
    }

    /// The common part of two boxes of the same tensor, if not empty.
    pub fn intersect(&self, other: &Region) -> Option<Region> {
        let mut offset = Vec::with_capacity(self.offset.len());
        let mut shape = Vec::with_capacity(self.offset.len());
        for d in 0..self.offset.len() {
            let lo = self.offset[d].max(other.offset[d]);
            let hi = (self.offset[d] + self.shape[d]).min(other.offset[d] + other.shape[d]);
            if hi <= lo {
                return None;
            }
            offset.push(lo);
            shape.push(hi - lo);
        }
        Some(Region { offset, shape })
    }
}

/// Copy the elements of `part` from `src` (the dense bytes of box `src_box`) into `dst` (the
/// dense bytes of box `dst_box`). `part` must lie inside both boxes.
pub fn copy_part(
    src: &[u8],
    src_box: &Region,
    dst: &mut [u8],
    dst_box: &Region,
    part: &Region,
    elem_bytes: usize,
) {
    let rank = part.shape.len();
    if rank == 0 {
        dst[..elem_bytes].copy_from_slice(&src[..elem_bytes]);
        return;
    }
    if part.volume() == 0 {
        return;
    }
    // Trailing dimensions that `part` spans fully in both boxes are one contiguous run: with
    // dim-0 shards the whole intersection is a single memcpy.
    let mut split = rank;
    while split > 1
        && part.shape[split - 1] == src_box.shape[split - 1]
        && part.shape[split - 1] == dst_box.shape[split - 1]
    {
        split -= 1;
    }
    let run_elems: usize = part.shape[split - 1..].iter().product();
    let run_bytes = run_elems * elem_bytes;

    let strides = |shape: &[usize]| {
        let mut s = vec![1usize; rank];
        for d in (0..rank - 1).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let src_strides = strides(&src_box.shape);
    let dst_strides = strides(&dst_box.shape);

    // Odometer over the dimensions before the run's first dimension (`split - 1`).
    let outer = split - 1;
    let mut idx = vec![0usize; outer];
    loop {
        let mut s = 0usize;
        let mut t = 0usize;
        for d in 0..rank {
            let i = if d < outer { idx[d] } else { 0 };
            let g = part.offset[d] + i;
            s += (g - src_box.offset[d]) * src_strides[d];
            t += (g - dst_box.offset[d]) * dst_strides[d];
        }
        let (s, t) = (s * elem_bytes, t * elem_bytes);
        dst[t..t + run_bytes].copy_from_slice(&src[s..s + run_bytes]);

        let mut d = outer;
        loop {
            if d == 0 {
                return;
            }
            d -= 1;
            idx[d] += 1;
            if idx[d] < part.shape[d] {
                break;
            }
            idx[d] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dense f32-free test data: element value = its global row-major index, as u16 bytes.
    fn fill(global: &[usize], b: &Region) -> Vec<u8> {
        let mut out = Vec::new();
        let mut idx = vec![0usize; b.shape.len()];
        for _ in 0..b.volume() {
            let mut flat = 0usize;
            for d in 0..global.len() {
                flat = flat * global[d] + b.offset[d] + idx[d];
            }
            out.extend_from_slice(&(flat as u16).to_le_bytes());
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < b.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        out
    }

    #[test]
    fn intersections() {
        let a = Region::new(vec![0, 0], vec![4, 6]);
        let b = Region::new(vec![2, 3], vec![5, 5]);
        assert_eq!(a.intersect(&b), Some(Region::new(vec![2, 3], vec![2, 3])));
        let c = Region::new(vec![4, 0], vec![1, 6]);
        assert_eq!(a.intersect(&c), None);
        assert!(a.out_of_bounds(&[4, 6]).is_none());
        assert!(b.out_of_bounds(&[4, 6]).is_some());
    }

    #[test]
    fn assembles_any_box_from_any_tiling() {
        let global = [5usize, 4, 3];
        // Saved: a 2x2 tiling over dims 0 and 1 with uneven sizes.
        let tiles = [
            Region::new(vec![0, 0, 0], vec![3, 1, 3]),
            Region::new(vec![0, 1, 0], vec![3, 3, 3]),
            Region::new(vec![3, 0, 0], vec![2, 1, 3]),
            Region::new(vec![3, 1, 0], vec![2, 3, 3]),
        ];
        let wanted = [
            Region::full(&global),
            Region::new(vec![1, 0, 0], vec![3, 4, 3]),
            Region::new(vec![2, 1, 1], vec![2, 2, 2]),
            Region::new(vec![4, 3, 2], vec![1, 1, 1]),
        ];
        for want in &wanted {
            let mut dst = vec![0u8; want.volume() * 2];
            for tile in &tiles {
                if let Some(part) = tile.intersect(want) {
                    copy_part(&fill(&global, tile), tile, &mut dst, want, &part, 2);
                }
            }
            assert_eq!(dst, fill(&global, want), "{want:?}");
        }
    }

    #[test]
    fn scalar_and_one_dim() {
        let mut dst = [0u8; 4];
        copy_part(
            &[1, 2, 3, 4],
            &Region::full(&[]),
            &mut dst,
            &Region::full(&[]),
            &Region::full(&[]),
            4,
        );
        assert_eq!(dst, [1, 2, 3, 4]);
        let src_box = Region::new(vec![2], vec![3]);
        let dst_box = Region::new(vec![3], vec![4]);
        let part = src_box.intersect(&dst_box).unwrap();
        let mut dst = [9u8; 4];
        copy_part(&[10, 11, 12], &src_box, &mut dst, &dst_box, &part, 1);
        assert_eq!(dst, [11, 12, 9, 9]);
    }
}
