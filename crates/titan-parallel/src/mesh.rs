//! Parallelism degrees and the device mesh (torchtitan's `ParallelDims`).
//!
//! The world is laid out row-major over the axes `[pp, dp_replicate, dp_shard, cp, tp]`,
//! outermost first, so tensor parallelism is innermost (neighbouring ranks, one node) and
//! pipeline parallelism outermost. Each axis gets one group per line of the mesh along it
//! (the ranks that differ only in that coordinate), and the flattened groups data parallelism
//! needs: `dp = dp_replicate x dp_shard` (data loading, token counts), `fsdp = dp_shard x cp`
//! (what FSDP shards over) and `loss = dp x cp` (loss reduction).

use crate::comm::Group;
use crate::{Error, Result};

/// One axis of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MeshAxis {
    Pp,
    DpReplicate,
    DpShard,
    Cp,
    Tp,
}

impl MeshAxis {
    /// Outermost first.
    pub const ALL: [MeshAxis; 5] = [
        MeshAxis::Pp,
        MeshAxis::DpReplicate,
        MeshAxis::DpShard,
        MeshAxis::Cp,
        MeshAxis::Tp,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// torchtitan's mesh dimension name.
    pub fn name(self) -> &'static str {
        match self {
            MeshAxis::Pp => "pp",
            MeshAxis::DpReplicate => "dp_replicate",
            MeshAxis::DpShard => "dp_shard",
            MeshAxis::Cp => "cp",
            MeshAxis::Tp => "tp",
        }
    }
}

/// Validated parallelism degrees.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParallelDims {
    pub pp: usize,
    pub dp_replicate: usize,
    pub dp_shard: usize,
    pub cp: usize,
    pub tp: usize,
    pub world_size: usize,
}

impl ParallelDims {
    /// torchtitan's `ParallelDims._validate`: every degree at least 1, except
    /// `dp_shard = -1`, which takes the ranks left over; the product must be the world size.
    /// Arguments are the `parallelism.*` options.
    pub fn new(
        dp_replicate: usize,
        dp_shard: i64,
        cp: usize,
        tp: usize,
        pp: usize,
        world_size: usize,
    ) -> Result<Self> {
        let named = [
            ("parallelism.data_parallel_replicate_degree", dp_replicate),
            ("parallelism.context_parallel_degree", cp),
            ("parallelism.tensor_parallel_degree", tp),
            ("parallelism.pipeline_parallel_degree", pp),
        ];
        for (key, d) in named {
            if d == 0 {
                return Err(Error::Config(format!(
                    "{key} = 0: parallelism degrees must be at least 1 (1 disables it)"
                )));
            }
        }
        if world_size == 0 {
            return Err(Error::Config(
                "world size 0: a job needs at least one rank".into(),
            ));
        }
        let too_big = || {
            Error::Config(format!(
                "parallelism degrees dp_replicate({dp_replicate}) * dp_shard({dp_shard}) * cp({cp}) * tp({tp}) * pp({pp}) \
                 overflow: they must multiply to WORLD_SIZE({world_size})"
            ))
        };
        let others = [cp, tp, pp]
            .into_iter()
            .try_fold(dp_replicate, |acc, d| acc.checked_mul(d))
            .ok_or_else(too_big)?;
        let dp_shard = match dp_shard {
            -1 => {
                if world_size % others != 0 {
                    return Err(Error::Config(format!(
                        "parallelism.data_parallel_shard_degree = -1 cannot fill WORLD_SIZE({world_size}): \
                         dp_replicate({dp_replicate}) * cp({cp}) * tp({tp}) * pp({pp}) = {others} does not divide it; \
                         change those degrees or the number of ranks"
                    )));
                }
                world_size / others
            }
            d if d >= 1 => d as usize,
            d => {
                return Err(Error::Config(format!(
                    "parallelism.data_parallel_shard_degree = {d}: must be -1 (use the ranks left over) or at least 1"
                )))
            }
        };
        let product = others.checked_mul(dp_shard).ok_or_else(too_big)?;
        if product != world_size {
            return Err(Error::Config(format!(
                "invalid parallel dims: dp_replicate({dp_replicate}) * dp_shard({dp_shard}) * cp({cp}) * tp({tp}) * pp({pp}) \
                 = {product} != WORLD_SIZE({world_size}); set parallelism.data_parallel_shard_degree = -1 to fill the \
                 world, or change the degrees or the number of ranks"
            )));
        }
        Ok(Self {
            pp,
            dp_replicate,
            dp_shard,
            cp,
            tp,
            world_size,
        })
    }

    /// Degrees in axis order `[pp, dp_replicate, dp_shard, cp, tp]`.
    pub fn degrees(&self) -> [usize; 5] {
        [self.pp, self.dp_replicate, self.dp_shard, self.cp, self.tp]
    }

    /// The degree of `axis`.
    pub fn degree(&self, axis: MeshAxis) -> usize {
        self.degrees()[axis.index()]
    }

    /// Data-parallel degree: how many different batches one step sees.
    pub fn dp(&self) -> usize {
        self.dp_replicate * self.dp_shard
    }
    pub fn dp_enabled(&self) -> bool {
        self.dp() > 1
    }
    /// FSDP shards over `dp_shard x cp`.
    pub fn fsdp_enabled(&self) -> bool {
        self.dp_shard > 1 || self.cp > 1
    }
    /// Ranks that share one batch (torchtitan's `non_data_parallel_size`, for throughput).
    pub fn non_data_parallel_size(&self) -> usize {
        self.cp * self.tp * self.pp
    }
    /// Sequence lengths must be a multiple of this (`tp * 2 cp`).
    pub fn seq_len_divisor(&self) -> usize {
        self.tp * self.cp * 2
    }

    /// The coordinates of `rank`, in axis order.
    pub fn coords(&self, rank: usize) -> [usize; 5] {
        let d = self.degrees();
        let mut c = [0; 5];
        let mut rest = rank;
        for i in (0..5).rev() {
            c[i] = rest % d[i];
            rest /= d[i];
        }
        c
    }

    /// The rank at `coords` (row-major, `pp` outermost).
    pub fn rank_of(&self, coords: [usize; 5]) -> usize {
        let d = self.degrees();
        coords.iter().zip(d).fold(0, |acc, (c, n)| acc * n + c)
    }

    /// The groups of ranks that differ only along `axes` (each listed in row-major order of
    /// those axes), covering the world.
    pub fn partition(&self, axes: &[MeshAxis]) -> Vec<Vec<usize>> {
        let mut groups: Vec<(Vec<usize>, Vec<usize>)> = Vec::new();
        for rank in 0..self.world_size {
            let mut key = self.coords(rank).to_vec();
            for a in axes {
                key[a.index()] = 0;
            }
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, members)) => members.push(rank),
                None => groups.push((key, vec![rank])),
            }
        }
        groups.into_iter().map(|(_, m)| m).collect()
    }
}

/// The world arranged as a mesh, with one group per axis and the flattened data groups.
#[derive(Debug, Clone)]
pub struct DeviceMesh {
    dims: ParallelDims,
    world: Group,
    coords: [usize; 5],
    axes: [Group; 5],
    dp: Group,
    fsdp: Group,
    loss: Group,
}

impl DeviceMesh {
    /// Splits `world` into the mesh's groups (no traffic: every rank computes the same
    /// partitions). Every rank must call it with the same `dims`.
    pub fn new(world: Group, dims: ParallelDims) -> Result<Self> {
        if world.size() != dims.world_size {
            return Err(Error::Config(format!(
                "the parallelism degrees describe {} ranks but the world has {}: build ParallelDims with the world size",
                dims.world_size,
                world.size()
            )));
        }
        let rank = world.rank();
        let split = |axes: &[MeshAxis], name: &str| -> Result<Group> {
            world
                .split_by_ranks(&dims.partition(axes), name)?
                .ok_or_else(|| {
                    Error::Config(format!(
                        "rank {rank} is in no `{name}` group: the mesh partition does not cover it"
                    ))
                })
        };
        let axes = [
            split(&[MeshAxis::Pp], "pp")?,
            split(&[MeshAxis::DpReplicate], "dp_replicate")?,
            split(&[MeshAxis::DpShard], "dp_shard")?,
            split(&[MeshAxis::Cp], "cp")?,
            split(&[MeshAxis::Tp], "tp")?,
        ];
        let dp = split(&[MeshAxis::DpReplicate, MeshAxis::DpShard], "dp")?;
        let fsdp = split(&[MeshAxis::DpShard, MeshAxis::Cp], "dp_shard_cp")?;
        let loss = split(
            &[MeshAxis::DpReplicate, MeshAxis::DpShard, MeshAxis::Cp],
            "dp_cp",
        )?;
        tracing::debug!(rank, coords = ?dims.coords(rank), "device mesh built");
        Ok(Self {
            coords: dims.coords(rank),
            dims,
            world,
            axes,
            dp,
            fsdp,
            loss,
        })
    }

    pub fn dims(&self) -> &ParallelDims {
        &self.dims
    }
    pub fn world(&self) -> &Group {
        &self.world
    }
    /// The group along one axis (size = that degree).
    pub fn group(&self, axis: MeshAxis) -> &Group {
        &self.axes[axis.index()]
    }
    /// This rank's coordinate along `axis`.
    pub fn coord(&self, axis: MeshAxis) -> usize {
        self.coords[axis.index()]
    }
    /// `dp_replicate x dp_shard`: ranks that read different data (torchtitan's `batch` mesh);
    /// reduce valid-token counts over it.
    pub fn dp(&self) -> &Group {
        &self.dp
    }
    /// This rank's data-parallel rank (which slice of the global batch it reads).
    pub fn dp_rank(&self) -> usize {
        self.dp.rank()
    }
    /// `dp_shard x cp`: what FSDP shards parameters over.
    pub fn fsdp(&self) -> &Group {
        &self.fsdp
    }
    /// `dp x cp`: reduce the loss over it.
    pub fn loss(&self) -> &Group {
        &self.loss
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_and_validates_like_torchtitan() {
        let d = ParallelDims::new(2, -1, 1, 2, 1, 8).unwrap();
        assert_eq!(d.dp_shard, 2);
        assert_eq!(d.dp(), 4);
        assert!(d.fsdp_enabled() && d.dp_enabled());
        let e = ParallelDims::new(2, 3, 1, 1, 1, 4).unwrap_err().to_string();
        for part in [
            "dp_replicate(2)",
            "dp_shard(3)",
            "cp(1)",
            "tp(1)",
            "pp(1)",
            "= 6",
            "WORLD_SIZE(4)",
        ] {
            assert!(e.contains(part), "{e}");
        }
        let e = ParallelDims::new(3, -1, 1, 1, 1, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not divide"), "{e}");
        let e = ParallelDims::new(1, 0, 1, 1, 1, 4).unwrap_err().to_string();
        assert!(e.contains("data_parallel_shard_degree = 0"), "{e}");
        let e = ParallelDims::new(1, -1, 1, 0, 1, 4)
            .unwrap_err()
            .to_string();
        assert!(e.contains("tensor_parallel_degree = 0"), "{e}");
    }

    #[test]
    fn axes_are_row_major_outermost_first() {
        // pp=2, dp_replicate=1, dp_shard=2, cp=1, tp=2: rank = (pp*2 + dps)*2 + tp.
        let d = ParallelDims::new(1, 2, 1, 2, 2, 8).unwrap();
        assert_eq!(d.coords(5), [1, 0, 0, 0, 1]);
        assert_eq!(d.rank_of([1, 0, 1, 0, 1]), 7);
        assert_eq!(
            d.partition(&[MeshAxis::Tp]),
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7]]
        );
        assert_eq!(
            d.partition(&[MeshAxis::DpShard]),
            vec![vec![0, 2], vec![1, 3], vec![4, 6], vec![5, 7]]
        );
        assert_eq!(
            d.partition(&[MeshAxis::Pp]),
            vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]
        );
        let hsdp = ParallelDims::new(2, 2, 1, 1, 1, 4).unwrap();
        assert_eq!(
            hsdp.partition(&[MeshAxis::DpShard]),
            vec![vec![0, 1], vec![2, 3]]
        );
        assert_eq!(
            hsdp.partition(&[MeshAxis::DpReplicate]),
            vec![vec![0, 2], vec![1, 3]]
        );
        assert_eq!(
            hsdp.partition(&[MeshAxis::DpReplicate, MeshAxis::DpShard]),
            vec![vec![0, 1, 2, 3]]
        );
    }
}
