//! Tensor-level operations. PLACEHOLDER, to be written.
