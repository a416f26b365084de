//! Device memory peaks since the last log, as torchtitan's `DeviceMemoryMonitor` reports them.

use crate::error::{Error, Result};

/// Bytes in a GiB: torchtitan reports memory in gibibytes (2^30), not gigabytes.
pub const GIB: f64 = (1u64 << 30) as f64;

/// Peak memory counters of one device over a log window, read by the trainer from its
/// allocator (CUDA: `active_bytes.all.peak`, `reserved_bytes.all.peak`, total memory).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryStats {
    /// Peak bytes held by live tensors.
    pub max_active_bytes: u64,
    /// Peak bytes reserved by the caching allocator (what the console line shows).
    pub max_reserved_bytes: u64,
    /// Total memory of the device.
    pub capacity_bytes: u64,
    /// Allocations that had to free cached blocks and retry.
    pub num_alloc_retries: u64,
    /// Allocations that failed with out-of-memory.
    pub num_ooms: u64,
}

/// [`MemoryStats`] in the units torchtitan logs: GiB and percent of capacity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryReport {
    pub max_active_gib: f64,
    pub max_active_pct: f64,
    pub max_reserved_gib: f64,
    pub max_reserved_pct: f64,
    pub num_alloc_retries: u64,
    pub num_ooms: u64,
}

impl MemoryStats {
    /// Convert to GiB and percent of capacity; a zero capacity has no percentage.
    pub fn report(&self) -> Result<MemoryReport> {
        if self.capacity_bytes == 0 {
            return Err(Error::InvalidInput {
                field: "MemoryStats.capacity_bytes",
                value: "0".to_string(),
                fix:
                    "pass the device's total memory in bytes, or `memory: None` when it is unknown",
            });
        }
        let capacity = self.capacity_bytes as f64;
        let pct = |bytes: u64| 100.0 * bytes as f64 / capacity;
        Ok(MemoryReport {
            max_active_gib: bytes_to_gib(self.max_active_bytes),
            max_active_pct: pct(self.max_active_bytes),
            max_reserved_gib: bytes_to_gib(self.max_reserved_bytes),
            max_reserved_pct: pct(self.max_reserved_bytes),
            num_alloc_retries: self.num_alloc_retries,
            num_ooms: self.num_ooms,
        })
    }
}

/// Bytes to GiB (2^30 bytes).
pub fn bytes_to_gib(bytes: u64) -> f64 {
    bytes as f64 / GIB
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_converts_to_gib_and_percent_of_capacity() {
        let stats = MemoryStats {
            max_active_bytes: 3 << 29,         // 1.5 GiB
            max_reserved_bytes: 2 << 30,       // 2 GiB
            capacity_bytes: 80 * (1u64 << 30), // 80 GiB
            num_alloc_retries: 1,
            num_ooms: 0,
        };
        let report = stats.report().unwrap();
        assert_eq!(report.max_active_gib, 1.5);
        assert_eq!(report.max_reserved_gib, 2.0);
        assert_eq!(report.max_reserved_pct, 2.5); // 2 / 80
        assert_eq!(report.max_active_pct, 1.875); // 1.5 / 80
        assert_eq!(report.num_alloc_retries, 1);
    }

    #[test]
    fn zero_capacity_is_an_error_naming_the_field() {
        let stats = MemoryStats {
            max_active_bytes: 1,
            max_reserved_bytes: 1,
            capacity_bytes: 0,
            num_alloc_retries: 0,
            num_ooms: 0,
        };
        let err = stats.report().unwrap_err().to_string();
        assert!(err.contains("capacity_bytes"), "{err}");
    }
}
