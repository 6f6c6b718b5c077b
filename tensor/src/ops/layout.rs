//! PLACEHOLDER: layout ops, to be written.
