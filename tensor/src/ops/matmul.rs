//! PLACEHOLDER: matmul ops, to be written.
