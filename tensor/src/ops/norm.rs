//! PLACEHOLDER: norm ops, to be written.
