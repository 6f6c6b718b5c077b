//! PLACEHOLDER: conv ops, to be written.
