//! PLACEHOLDER: reduce ops, to be written.
