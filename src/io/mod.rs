//! File formats: NumPy `.npy` arrays and result folders written whole. Imports nothing else
//! of the crate.

pub mod hash;
pub mod npy;
pub mod output;
