//! PLACEHOLDER: binary ops, to be written.
